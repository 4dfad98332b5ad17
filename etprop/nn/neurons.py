r"""Spiking neuron groups: `IF`, `LIF`, `ALIF`, `GIF`.

Every neuron is a `brainstate.nn.Module` whose ``update(x)`` takes this step's input
``x`` (a current, or directly a potential, see *Units*) and returns this step's
spikes ``s`` (a float array of 0/1 with the surrogate derivative of ``spike_fn``).
States are `brainstate.HiddenState` of shape ``varshape`` (created in ``__init__``)
or ``(batch_size, *varshape)`` after ``init_state(batch_size)`` /
``brainstate.nn.init_all_states(model, batch_size=B)``.

**Time.** ``dt`` is read from ``brainstate.environ.get_dt()`` when the step is traced
(set it with ``brainstate.environ.set(dt=0.1 * u.ms)`` or a ``brainstate.environ.context``);
a compiled learner keeps the ``dt`` it was traced with. Time constants may be
`brainunit` quantities (``tau=20 * u.ms``, with ``dt`` in time units too) or plain numbers
(with a plain ``dt``); decays are ``exp(-dt / tau)``.

**Units.** Potentials (``V_th``, ``V_reset``, ``V_rest``, the state ``v``) share the unit of
``V_th``: either all dimensionless (``V_th=1.``, the defaults), or e.g. ``V_th=-50 * u.mV``
and the state ``v`` carries mV. The input enters as ``R * x``, which must have the unit of
the potential: a current ``x`` in pA with ``R`` in Mohm/Gohm, or ``x`` directly in mV with
the default ``R=1``. Membrane integration is the exact solution for an input held
constant over the step (exponential Euler)::

    v <- V_rest + d (v - V_rest) + (1 - d) R x,     d = exp(-dt / tau)

so ``x`` is in steady-state units (a constant ``R x`` moves ``v`` to ``V_rest + R x``).
The spike is ``s = spike_fn((v - threshold) / v_scale)`` with ``v_scale = V_th - V_reset``
(dimensionless, so a surrogate's width does not depend on the unit).

**Online learning.** A neuron has no weights of its own except the optional trainable
time constants (``train_tau=True``: a per-neuron `brainstate.ParamState` holding
``tau`` as a plain number in the unit ``tau`` was given in; it is used through
`etprop.element_wise`). All states of one neuron group have the neuron's shape and
depend on each other only position by position, so they form one hidden group of
``S`` states per position; an ETP operator feeding ``x`` (``etprop.matmul`` in the layer
before) and the element-wise ``tau`` are traced into that group. In a feed-forward
layer the hidden Jacobian is block-diagonal per position and D-RTRL (`etprop.D_RTRL`) is
exactly BPTT; ES-D-RTRL approximates the input side of the trace.
"""

from __future__ import annotations

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn import signatures
from etprop.nn._errors import ArgumentTypeError
from etprop.nn.initializers import one_of
from etprop.nn.surrogate import FastSigmoid, Surrogate
from etprop.nn.units import TimeConstant, batch_shape, dt_over, filled, get_dt, in_unit, to_size, unit_of

__all__ = ["IF", "LIF", "ALIF", "GIF"]


# -- neurons --------------------------------------------------------------------------------

class Neuron(signatures.BySignature, brainstate.nn.Module):
    """Shared parameters and state handling of the integrate-and-fire family (brainpy.state's
    signature builds brainpy.state's model: `etprop.nn.signatures`)."""

    _state_names: tuple[str, ...] = ("v",)

    def __init__(self, in_size, *, tau=20.0 * u.ms, V_th=1.0, V_reset=None, V_rest=None, R=1.0,
                 spike_fn: Surrogate | None = None, reset: str = "subtract", detach_reset: bool = False,
                 v_scale=None, train_tau: bool = False, name: str | None = None, convention: str = "etprop"):
        signatures.check_convention(convention)
        super().__init__(name=name)
        self.in_size = self.out_size = self.varshape = to_size(in_size)
        self.v_unit = unit_of(V_th)
        self.V_th = in_unit(V_th, self.v_unit, "V_th")
        self.V_rest = in_unit(0.0 if V_rest is None else V_rest, self.v_unit, "V_rest")
        self.V_reset = self.V_rest if V_reset is None else in_unit(V_reset, self.v_unit, "V_reset")
        self.R = R
        self.v_scale = (self.V_th - self.V_reset) if v_scale is None else in_unit(v_scale, self.v_unit, "v_scale")
        if np.any(np.asarray(u.get_mantissa(self.v_scale)) == 0):
            raise ArgumentError(f"v_scale (default V_th - V_reset) must be nonzero, got V_th={V_th!r}, "
                                f"V_reset={V_reset!r}, v_scale={v_scale!r}; pass v_scale=... explicitly")
        self.reset = one_of(reset, "reset", {"subtract": "v -= s (V_th - V_reset)", "zero": "v <- V_reset"})
        self.detach_reset = bool(detach_reset)
        self.spike_fn = FastSigmoid(10.0) if spike_fn is None else spike_fn
        if not callable(self.spike_fn):
            raise ArgumentTypeError(f"spike_fn must be callable (e.g. etprop.nn.surrogate.FastSigmoid(10.)), "
                            f"got {spike_fn!r}")
        self._tau = TimeConstant(self, "tau", tau, self.varshape, train_tau)

    # -- states ---------------------------------------------------------------------------

    def _initial_values(self, batch_size):
        """``{state name: initial value}``."""
        shape = batch_shape(self.varshape, batch_size)
        return {"v": filled(shape, self.V_rest)}

    def init_state(self, batch_size=None, **kwargs):
        """Create the states with shape ``(batch_size, *varshape)`` (``varshape`` if None)."""
        for k, v in self._initial_values(batch_size).items():
            setattr(self, k, brainstate.HiddenState(v))

    def reset_state(self, batch_size=None, **kwargs):
        """Return the states to their initial values (shape as in `init_state`)."""
        for k, v in self._initial_values(batch_size).items():
            getattr(self, k).value = v

    # -- pieces of the step -----------------------------------------------------------------

    def _drive(self, x):
        """``R * x`` in the unit of the potential."""
        if x is None:
            return 0.0 * self.v_unit if not self.v_unit.is_unitless else 0.0
        d = self.R * x
        du = unit_of(d)
        if not du.has_same_dim(self.v_unit):
            raise ArgumentError(f"{type(self).__name__}: R * x has unit {du} but the membrane potential is in "
                             f"{self.v_unit}; give x as a current with R in ohm-like units (x in pA, R in "
                             f"Mohm) or x directly in {self.v_unit}. (A port of brainpy.state's "
                             f"{type(self).__name__} with its defaults, as braintrace.nn forwards it: write "
                             f"etprop.nn.{type(self).__name__}(..., convention='brainpy').)")
        if isinstance(d, u.Quantity):
            d = d.in_unit(self.v_unit) if not self.v_unit.is_unitless else d.to_decimal()
        return d

    def _spike(self, v, threshold):
        x = (v - threshold) / self.v_scale
        return self.spike_fn(x)

    def _reset(self, v, s, threshold):
        sr = jax.lax.stop_gradient(s) if self.detach_reset else s
        if self.reset == "subtract":
            return v - sr * (threshold - self.V_reset)
        return v - sr * (v - self.V_reset)


class IF(Neuron):
    r"""Integrate-and-fire neuron (no leak).

    .. math::

        v^t &= v^{t-1} + \frac{\Delta t}{\tau} R\, x^t \\
        s^t &= H\!\left(\frac{v^t - V_{th}}{V_{th} - V_{reset}}\right) \\
        v^t &\leftarrow v^t - s^t (V_{th} - V_{reset}) \quad\text{(reset='subtract')}
        \quad\text{or}\quad v^t - s^t (v^t - V_{reset}) \quad\text{('zero')}

    ``H`` is ``spike_fn`` (a surrogate: `etprop.nn.surrogate`). ``tau = R C`` scales the
    input (``x`` of unit-``R x`` potential integrates to ``v`` over ``tau``).

    States: ``v`` (potential, the unit of ``V_th``). S = 1 per position.

    Online learning: no weights of its own (``tau`` trainable with ``train_tau``). The
    operator producing ``x`` (e.g. ``etprop.matmul``) is traced into ``v``: the only hidden
    dependency is ``v -> v`` per position, so D-RTRL is exact in a feed-forward layer.

    Args:
      in_size: neuron shape (int or tuple).
      tau: input time constant (quantity or number, like ``dt``).
      V_th, V_reset, V_rest: threshold, reset and initial potential (unit of ``V_th``;
        ``V_rest`` defaults to 0, ``V_reset`` to ``V_rest``).
      R: input resistance (``R * x`` must be a potential).
      spike_fn: a surrogate spike function (default ``FastSigmoid(10.)``).
      reset: ``'subtract'`` or ``'zero'``; ``detach_reset`` stops gradients through the reset.
      v_scale: normaliser of the spike function's argument (default ``V_th - V_reset``).
      train_tau: make ``tau`` a per-neuron trainable parameter.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     neu = etprop.nn.IF(4, tau=5 * u.ms, reset="zero")      # unbatched: v is (4,)
        ...     s = [neu(jnp.full(4, 3.0)) for _ in range(10)]        # v rises 0.6 a step
        >>> [int(x[0]) for x in s]                                     # spikes, then v <- V_reset = 0
        [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
        >>> neu.v.value.shape
        (4,)
    """

    def __init__(self, in_size, **kwargs):
        super().__init__(in_size, **kwargs)
        self.init_state()

    def update(self, x=None):
        v = self.v.value + dt_over(self._tau.value(self)) * self._drive(x)
        s = self._spike(v, self.V_th)
        self.v.value = self._reset(v, s, self.V_th)
        return s


class LIF(Neuron):
    r"""Leaky integrate-and-fire neuron with an optional refractory period.

    .. math::

        d &= e^{-\Delta t / \tau} \\
        v^t &= V_{rest} + d\,(v^{t-1} - V_{rest}) + (1 - d)\, R\, x^t \\
        s^t &= H\!\left(\frac{v^t - V_{th}}{V_{th} - V_{reset}}\right) \\
        v^t &\leftarrow v^t - s^t (V_{th} - V_{reset})\ \text{('subtract')}
              \ \text{or}\ v^t - s^t (v^t - V_{reset})\ \text{('zero')}

    With ``tau_ref``: while the integer counter ``refractory > 0`` the neuron holds
    ``v = V_reset`` and cannot spike; a spike sets the counter to
    ``round(tau_ref / dt)`` and each step lowers it by one.

    States: ``v`` (potential, `brainstate.HiddenState`, unit of ``V_th``); with
    ``tau_ref`` also ``refractory`` (int32 `brainstate.ShortTermState`: not
    differentiable, carried but not traced). S = 1 per position.

    Online learning: the input operator (e.g. ``etprop.matmul``) and a trainable ``tau``
    (``train_tau=True``, through ``etprop.element_wise``) are traced into ``v``; the
    hidden Jacobian ``dv^t/dv^{t-1}`` is diagonal, so D-RTRL equals BPTT in a
    feed-forward layer.

    Args: as `IF`, plus ``tau`` the membrane time constant and ``tau_ref`` the refractory
    period (None: none; same time unit as ``dt``).

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     neu = etprop.nn.LIF(4, tau=10 * u.ms)
        ...     _ = brainstate.nn.init_all_states(neu, batch_size=2)
        ...     spikes = [neu(jnp.full((2, 4), 3.0)) for _ in range(20)]   # driven above threshold
        >>> spikes[-1].shape, float(sum(s.sum() for s in spikes)) > 0
        ((2, 4), True)
        >>> sorted(k[0] for k in neu.states(brainstate.HiddenState))
        ['v']
    """

    def __init__(self, in_size, *, tau_ref=None, **kwargs):
        self.tau_ref = tau_ref
        super().__init__(in_size, **kwargs)
        self.init_state()

    def init_state(self, batch_size=None, **kwargs):
        super().init_state(batch_size)
        if self.tau_ref is not None:
            self.refractory = brainstate.ShortTermState(jnp.zeros(batch_shape(self.varshape, batch_size), jnp.int32))

    def reset_state(self, batch_size=None, **kwargs):
        super().reset_state(batch_size)
        if self.tau_ref is not None:
            self.refractory.value = jnp.zeros(batch_shape(self.varshape, batch_size), jnp.int32)

    def _ref_steps(self) -> int:
        """``round(tau_ref / dt)``, the refractory period in steps."""
        return int(round(float(np.asarray(dt_over(get_dt(), self.tau_ref)))))

    def update(self, x=None):
        d = self._tau.decay(self)
        v = self.V_rest + d * (self.v.value - self.V_rest) + (1.0 - d) * self._drive(x)
        if self.tau_ref is not None:
            ref = self.refractory.value > 0
            v = u.math.where(ref, self.V_reset, v)
            s = self._spike(v, self.V_th) * (1.0 - ref.astype(u.get_mantissa(v).dtype))
            self.refractory.value = jnp.where(s > 0, jnp.int32(self._ref_steps()),
                                              jnp.maximum(self.refractory.value - 1, 0)).astype(jnp.int32)
        else:
            s = self._spike(v, self.V_th)
        self.v.value = self._reset(v, s, self.V_th)
        return s


class ALIF(Neuron):
    r"""Adaptive LIF (LSNN neuron of Bellec et al.): a spike raises the threshold, which decays back.

    .. math::

        A^t &= V_{th} + \beta\, a^{t-1} \\
        v^t &= V_{rest} + d\,(v^{t-1} - V_{rest}) + (1 - d)\, R\, x^t, \qquad d = e^{-\Delta t/\tau} \\
        s^t &= H\!\left(\frac{v^t - A^t}{V_{th} - V_{reset}}\right) \\
        v^t &\leftarrow v^t - s^t (A^t - V_{reset})\ \text{('subtract')}
              \ \text{or}\ v^t - s^t (v^t - V_{reset})\ \text{('zero')} \\
        a^t &= \rho\, a^{t-1} + s^t, \qquad \rho = e^{-\Delta t/\tau_a}

    ``a`` is a decaying spike count (dimensionless), ``beta`` the threshold increase per
    spike (unit of ``V_th``; default ``0.1 (V_th - V_reset)``).

    States: ``v`` (potential) and ``a`` (adaptation); S = 2 per position.

    Online learning: the input operator, a trainable ``tau`` (``train_tau``) and a
    trainable ``beta`` (``train_beta``, per neuron, through ``etprop.element_wise``) are
    traced into the group ``(v, a)``. Its Jacobian is block-diagonal (2 x 2 per
    neuron), so D-RTRL equals BPTT in a feed-forward layer.

    Args: as `LIF` (no refractory period), plus ``tau_a`` (adaptation time constant),
    ``beta`` and ``train_beta``.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     neu = etprop.nn.ALIF(4, tau=10 * u.ms, tau_a=100 * u.ms)
        ...     _ = brainstate.nn.init_all_states(neu, batch_size=2)
        ...     spikes = [neu(jnp.full((2, 4), 3.0)) for _ in range(20)]   # driven above threshold
        >>> spikes[-1].shape, float(sum(s.sum() for s in spikes)) > 0
        ((2, 4), True)
        >>> sorted(k[0] for k in neu.states(brainstate.HiddenState))
        ['a', 'v']
    """

    _state_names = ("v", "a")

    def __init__(self, in_size, *, tau_a=200.0 * u.ms, beta=None, train_beta: bool = False, **kwargs):
        super().__init__(in_size, **kwargs)
        self._tau_a = TimeConstant(self, "tau_a", tau_a, self.varshape, False)
        beta = 0.1 * self.v_scale if beta is None else in_unit(beta, self.v_unit, "beta")
        self.train_beta = bool(train_beta)
        if self.train_beta:
            self.beta = brainstate.ParamState(filled(self.varshape, u.get_mantissa(beta)))
        else:
            self.beta = beta
        self.init_state()

    def _beta(self):
        if not self.train_beta:
            return self.beta
        b = ops.element_wise(self.beta.value)
        return b if self.v_unit.is_unitless else b * self.v_unit

    def _initial_values(self, batch_size):
        vals = super()._initial_values(batch_size)
        vals["a"] = jnp.zeros(batch_shape(self.varshape, batch_size))
        return vals

    def update(self, x=None):
        thr = self.V_th + self._beta() * self.a.value
        d = self._tau.decay(self)
        v = self.V_rest + d * (self.v.value - self.V_rest) + (1.0 - d) * self._drive(x)
        s = self._spike(v, thr)
        self.v.value = self._reset(v, s, thr)
        self.a.value = self._tau_a.decay(self) * self.a.value + s
        return s


class GIF(Neuron):
    r"""Generalised integrate-and-fire neuron (Mihalas & Niebur 2009): two after-spike
    currents and an adaptive threshold.

    Between spikes (exponential Euler with the other variables held over the step):

    .. math::

        I_j^t &= e^{-\Delta t/\tau_{I_j}}\, I_j^{t-1} \qquad (j = 1, 2) \\
        v^t &= V_{rest} + d\,(v^{t-1} - V_{rest}) + (1 - d)\, R\,(x^t + I_1^{t-1} + I_2^{t-1}),
              \qquad d = e^{-\Delta t/\tau} \\
        \theta_\infty^t &= \Theta_\infty + a\,(v^{t-1} - V_{rest}) \\
        \theta^t &= \theta_\infty^t + (\theta^{t-1} - \theta_\infty^t)\, e^{-\Delta t/\tau_\theta} \\
        s^t &= H\!\left(\frac{v^t - \theta^t}{\Theta_\infty - V_{reset}}\right)

    and at a spike (written with the spike ``s^t`` so that it is differentiable):

    .. math::

        I_j &\leftarrow I_j + s^t\,((R_j - 1) I_j + A_j) \\
        v &\leftarrow v - s^t (v - V_{reset}) \quad(\text{or } v - s^t(\theta - V_{reset})
             \text{ with reset='subtract'}) \\
        \theta &\leftarrow \theta + s^t\,(\max(\Theta_{reset}, \theta) - \theta)

    ``a`` is dimensionless (Mihalas-Niebur's ``a / b``) and ``tau_theta = 1 / b``.
    The after-spike currents are in the unit of ``x`` (``unit(V_th) / unit(R)``); ``A1``,
    ``A2`` must be given in that unit. Default reset is ``'zero'`` (as in the model).

    States: ``I1``, ``I2`` (currents), ``v`` (potential), ``theta`` (threshold); S = 4
    per position.

    Online learning: the input operator and a trainable ``tau`` are traced into the
    group ``(I1, I2, v, theta)``; all four interact only within a neuron, so the hidden
    Jacobian is block-diagonal (4 x 4 per neuron) and D-RTRL equals BPTT in a
    feed-forward layer.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     neu = etprop.nn.GIF(4)
        ...     _ = brainstate.nn.init_all_states(neu, batch_size=2)
        ...     spikes = [neu(jnp.full((2, 4), 3.0)) for _ in range(20)]   # driven above threshold
        >>> spikes[-1].shape, float(sum(s.sum() for s in spikes)) > 0
        ((2, 4), True)
        >>> sorted(k[0] for k in neu.states(brainstate.HiddenState))
        ['I1', 'I2', 'theta', 'v']
    """

    _state_names = ("I1", "I2", "v", "theta")

    def __init__(self, in_size, *, tau=20.0 * u.ms, tau_I1=5.0 * u.ms, tau_I2=50.0 * u.ms,
                 tau_theta=100.0 * u.ms, a=0.0, V_th_inf=1.0, V_th_reset=None, V_rest=None, V_reset=None,
                 R=1.0, R1=0.0, R2=1.0, A1=0.0, A2=0.0, reset: str = "zero", **kwargs):
        super().__init__(in_size, tau=tau, V_th=V_th_inf, V_rest=V_rest, V_reset=V_reset, R=R, reset=reset,
                         **kwargs)
        self.V_th_inf = self.V_th
        self.V_th_reset = self.V_reset if V_th_reset is None else in_unit(V_th_reset, self.v_unit, "V_th_reset")
        self.cur_unit = self.v_unit / unit_of(R)
        self.a = jnp.asarray(a, dtype=jnp.result_type(float))
        self.R1, self.R2 = R1, R2
        self.A1 = in_unit(A1, self.cur_unit, "A1")
        self.A2 = in_unit(A2, self.cur_unit, "A2")
        self._tau_I1 = TimeConstant(self, "tau_I1", tau_I1, self.varshape, False)
        self._tau_I2 = TimeConstant(self, "tau_I2", tau_I2, self.varshape, False)
        self._tau_theta = TimeConstant(self, "tau_theta", tau_theta, self.varshape, False)
        self.init_state()

    def _initial_values(self, batch_size):
        shape = batch_shape(self.varshape, batch_size)
        zero_i = 0.0 if self.cur_unit.is_unitless else 0.0 * self.cur_unit
        return {"I1": filled(shape, zero_i), "I2": filled(shape, zero_i),
                "v": filled(shape, self.V_rest), "theta": filled(shape, self.V_th_inf)}

    def _drive(self, x):
        d = super()._drive(x)
        i_syn = self.R * (self.I1.value + self.I2.value)
        if isinstance(i_syn, u.Quantity):
            i_syn = i_syn.in_unit(self.v_unit) if not self.v_unit.is_unitless else i_syn.to_decimal()
        return d + i_syn

    def update(self, x=None):
        v_prev, th_prev = self.v.value, self.theta.value
        d = self._tau.decay(self)
        v = self.V_rest + d * (v_prev - self.V_rest) + (1.0 - d) * self._drive(x)
        i1 = self._tau_I1.decay(self) * self.I1.value
        i2 = self._tau_I2.decay(self) * self.I2.value
        th_inf = self.V_th_inf + self.a * (v_prev - self.V_rest)
        th = th_inf + (th_prev - th_inf) * self._tau_theta.decay(self)
        s = self._spike(v, th)
        sr = jax.lax.stop_gradient(s) if self.detach_reset else s
        self.v.value = self._reset(v, s, th)
        self.I1.value = i1 + sr * ((self.R1 - 1.0) * i1 + self.A1)
        self.I2.value = i2 + sr * ((self.R2 - 1.0) * i2 + self.A2)
        self.theta.value = th + sr * (u.math.maximum(self.V_th_reset, th) - th)
        return s
