"""What etprop.nn's spiking modules (neurons, synapses, readouts, spiking layers) share: sizes
(`to_size`, `batch_shape`), the time step (`get_dt`, `dt_over`, `decay_of`), units (`unit_of`,
`in_unit`, `filled`) and time constants, fixed or trainable (`TimeConstant`). How units and time
are treated is described in `etprop.nn.neurons`."""

from __future__ import annotations

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn._errors import SettingMissingError

__all__ = ["to_size", "get_dt", "dt_over", "decay_of", "unit_of", "in_unit", "filled", "batch_shape", "TimeConstant"]


def to_size(in_size) -> tuple[int, ...]:
    """``int`` or sequence of ints -> a shape tuple."""
    if isinstance(in_size, (int, np.integer)) and not isinstance(in_size, bool):
        size = (int(in_size),)
    else:
        try:
            size = tuple(in_size)
        except TypeError:
            size = None
        if size is not None and not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in size):
            size = None
    if not size or any(n < 1 for n in size):
        raise ArgumentError(f"a size (in_size / out_size) must be a positive int or a tuple of them, got {in_size!r}")
    return tuple(int(n) for n in size)


def get_dt():
    """``brainstate.environ.get_dt()`` with an explanation when it is not set."""
    try:
        return brainstate.environ.get_dt()
    except KeyError:
        raise SettingMissingError("etprop.nn: the time step is not set; call brainstate.environ.set(dt=0.1 * u.ms) "
                       "(or use `with brainstate.environ.context(dt=...)`) before building and running "
                       "the model") from None


def dt_over(tau, dt=None):
    """``dt / tau`` as a plain (dimensionless) array; ``ValueError`` if the units disagree."""
    dt = get_dt() if dt is None else dt
    r = dt / tau
    if isinstance(r, u.Quantity):
        if not r.unit.has_same_dim(u.UNITLESS):
            raise ArgumentError(f"dt / tau must be dimensionless, got dt={dt!r} and tau={tau!r}: give both in time "
                             f"units (dt=0.1 * u.ms, tau=20 * u.ms) or both as plain numbers")
        r = r.to_decimal()
    return r if isinstance(r, jax.Array) else np.asarray(r)


def decay_of(tau, dt=None):
    """``exp(-dt / tau)``."""
    return jnp.exp(-dt_over(tau, dt))


def unit_of(x):
    return u.get_unit(x)


def in_unit(value, unit, name: str):
    """``value`` in ``unit`` (a quantity, or a plain array when ``unit`` is dimensionless).

    Plain zeros are accepted for any unit; other plain numbers only when ``unit`` is
    dimensionless.
    """
    if isinstance(value, u.Quantity):
        if not value.unit.has_same_dim(unit):
            raise ArgumentError(f"{name}={value!r} must have the dimension of {unit}")
        return value.in_unit(unit) if not unit.is_unitless else jnp.asarray(value.to_decimal())
    if unit.is_unitless:
        return jnp.asarray(value, dtype=jnp.result_type(float))
    if np.all(np.asarray(value) == 0):
        return jnp.asarray(value, dtype=jnp.result_type(float)) * unit
    raise ArgumentError(f"{name}={value!r} has no unit but must be in units of {unit} (e.g. {value} * {unit})")


def filled(shape, value):
    """An array (or quantity) of ``shape`` filled with ``value`` (broadcast)."""
    m, un = u.split_mantissa_unit(value)
    arr = jnp.broadcast_to(jnp.asarray(m, dtype=jnp.result_type(float)), shape)
    arr = jnp.array(arr)  # own buffer
    return arr if un.is_unitless else u.Quantity(arr, unit=un)


def batch_shape(varshape, batch_size):
    return tuple(varshape) if batch_size is None else (int(batch_size),) + tuple(varshape)


class TimeConstant:
    """A time constant, fixed or trainable (per neuron, through `etprop.element_wise`).

    A trainable one is stored in ``owner.<name>`` as a `brainstate.ParamState` of shape
    ``varshape`` holding ``tau`` as a plain number in the unit it was given in.
    """

    def __init__(self, owner, name: str, tau, varshape, trainable: bool):
        self.name = name
        self.trainable = bool(trainable)
        mant, self.unit = u.split_mantissa_unit(tau)
        if self.trainable:
            setattr(owner, name, brainstate.ParamState(filled(varshape, jnp.asarray(mant, jnp.result_type(float)))))
            self._fixed = None
        else:
            self._fixed = tau

    def value(self, owner):
        """``tau`` (quantity or array); trainable ones through `etprop.element_wise`."""
        if not self.trainable:
            return self._fixed
        t = ops.element_wise(getattr(owner, self.name).value)
        return t if self.unit.is_unitless else t * self.unit

    def decay(self, owner):
        return decay_of(self.value(owner))
