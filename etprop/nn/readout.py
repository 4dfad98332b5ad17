r"""Readouts with memory: `LeakyRateReadout` (a leaky integrator of ``x W``) and
`LeakySpikeReadout` (an LIF group driven by ``x W``).

Their weights go through ``etprop.matmul``, so they are traced online: the readout's
state depends only on itself (element-wise leak), which makes the per-parameter
trace exact (D-RTRL = BPTT for the readout weight, whatever feeds it). A readout
without state (``h @ w_out``, a plain op) needs no trace: it gets its exact gradient
through the current step.
"""

from __future__ import annotations

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn.neurons import LIF
from etprop.nn.units import TimeConstant, batch_shape, filled, to_size

__all__ = ["LeakyRateReadout", "LeakySpikeReadout", "init_weight"]


def init_weight(w_init, shape, *, seed=None, scale: float = 1.0):
    """A weight array of ``shape``.

    ``w_init``: an array (checked against ``shape``), a callable ``f(shape)`` (e.g. a
    ``brainstate.nn.init`` initializer), or None for ``N(0, scale^2 / fan_in)``; ``seed``
    (int or key) makes the default draw reproducible (otherwise ``brainstate.random``).
    """
    shape = tuple(shape)
    if w_init is None:
        if seed is None:
            key = brainstate.random.split_key()
        elif isinstance(seed, int):
            key = jax.random.key(seed)
        else:
            key = seed
        return jax.random.normal(key, shape, jnp.result_type(float)) * (scale / jnp.sqrt(shape[0]))
    if callable(w_init):
        w = w_init(shape)
    else:
        w = w_init
    w = jnp.asarray(u.get_mantissa(w), dtype=jnp.result_type(float))
    if tuple(w.shape) != shape:
        raise ArgumentError(f"the initial weight (w_init) has shape {tuple(w.shape)}, expected {shape} (in, out)")
    return w


class LeakyRateReadout(brainstate.nn.Module):
    r"""Leaky integrator readout (the e-prop output neuron).

    .. math::

        d = e^{-\Delta t/\tau}, \qquad r^t = d\, r^{t-1} + (1 - d)\,(x^t W + b), \qquad r^0 = r_\text{init}

    Returns ``r^t``, shape ``(out_size,)`` or ``(batch, out_size)``.

    States: ``r`` (S = 1 per output), made by ``init_state`` / ``reset_state`` from ``r_init``.

    Online learning: ``weight`` (and ``bias``) go through ``etprop.matmul`` and are
    traced into ``r``; ``r``'s Jacobian is diagonal, so the trace of ``W`` is exact
    (D-RTRL and, with ``decay_or_rank="auto"``, ES-D-RTRL equal BPTT for ``W`` given
    its input). A trainable ``tau`` (``train_tau``) is traced via ``etprop.element_wise``.

    Args:
      in_size, out_size: ints.
      tau: time constant (quantity or number, like ``dt``).
      w_init: weight array, initializer or None (``N(0, 1/in_size)``); ``seed`` for it.
      bias: add a trainable bias (initialised to zero).
      train_tau: per-output trainable ``tau``.
      r_init: the initial ``r`` (braintrace's keyword): None for zeros; a number, array or
        quantity broadcast to ``(out_size,)`` (or ``(batch, out_size)``); or a callable
        ``f(shape)`` (a ``braintools.init`` initialiser, e.g. ``Constant(0.5)``) called with
        the full shape, batch axis included, at every ``init_state`` / ``reset_state``.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     readout = etprop.nn.LeakyRateReadout(4, 2, tau=5 * u.ms)
        ...     _ = brainstate.nn.init_all_states(readout, batch_size=3)
        ...     r = readout(jnp.ones((3, 4)))                 # spikes (or rates) in, leaky rates out
        >>> r.shape
        (3, 2)
    """

    def __init__(self, in_size: int, out_size: int, tau=5.0 * u.ms, *, w_init=None, seed=None,
                 bias: bool = False, train_tau: bool = False, r_init=None, name=None):
        super().__init__(name=name)
        self.r_init = r_init
        self.in_size = to_size(in_size)
        self.out_size = to_size(out_size)
        if len(self.in_size) != 1 or len(self.out_size) != 1:
            raise ArgumentError(f"LeakyRateReadout takes int in_size and out_size, got {in_size!r}, {out_size!r}")
        self.varshape = self.out_size
        w = init_weight(w_init, self.in_size + self.out_size, seed=seed)
        if bias:
            self.weight = brainstate.ParamState({"weight": w, "bias": jnp.zeros(self.out_size, w.dtype)})
        else:
            self.weight = brainstate.ParamState({"weight": w})
        self._tau = TimeConstant(self, "tau", tau, self.varshape, train_tau)
        self.init_state()

    def _initial_r(self, batch_size):
        shape = batch_shape(self.varshape, batch_size)
        init = self.r_init
        if init is None:
            return filled(shape, 0.0)
        try:
            value = init(shape) if callable(init) else init
        except (TypeError, ValueError) as err:
            raise ArgumentError(f"LeakyRateReadout: r_init failed for shape {shape}: {err}. Give a number, an array "
                                f"or quantity broadcastable to {shape}, or a callable f(shape) such as a "
                                f"braintools.init initialiser") from None
        got = np.shape(u.get_mantissa(value))
        try:
            ok = np.broadcast_shapes(got, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ArgumentError(f"LeakyRateReadout: r_init has shape {got}, which does not broadcast to r's shape "
                                f"{shape}")
        return filled(shape, value)

    def init_state(self, batch_size=None, **kwargs):
        self.r = brainstate.HiddenState(self._initial_r(batch_size))

    def reset_state(self, batch_size=None, **kwargs):
        self.r.value = self._initial_r(batch_size)

    def update(self, x):
        p = self.weight.value
        y = ops.matmul(x, p["weight"], p.get("bias"))
        d = self._tau.decay(self)
        self.r.value = d * self.r.value + (1.0 - d) * y
        return self.r.value


class LeakySpikeReadout(LIF):
    r"""Spiking readout: an `LIF` group whose input is ``x W``.

    .. math::

        v^t &= V_{rest} + d\,(v^{t-1} - V_{rest}) + (1 - d)\, R\,(x^t W), \qquad d = e^{-\Delta t/\tau} \\
        s^t &= H\!\left(\frac{v^t - V_{th}}{V_{th} - V_{reset}}\right), \qquad
        v^t \leftarrow v^t - s^t (V_{th} - V_{reset})

    Returns the spikes ``s^t``; the potential is the state ``v`` (use it as a graded output
    if needed). For potentials in mV give e.g. ``R=1 * u.mV`` (``x W`` is dimensionless).

    States: ``v`` (S = 1 per output; ``refractory`` with ``tau_ref``).

    Online learning: ``weight`` goes through ``etprop.matmul`` and is traced into ``v``;
    the Jacobian is diagonal, so D-RTRL equals BPTT for ``W`` given its input.

    Args: ``in_size``, ``out_size``, ``w_init``/``seed`` as `LeakyRateReadout`; the rest as
    `etprop.nn.LIF`.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     readout = etprop.nn.LeakySpikeReadout(4, 2)
        ...     _ = brainstate.nn.init_all_states(readout, batch_size=3)
        ...     out = readout(jnp.ones((3, 4)))
        >>> out.shape
        (3, 2)
    """

    def __init__(self, in_size: int, out_size: int, tau=20.0 * u.ms, *, w_init=None, seed=None, **kwargs):
        super().__init__(out_size, tau=tau, **kwargs)
        self.in_size = to_size(in_size)
        if len(self.in_size) != 1 or len(self.varshape) != 1:
            raise ArgumentError(f"LeakySpikeReadout takes int in_size and out_size, got {in_size!r}, {out_size!r}")
        self.weight = brainstate.ParamState(init_weight(w_init, self.in_size + self.varshape, seed=seed))

    def update(self, x):
        return super().update(ops.matmul(x, self.weight.value))
