r"""Synaptic filters: `Expon`, `Alpha`, `DualExpon`.

Each is a `brainstate.nn.Module` whose ``update(x)`` adds this step's input ``x``
(e.g. ``etprop.matmul(spikes, w)``: a jump in conductance or current) and returns the
filtered value ``g``. The filters are linear, so the unit of ``g`` is the unit of ``x``;
give it as ``unit=`` (default dimensionless) so that the state can be created before the
first input. States are `brainstate.HiddenState` of shape ``varshape`` or
``(batch_size, *varshape)`` (``init_state(batch_size)`` /
``brainstate.nn.init_all_states``). ``dt`` comes from ``brainstate.environ.get_dt()``;
time constants follow its units (see `etprop.nn.neurons`).

**Online learning.** A synapse has no weights. Its states have its own shape and
each depends only on itself (and, for `Alpha`, its partner at the same position), so
the operator that produces ``x`` is traced into the synapse's hidden group (together
with a neuron of the same shape that it feeds, which joins the group). The Jacobian
is diagonal per position: D-RTRL is exact for a synapse -> neuron chain with
feed-forward input.
"""

from __future__ import annotations

import math

import brainstate
import brainunit as u
import jax.numpy as jnp

from etprop.errors import ArgumentError
from etprop.nn import signatures
from etprop.nn._errors import ArgumentTypeError
from etprop.nn.units import TimeConstant, batch_shape, dt_over, filled, in_unit, to_size

__all__ = ["Expon", "Alpha", "DualExpon"]


class _Synapse(signatures.BySignature, brainstate.nn.Module):
    # brainpy.state's signature builds brainpy.state's model (etprop.nn.signatures)
    _state_names: tuple[str, ...] = ("g",)

    def __init__(self, in_size, *, unit=None, name: str | None = None, convention: str = "etprop"):
        signatures.check_convention(convention)
        super().__init__(name=name)
        self.in_size = self.out_size = self.varshape = to_size(in_size)
        self.unit = u.UNITLESS if unit is None else unit
        if not isinstance(self.unit, u.Unit):
            raise ArgumentTypeError(f"unit must be a brainunit Unit (e.g. u.nS), got {unit!r}")

    def _zero(self, batch_size):
        z = 0.0 if self.unit.is_unitless else 0.0 * self.unit
        return filled(batch_shape(self.varshape, batch_size), z)

    def init_state(self, batch_size=None, **kwargs):
        """Create the states with shape ``(batch_size, *varshape)`` (``varshape`` if None)."""
        for k in self._state_names:
            setattr(self, k, brainstate.HiddenState(self._zero(batch_size)))

    def reset_state(self, batch_size=None, **kwargs):
        """Zero the states (shape as in `init_state`)."""
        for k in self._state_names:
            getattr(self, k).value = self._zero(batch_size)

    def _input(self, x):
        if x is None:
            return 0.0 if self.unit.is_unitless else 0.0 * self.unit
        return in_unit(x, self.unit, f"{type(self).__name__} input")


class Expon(_Synapse):
    r"""Exponential synapse.

    .. math::

        g^t = e^{-\Delta t / \tau}\, g^{t-1} + x^t

    (the impulse response of ``tau dg/dt = -g``, sampled at steps; ``x`` is the jump).

    States: ``g`` (unit of ``x``). S = 1 per position.

    Online learning: no weights (``tau`` trainable per position with ``train_tau``,
    through ``etprop.element_wise``); the operator producing ``x`` is traced into ``g``.

    Args:
      in_size: shape (int or tuple).
      tau: decay time constant (quantity or number, like ``dt``).
      unit: unit of ``x`` and ``g`` (default dimensionless).
      train_tau: make ``tau`` a per-position trainable parameter.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     syn = etprop.nn.Expon(3, tau=5 * u.ms)
        ...     _ = brainstate.nn.init_all_states(syn, batch_size=2)
        ...     g1 = syn(jnp.ones((2, 3)))                 # a jump of 1
        ...     g2 = syn(jnp.zeros((2, 3)))                # then decay by exp(-dt / tau)
        >>> round(float(g1[0, 0]), 4), round(float(g2[0, 0]), 4)
        (1.0, 0.8187)
    """

    def __init__(self, in_size, tau=5.0 * u.ms, *, unit=None, train_tau: bool = False, name=None,
                 convention: str = "etprop"):
        super().__init__(in_size, unit=unit, name=name, convention=convention)
        self._tau = TimeConstant(self, "tau", tau, self.varshape, train_tau)
        self.init_state()

    def update(self, x=None):
        self.g.value = self._tau.decay(self) * self.g.value + self._input(x)
        return self.g.value


class Alpha(_Synapse):
    r"""Alpha synapse: impulse response ``(t / tau) e^{-t / tau}`` (peak ``1/e`` at ``t = tau``).

    Exact discretisation of ``dg/dt = -g/tau + h/tau``, ``dh/dt = -h/tau``:

    .. math::

        d &= e^{-\Delta t/\tau} \\
        g^t &= d\,(g^{t-1} + \tfrac{\Delta t}{\tau} h^{t-1}) \\
        h^t &= d\, h^{t-1} + x^t

    so an input at step ``k`` reaches ``g`` from step ``k + 1``; the output is ``g``.

    States: ``g`` and ``h`` (unit of ``x``). S = 2 per position (``h -> g``).

    Online learning: no weights; the operator producing ``x`` is traced into the group
    ``(g, h)``, whose Jacobian is 2 x 2 per position (D-RTRL exact).

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     syn = etprop.nn.Alpha(3, tau=5 * u.ms)
        ...     _ = brainstate.nn.init_all_states(syn, batch_size=2)
        ...     g = [syn(jnp.ones((2, 3)) if t == 0 else jnp.zeros((2, 3))) for t in range(10)]
        >>> float(g[0][0, 0]), float(g[5][0, 0]) > 0                 # rises after the input, then decays
        (0.0, True)
        >>> sorted(k[0] for k in syn.states(brainstate.HiddenState))  # two states per position
        ['g', 'h']
    """

    _state_names = ("g", "h")

    def __init__(self, in_size, tau=5.0 * u.ms, *, unit=None, name=None, convention: str = "etprop"):
        super().__init__(in_size, unit=unit, name=name, convention=convention)
        self._tau = TimeConstant(self, "tau", tau, self.varshape, False)
        self.init_state()

    def update(self, x=None):
        r = dt_over(self._tau.value(self))
        d = jnp.exp(-r)
        self.g.value = d * (self.g.value + r * self.h.value)
        self.h.value = d * self.h.value + self._input(x)
        return self.g.value


class DualExpon(_Synapse):
    r"""Difference-of-exponentials synapse (rise ``tau_rise`` < decay ``tau_decay``).

    .. math::

        g_{r}^t &= e^{-\Delta t/\tau_{rise}}\, g_{r}^{t-1} + x^t, \qquad
        g_{d}^t = e^{-\Delta t/\tau_{decay}}\, g_{d}^{t-1} + x^t \\
        g^t &= A\,(g_{d}^t - g_{r}^t)

    ``A`` normalises the peak of the impulse response ``e^{-t/tau_d} - e^{-t/tau_r}`` to 1
    (``normalize=True``, the default) or is 1.

    States: ``g_rise``, ``g_decay`` (unit of ``x``); they do not depend on each other, so
    each forms its own group of S = 1 (a neuron fed by ``g`` joins both into one).

    Online learning: no weights; the operator producing ``x`` is traced into each state.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     syn = etprop.nn.DualExpon(3, tau_decay=10 * u.ms, tau_rise=1 * u.ms)
        ...     _ = brainstate.nn.init_all_states(syn, batch_size=2)
        ...     g = [syn(jnp.ones((2, 3)) if t == 0 else jnp.zeros((2, 3))) for t in range(30)]
        >>> peak = max(range(30), key=lambda t: float(g[t][0, 0]))
        >>> 0 < peak < 10                                       # rises with tau_rise, decays with tau_decay
        True
    """

    _state_names = ("g_rise", "g_decay")

    def __init__(self, in_size, tau_decay=10.0 * u.ms, tau_rise=1.0 * u.ms, *, unit=None,
                 normalize: bool = True, name=None, convention: str = "etprop"):
        super().__init__(in_size, unit=unit, name=name, convention=convention)
        self._tau_d = TimeConstant(self, "tau_decay", tau_decay, self.varshape, False)
        self._tau_r = TimeConstant(self, "tau_rise", tau_rise, self.varshape, False)
        self.A = 1.0
        if normalize:
            ratio = dt_over(tau_rise, tau_decay)  # tau_decay / tau_rise
            ratio = float(jnp.max(jnp.asarray(ratio)))
            if ratio <= 1.0:
                raise ArgumentError(f"DualExpon needs tau_rise < tau_decay, got tau_rise={tau_rise!r}, "
                                 f"tau_decay={tau_decay!r}")
            # peak of e^{-t/td} - e^{-t/tr} at t* = td tr / (td - tr) ln(td / tr); in units of tr: k = td/tr
            tp = ratio / (ratio - 1.0) * math.log(ratio)
            self.A = 1.0 / (math.exp(-tp / ratio) - math.exp(-tp))
        self.init_state()

    def update(self, x=None):
        x = self._input(x)
        self.g_rise.value = self._tau_r.decay(self) * self.g_rise.value + x
        self.g_decay.value = self._tau_d.decay(self) * self.g_decay.value + x
        return self.A * (self.g_decay.value - self.g_rise.value)
