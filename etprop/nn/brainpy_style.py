r"""brainpy.state's neurons and synapses, built by `etprop.nn`'s classes of the same names.

braintrace.nn forwards ``IF``, ``LIF``, ``ALIF``, ``Expon``, ``Alpha`` and ``DualExpon`` to
brainpy.state. `etprop.nn` has its own classes under these names; called with brainpy.state's
signature (see `etprop.nn.signatures` for the rule) they build the classes of this module, which
take brainpy.state's constructor arguments (names, positional order, defaults, units) and compute
its dynamics, state for state::

    etprop.nn.LIF(100, tau=10 * u.ms, V_th=1. * u.mV)              # etprop's LIF
    etprop.nn.LIF(100, tau=10 * u.ms, V_th=1. * u.mV,
                  spk_fun=braintools.surrogate.ReluGrad())           # brainpy.state's LIF
    etprop.nn.LIF(100, convention='brainpy')                          # ... with its defaults

What brainpy.state's models do, and so these (``d = exp(-dt / tau)``, exponential Euler through
`brainstate.nn.exp_euler_step`, ``I`` the input plus the registered current inputs):

* the **reset is applied at the start of the next step**, from the spike the stored potential
  gives: the state ``V`` holds the potential before the reset (etprop's own classes reset in the
  step and store ``v`` after it; the spikes are the same);
* ``spk_reset='soft'`` subtracts ``V_th - V_reset``; ``'hard'`` sets ``V_reset`` with the reset
  amount detached (``stop_gradient``);
* ``LIF``: ``V <- V_rest + R I + (V - V_rest - R I) d``, spike ``spk_fun((V - V_th) / (V_th - V_reset))``;
* ``IF``: the same with ``V_rest = V_reset = 0`` (brainpy.state's IF leaks), spike
  ``spk_fun((V - V_th) / V_th)``;
* ``ALIF``: ``a <- (a + s_prev) exp(-dt / tau_a)``; spike ``spk_fun((V - V_th - beta a) / (V_th - V_reset))``;
* ``Expon``: ``g <- g d + x``; ``Alpha``: ``g <- g d + h (1 - d)``, ``h <- h d + x`` (``g`` with the
  old ``h``); ``DualExpon``: ``g_r <- g_r d_r + x``, ``g_d <- g_d d_d + x``, output
  ``amplitude * A * (g_d - g_r)`` with ``A`` normalising the peak (``normalize=True``).

They are `brainstate.nn.Dynamics` with brainpy.state's input registry (``add_current_input``,
``add_delta_input``, ``sum_current_inputs``, ``sum_delta_inputs``) and its ``get_spike``; once
brainpy.state is imported they are registered as its ``Dynamics`` (``Expon`` and ``DualExpon``
also derive from its ``AlignPost``, as brainpy.state's do), so its projections (``AlignPostProj``, ``DeltaProj``, ``CurrentProj``) take them.
``isinstance(x, etprop.nn.LIF)`` holds for both conventions.

Online learning is as for any model: the ETP operator feeding ``x`` is traced into the group
of the neuron's states; a feed-forward layer's hidden Jacobian is diagonal per position, so
D-RTRL equals BPTT (tested side by side with brainpy.state's classes in
``tests/nn/test_brainpy_style.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError
from etprop.nn import neurons, signatures, synapses
from etprop.nn.initializers import one_of
from etprop.nn.surrogate import ReluGrad
from etprop.nn.units import get_dt, to_size

__all__ = ["BrainpyIF", "BrainpyLIF", "BrainpyALIF", "BrainpyExpon", "BrainpyAlpha", "BrainpyDualExpon",
           "param", "state_value", "register_signatures"]


def param(value, varshape, name: str):
    """A parameter as brainpy.state takes it: a number/array/quantity broadcastable to
    ``varshape``, or an initialiser called with ``varshape``."""
    if callable(value) and not isinstance(value, (u.Quantity, jax.Array, np.ndarray)):
        value = value(tuple(varshape))
    shape = np.shape(u.get_mantissa(value))
    try:
        np.broadcast_shapes(shape, tuple(varshape))
    except ValueError:
        raise ArgumentError(f"{name} has shape {shape}, which does not broadcast to the neurons' shape "
                            f"{tuple(varshape)}; give a scalar or an array of that shape") from None
    return value


def state_value(init, varshape, batch_size, name: str):
    """An initial state: ``init(shape)`` for an initialiser (braintools'), else ``init`` broadcast
    to ``shape = (batch_size, *varshape)`` (``varshape`` when ``batch_size`` is None)."""
    shape = tuple(varshape) if batch_size is None else (int(batch_size),) + tuple(varshape)
    value = init(shape) if callable(init) and not isinstance(init, (u.Quantity, jax.Array)) else init
    mantissa, unit = u.split_mantissa_unit(value)
    try:
        mantissa = jnp.array(jnp.broadcast_to(jnp.asarray(mantissa, jnp.result_type(float)), shape))
    except ValueError:
        raise ArgumentError(f"{name} gives shape {np.shape(mantissa)}, expected {shape}") from None
    return mantissa if unit.is_unitless else u.Quantity(mantissa, unit=unit)


def _register_with_brainpy(cls) -> None:
    """Register ``cls`` as brainpy.state's ``Dynamics`` once brainpy.state is loaded, so that its
    projections accept it as a target (they check ``isinstance(post, Dynamics)``). Nothing to do
    without brainpy."""
    if "brainpy_state" in sys.modules and not cls.__dict__.get("_brainpy_registered", False):
        sys.modules["brainpy"].state.Dynamics.register(cls)
        cls._brainpy_registered = True


_ALIGN_POST: dict[type, type] = {}


def _with_align_post(cls: type) -> type:
    """``cls``, with brainpy.state's ``AlignPost`` mixin once brainpy.state is loaded.

    ``AlignPostProj`` merges a synapse given as a describer only if the described class is a
    subclass of ``AlignPost``, a plain mixin (not an ABC, so it cannot be registered): the synapse
    class built then derives from it, made once per class and cached.
    """
    align = getattr(sys.modules.get("brainpy_state._mixin"), "AlignPost", None)
    if align is None:
        return cls
    if cls not in _ALIGN_POST:
        _ALIGN_POST[cls] = type(cls.__name__, (cls, align), {"__module__": cls.__module__, "__doc__": cls.__doc__,
                                                             "__qualname__": cls.__qualname__})
    return _ALIGN_POST[cls]


class _InputsDynamics(brainstate.nn.Dynamics):
    """`brainstate.nn.Dynamics` with brainpy.state's registry of current and delta inputs.

    An input is an array (used once, then dropped) or a callable (called at every step with the
    arguments of ``sum_*_inputs``); a ``label`` groups inputs so that a model can sum one group.
    """

    def __init__(self, in_size, name=None):
        super().__init__(in_size=to_size(in_size), name=name)
        self._current_inputs = None
        self._delta_inputs = None
        _register_with_brainpy(type(self))

    @property
    def current_inputs(self):
        return self._current_inputs

    @property
    def delta_inputs(self):
        return self._delta_inputs

    @staticmethod
    def _key(key, label):
        return str(key) if label is None else f"{label} // {key}"

    def _add(self, attr, key, inp, label):
        table = getattr(self, attr)
        if table is None:
            table = {}
            setattr(self, attr, table)
        k = self._key(key, label)
        if k in table:
            raise ArgumentError(f"{type(self).__name__}: an input named {k!r} is already registered; give "
                                f"each input its own key")
        table[k] = inp

    def add_current_input(self, key: str, inp, label: str | None = None):
        """Register a current input (summed into ``I`` by `sum_current_inputs`)."""
        self._add("_current_inputs", key, inp, label)

    def add_delta_input(self, key: str, inp, label: str | None = None):
        """Register a delta input (a jump added to the state by `sum_delta_inputs`)."""
        self._add("_delta_inputs", key, inp, label)

    @staticmethod
    def _sum(table, init, args, kwargs, label, pop):
        if table is None:
            return init
        prefix = None if label is None else f"{label} // "
        for k in tuple(table):
            if prefix is not None and not k.startswith(prefix):
                continue
            inp = table[k]
            if callable(inp):
                init = init + inp(*args, **kwargs)
            else:
                init = init + inp
                if pop:
                    table.pop(k)
        return init

    def sum_current_inputs(self, init, *args, label: str | None = None, pop: bool = True, **kwargs):
        """``init`` plus every registered current input (callables get ``*args, **kwargs``)."""
        return self._sum(self._current_inputs, init, args, kwargs, label, pop)

    def sum_delta_inputs(self, init, *args, label: str | None = None, pop: bool = True, **kwargs):
        """``init`` plus every registered delta input."""
        return self._sum(self._delta_inputs, init, args, kwargs, label, pop)


# -- neurons ---------------------------------------------------------------------------------

class _BrainpyNeuron(_InputsDynamics):
    def __init__(self, in_size, spk_fun, spk_reset, name, convention):
        signatures.check_convention(convention)
        super().__init__(in_size, name=name)
        if not callable(spk_fun):
            raise ArgumentError(f"spk_fun must be a surrogate spike function (e.g. braintools.surrogate.ReluGrad() "
                                f"or etprop.nn.surrogate.ReluGrad()), got {spk_fun!r}")
        self.spk_fun = spk_fun
        self.spk_reset = one_of(spk_reset, "spk_reset", {"soft": "subtract V_th - V_reset",
                                                         "hard": "set V_reset, the reset amount detached"})

    def _reset_amount(self, last_v):
        """What a spike subtracts: ``V_th - V_reset`` (soft) or ``V - V_reset`` detached (hard)."""
        th = self.V_th if self.spk_reset == "soft" else jax.lax.stop_gradient(last_v)
        return th - self.V_reset

    def _integrate(self, v, x):
        """One exponential-Euler step of ``tau dV/dt = -V + V_rest + R I``."""
        get_dt()  # a clear error when dt is not set
        return brainstate.nn.exp_euler_step(
            lambda v_: (-v_ + self.V_rest + self.R * self.sum_current_inputs(x, v_)) / self.tau, v)

    def init_state(self, batch_size=None, **kwargs):
        self.V = brainstate.HiddenState(state_value(self.V_initializer, self.varshape, batch_size, "V_initializer"))

    def reset_state(self, batch_size=None, **kwargs):
        self.V.value = state_value(self.V_initializer, self.varshape, batch_size, "V_initializer")


class _Leaky(_BrainpyNeuron):
    """The leaky integrate-and-fire step shared by brainpy.state's IF, LIF and ALIF."""

    def __init__(self, in_size, R=1. * u.ohm, tau=5. * u.ms, V_th=1. * u.mV, V_reset=0. * u.mV,
                 V_rest=0. * u.mV, V_initializer=0. * u.mV, spk_fun: Callable = ReluGrad(),
                 spk_reset: str = "soft", name: str | None = None, convention: str = "brainpy"):
        super().__init__(in_size, spk_fun, spk_reset, name, convention)
        shape = self.varshape
        self.R, self.tau = param(R, shape, "R"), param(tau, shape, "tau")
        self.V_th, self.V_reset = param(V_th, shape, "V_th"), param(V_reset, shape, "V_reset")
        self.V_rest = param(V_rest, shape, "V_rest")
        self.V_initializer = V_initializer
        self.init_state()

    def get_spike(self, V=None):
        V = self.V.value if V is None else V
        return self.spk_fun((V - self.V_th) / (self.V_th - self.V_reset))

    def update(self, x=0. * u.mA):
        last_v = self.V.value
        v = last_v - self._reset_amount(last_v) * self.get_spike(last_v)
        v = self.sum_delta_inputs(self._integrate(v, x))
        self.V.value = v
        return self.get_spike(v)


class BrainpyLIF(_Leaky):
    r"""brainpy.state's ``LIF``: a leaky integrate-and-fire neuron, reset at the next step.

    .. math::

        V &\leftarrow V - s(V)\,(V_{th} - V_{reset}), \qquad
        s(V) = \mathrm{spk\_fun}\!\left(\frac{V - V_{th}}{V_{th} - V_{reset}}\right) \\
        V &\leftarrow V_{rest} + R I + (V - V_{rest} - R I)\, e^{-\Delta t/\tau}

    returning ``s(V)`` of the new ``V``. State ``V`` (before the reset); S = 1 per position.
    """


class BrainpyIF(_Leaky):
    r"""brainpy.state's ``IF``: as `BrainpyLIF` with ``V_rest = V_reset = 0`` (it leaks with
    ``tau``) and the spike ``spk_fun((V - V_th) / V_th)``; the soft reset subtracts ``V_th``."""

    def __init__(self, in_size, R=1. * u.ohm, tau=5. * u.ms, V_th=1. * u.mV, V_initializer=0. * u.mV,
                 spk_fun: Callable = ReluGrad(), spk_reset: str = "soft", name: str | None = None,
                 convention: str = "brainpy"):
        zero = 0. * u.get_unit(V_th) if not u.get_unit(V_th).is_unitless else 0.
        super().__init__(in_size, R=R, tau=tau, V_th=V_th, V_reset=zero, V_rest=zero,
                         V_initializer=V_initializer, spk_fun=spk_fun, spk_reset=spk_reset, name=name,
                         convention=convention)

    def get_spike(self, V=None):
        V = self.V.value if V is None else V
        return self.spk_fun((V - self.V_th) / self.V_th)


class BrainpyALIF(_Leaky):
    r"""brainpy.state's ``ALIF``: `BrainpyLIF` with a spike-triggered threshold adaptation ``a``.

    .. math::

        s_{prev} &= \mathrm{spk\_fun}\!\left(\frac{V - V_{th} - \beta a}{V_{th} - V_{reset}}\right),
        \qquad V \leftarrow V - s_{prev} (V_{th} - V_{reset}) \\
        V &\leftarrow V_{rest} + R I + (V - V_{rest} - R I)\, e^{-\Delta t/\tau}, \qquad
        a \leftarrow (a + s_{prev})\, e^{-\Delta t/\tau_a}

    returning the spike of the new ``(V, a)``. States ``V``, ``a``; S = 2 per position.
    """

    def __init__(self, in_size, R=1. * u.ohm, tau=5. * u.ms, tau_a=100. * u.ms, V_th=1. * u.mV,
                 V_reset=0. * u.mV, V_rest=0. * u.mV, beta=0.1 * u.mV, spk_fun: Callable = ReluGrad(),
                 spk_reset: str = "soft", V_initializer=0. * u.mV, a_initializer=0., name: str | None = None,
                 convention: str = "brainpy"):
        self.a_initializer = a_initializer
        super().__init__(in_size, R=R, tau=tau, V_th=V_th, V_reset=V_reset, V_rest=V_rest,
                         V_initializer=V_initializer, spk_fun=spk_fun, spk_reset=spk_reset, name=name,
                         convention=convention)
        self.tau_a, self.beta = param(tau_a, self.varshape, "tau_a"), param(beta, self.varshape, "beta")

    def init_state(self, batch_size=None, **kwargs):
        super().init_state(batch_size)
        self.a = brainstate.HiddenState(state_value(self.a_initializer, self.varshape, batch_size, "a_initializer"))

    def reset_state(self, batch_size=None, **kwargs):
        super().reset_state(batch_size)
        self.a.value = state_value(self.a_initializer, self.varshape, batch_size, "a_initializer")

    def get_spike(self, V=None, a=None):
        V = self.V.value if V is None else V
        a = self.a.value if a is None else a
        return self.spk_fun((V - self.V_th - self.beta * a) / (self.V_th - self.V_reset))

    def update(self, x=0. * u.mA):
        last_v, last_a = self.V.value, self.a.value
        s = self.get_spike(last_v, last_a)
        v = last_v - self._reset_amount(last_v) * s
        a = brainstate.nn.exp_euler_step(lambda a_: -a_ / self.tau_a, last_a + s)
        self.V.value = self.sum_delta_inputs(self._integrate(v, x))
        self.a.value = a
        return self.get_spike(self.V.value, self.a.value)


# -- synapses --------------------------------------------------------------------------------

class _BrainpySynapse(_InputsDynamics):
    _state_names: tuple[str, ...] = ("g",)

    def __init__(self, in_size, name, g_initializer, convention):
        signatures.check_convention(convention)
        super().__init__(in_size, name=name)
        self.g_initializer = g_initializer

    def init_state(self, batch_size=None, **kwargs):
        for k in self._state_names:
            setattr(self, k, brainstate.HiddenState(
                state_value(self.g_initializer, self.varshape, batch_size, "g_initializer")))

    def reset_state(self, batch_size=None, **kwargs):
        for k in self._state_names:
            getattr(self, k).value = state_value(self.g_initializer, self.varshape, batch_size, "g_initializer")

    def align_pre(self, dyn):
        """brainpy.state's pre-synaptic alignment hook: ``dyn`` feeds this synapse."""
        if isinstance(dyn, brainstate.mixin.ParamDescriber):
            dyn = dyn()
        return dyn


class _OneTauSynapse(_BrainpySynapse):
    """A synapse of one time constant ``tau``, in brainpy.state's signature."""

    def __init__(self, in_size, name: str | None = None, tau=8. * u.ms, g_initializer=0. * u.mS,
                 convention: str = "brainpy"):
        super().__init__(in_size, name, g_initializer, convention)
        self.tau = param(tau, self.varshape, "tau")
        self.init_state()


class BrainpyExpon(_OneTauSynapse):
    r"""brainpy.state's ``Expon``: ``g <- g e^{-dt/tau}`` (current inputs in the derivative),
    then the delta inputs and ``x`` are added; returns ``g``. State ``g`` (unit of ``g_initializer``)."""

    def update(self, x=None):
        g = brainstate.nn.exp_euler_step(lambda g_: self.sum_current_inputs(-g_) / self.tau, self.g.value)
        g = self.sum_delta_inputs(g)
        self.g.value = g if x is None else g + x
        return self.g.value


class BrainpyAlpha(_OneTauSynapse):
    r"""brainpy.state's ``Alpha``: ``g <- g e^{-dt/tau} + h (1 - e^{-dt/tau})`` with the old ``h``,
    then ``h <- h e^{-dt/tau}`` plus the delta inputs and ``x``; returns ``g``. States ``g``, ``h``."""

    _state_names = ("g", "h")

    def update(self, x=None):
        h = brainstate.nn.exp_euler_step(lambda h_: -h_ / self.tau, self.h.value)
        self.g.value = brainstate.nn.exp_euler_step(lambda g_, h_: (h_ - g_) / self.tau, self.g.value, self.h.value)
        h = self.sum_delta_inputs(h)
        self.h.value = h if x is None else h + x
        return self.g.value


class BrainpyDualExpon(_BrainpySynapse):
    r"""brainpy.state's ``DualExpon``: ``g_rise``, ``g_decay`` decay with their time constants,
    both take the delta inputs and ``x``; returns ``amplitude * A * (g_decay - g_rise)`` with
    ``A = tau_d / (tau_d - tau_r) * (tau_r / tau_d)^(tau_r / (tau_r - tau_d))`` when ``normalize``
    (then ``tau_rise != tau_decay`` is required), else 1."""

    _state_names = ("g_rise", "g_decay")

    def __init__(self, in_size, name: str | None = None, tau_decay=10. * u.ms, tau_rise=1. * u.ms,
                 amplitude=1.0, normalize: bool = True, g_initializer=0. * u.mS, convention: str = "brainpy"):
        super().__init__(in_size, name, g_initializer, convention)
        self.tau_decay = param(tau_decay, self.varshape, "tau_decay")
        self.tau_rise = param(tau_rise, self.varshape, "tau_rise")
        self.amplitude = param(amplitude, self.varshape, "amplitude")
        self.normalize = bool(normalize)
        if self.normalize:
            try:
                same = bool(np.any(np.asarray(u.get_magnitude(self.tau_decay - self.tau_rise)) == 0))
            except jax.errors.TracerArrayConversionError:  # built under a transform: cannot check here
                same = False
            if same:
                raise ArgumentError(f"DualExpon(normalize=True) needs tau_rise != tau_decay, got tau_rise="
                                    f"{tau_rise!r}, tau_decay={tau_decay!r}; use Alpha for equal time constants")
        self.init_state()

    def _scale(self):
        if not self.normalize:
            return self.amplitude
        td, tr = self.tau_decay, self.tau_rise
        return self.amplitude * (td / (td - tr) * u.math.float_power(tr / td, tr / (tr - td)))

    def update(self, x=None):
        g_rise = brainstate.nn.exp_euler_step(lambda g_: -g_ / self.tau_rise, self.g_rise.value)
        g_decay = brainstate.nn.exp_euler_step(lambda g_: -g_ / self.tau_decay, self.g_decay.value)
        delta = self.sum_delta_inputs(u.math.zeros_like(self.g_rise.value))
        g_rise, g_decay = g_rise + delta, g_decay + delta
        if x is not None:
            g_rise, g_decay = g_rise + x, g_decay + x
        self.g_rise.value, self.g_decay.value = g_rise, g_decay
        return self._scale() * (g_decay - g_rise)


# -- registration: etprop.nn.<Name>(brainpy.state's signature) builds these -----------------------

_NEURON_KEYWORDS = frozenset({"spk_fun", "spk_reset", "V_initializer"})
_SYNAPSE_KEYWORDS = frozenset({"g_initializer"})


def _any(args) -> bool:
    return True  # etprop's neurons take no positional argument after in_size


def _name_second(args) -> bool:
    return isinstance(args[0], str) or args[0] is None  # brainpy.state's synapses: (in_size, name, ...)


def register_signatures() -> None:
    """Make `etprop.nn`'s IF ... DualExpon build these for brainpy.state's signature (called once,
    by ``etprop.nn``'s ``__init__``)."""
    for own, cls, keywords, positional, resolve in (
            (neurons.IF, BrainpyIF, _NEURON_KEYWORDS, _any, None),
            (neurons.LIF, BrainpyLIF, _NEURON_KEYWORDS, _any, None),
            (neurons.ALIF, BrainpyALIF, _NEURON_KEYWORDS | {"a_initializer"}, _any, None),
            (synapses.Expon, BrainpyExpon, _SYNAPSE_KEYWORDS, _name_second, _with_align_post),
            (synapses.Alpha, BrainpyAlpha, _SYNAPSE_KEYWORDS, _name_second, None),  # not AlignPost there either
            (synapses.DualExpon, BrainpyDualExpon, _SYNAPSE_KEYWORDS | {"amplitude"}, _name_second,
             _with_align_post)):
        signatures.register(own, signatures.Variant(cls, frozenset(keywords), positional, resolve))
