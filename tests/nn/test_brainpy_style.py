"""etprop.nn's IF, LIF, ALIF, Expon, Alpha, DualExpon called with brainpy.state's signature build
brainpy.state's model: side by side with brainpy.state's own classes, state for state, gradient for
gradient, and under brainpy.state's projections."""

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brainpy.state as bps

import etprop
from etprop.errors import ArgumentError
from tests.conftest import bptt_reference, rel_err

DT = 0.5 * u.ms
B, N_IN, N = 2, 5, 4

NEURONS = {
    # name: kwargs both libraries take (brainpy.state's signature)
    "IF": dict(tau=8 * u.ms, V_th=1. * u.mV),
    "LIF": dict(tau=8 * u.ms, V_th=1. * u.mV, V_reset=-0.2 * u.mV, V_rest=0.1 * u.mV),
    "ALIF": dict(tau=8 * u.ms, tau_a=30 * u.ms, V_th=1. * u.mV, beta=0.4 * u.mV),
}
SYNAPSES = {
    "Expon": dict(tau=4 * u.ms),
    "Alpha": dict(tau=3 * u.ms),
    "DualExpon": dict(tau_decay=6 * u.ms, tau_rise=1.5 * u.ms),
}


def _pair(name, **kwargs):
    """(brainpy.state's object, etprop.nn's object built with the same arguments)."""
    return getattr(bps, name)(N, **kwargs), getattr(etprop.nn, name)(N, **kwargs)


def _states(mod):
    return {k: u.get_mantissa(v.value) for k, v in mod.states(brainstate.HiddenState).items()}


def _drive(seed, T, unit):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (T, B, N), minval=-0.5, maxval=4.0)
    return x * unit


# -- which model a call builds ------------------------------------------------------------------

def test_brainpy_signature_builds_brainpy_model_and_etprop_signature_etprop_model():
    with brainstate.environ.context(dt=DT):
        own = etprop.nn.LIF(N, tau=10 * u.ms)
        assert type(own) is etprop.nn.neurons.LIF and hasattr(own, "v")
        for make in (lambda: etprop.nn.LIF(N, spk_fun=braintools.surrogate.ReluGrad()),
                     lambda: etprop.nn.LIF(N, 1. * u.ohm, 10 * u.ms),        # brainpy.state's positional order
                     lambda: etprop.nn.LIF(N, convention="brainpy"),
                     lambda: etprop.nn.LIF.desc(N, spk_reset="hard")()):
            m = make()
            assert isinstance(m, etprop.nn.LIF) and isinstance(m, bps.Dynamics) and hasattr(m, "V")
        assert not isinstance(etprop.nn.IF(N, convention="brainpy"), etprop.nn.LIF)
        assert isinstance(etprop.nn.ALIF(N, a_initializer=0.), etprop.nn.ALIF)
        assert type(etprop.nn.Expon(N, 5 * u.ms)) is etprop.nn.synapses.Expon   # etprop's (in_size, tau)
        assert isinstance(etprop.nn.Expon(N, "g_ampa"), bps.Dynamics)          # brainpy.state's (in_size, name)
        assert isinstance(etprop.nn.DualExpon(N, amplitude=2.), bps.Dynamics)


def test_conflicting_conventions_are_clear_errors():
    with brainstate.environ.context(dt=DT):
        with pytest.raises(ArgumentError, match="convention='etprop'.*spk_fun"):
            etprop.nn.LIF(N, convention="etprop", spk_fun=braintools.surrogate.ReluGrad())
        with pytest.raises(ArgumentError, match="convention must be 'etprop'.*'brainpy'"):
            etprop.nn.LIF(N, convention="brainstate")
        with pytest.raises(ArgumentError, match="GIF has no brainpy.state signature"):
            etprop.nn.GIF(N, convention="brainpy")
        with pytest.raises(ArgumentError, match="spk_reset must be 'soft'.*'hard'"):
            etprop.nn.LIF(N, spk_reset="zero")
        with pytest.raises(ArgumentError, match="tau_rise != tau_decay"):
            etprop.nn.DualExpon(N, tau_rise=2 * u.ms, tau_decay=2 * u.ms, g_initializer=0.)
        with pytest.raises(ArgumentError, match="tau has shape"):
            etprop.nn.LIF(N, tau=jnp.ones(N + 1) * u.ms, convention="brainpy")
        with pytest.raises(ValueError, match="convention='brainpy'"):  # brainpy.state's defaults: x is a current
            etprop.nn.LIF(N)(jnp.ones(N) * u.mA)


def test_relu_grad_is_braintools_relu_grad():
    x = jnp.array([-1.5, -0.5, 0.0, 0.25, 1.0, 2.0])
    ours, theirs = etprop.nn.surrogate.ReluGrad(), braintools.surrogate.ReluGrad()
    np.testing.assert_array_equal(ours(x), theirs(x))  # fires at 0 as braintools' does
    g = lambda f: jax.vmap(jax.grad(lambda v: f(v)))(x)  # noqa: E731
    np.testing.assert_allclose(g(ours), g(theirs), rtol=1e-6)


# -- dynamics, state for state --------------------------------------------------------------------

@pytest.mark.parametrize("name,reset", [("IF", "soft"), ("LIF", "soft"), ("LIF", "hard"), ("ALIF", "soft"),
                                        ("ALIF", "hard")])
def test_neuron_trajectories_equal_brainpy_state(precision64, name, reset):
    with brainstate.environ.context(dt=DT):
        theirs, ours = _pair(name, spk_reset=reset, **NEURONS[name])
        for m in (theirs, ours):
            brainstate.nn.init_all_states(m, batch_size=B)
        spikes = 0.
        for x in _drive(0, 25, u.mA):
            s_theirs, s_ours = theirs(x), ours(x)
            np.testing.assert_array_equal(s_ours, s_theirs)
            st, so = _states(theirs), _states(ours)
            assert st.keys() == so.keys()
            for k in st:
                np.testing.assert_allclose(so[k], st[k], rtol=1e-12, atol=1e-12)
            spikes += float(jnp.sum(s_ours))
        assert spikes > 5  # the comparison covered resets


@pytest.mark.parametrize("name,normalize", [("Expon", None), ("Alpha", None), ("DualExpon", True),
                                            ("DualExpon", False)])
def test_synapse_trajectories_equal_brainpy_state(precision64, name, normalize):
    kw = dict(SYNAPSES[name], g_initializer=braintools.init.Constant(0. * u.mS))
    if normalize is not None:
        kw["normalize"] = normalize
    with brainstate.environ.context(dt=DT):
        theirs, ours = _pair(name, **kw)
        for m in (theirs, ours):
            brainstate.nn.init_all_states(m, batch_size=B)
        for t, x in enumerate(_drive(1, 25, u.mS)):
            x = x if t % 3 else None  # steps without input too
            np.testing.assert_allclose(u.get_mantissa(ours(x)), u.get_mantissa(theirs(x)), rtol=1e-12, atol=1e-14)
            st, so = _states(theirs), _states(ours)
            for k in st:
                np.testing.assert_allclose(so[k], st[k], rtol=1e-12, atol=1e-14)


# -- in brainpy.state's projections, and the online gradient --------------------------------------

class Comm(brainstate.nn.Module):
    def __init__(self, unit, seed):
        super().__init__()
        self.in_size, self.out_size = (N_IN,), (N,)
        w = jax.random.normal(jax.random.PRNGKey(seed), (N_IN, N)) * 1.5
        self.weight = brainstate.ParamState(w * unit)

    def update(self, x):
        return etprop.matmul(x, self.weight.value)


class Net(brainstate.nn.Module):
    """Poisson spikes -> etprop.matmul -> synapse -> neuron (brainpy.state projections) -> readout.

    ``lib`` is ``bps`` or ``etprop.nn``: the same network with either library's classes."""

    def __init__(self, lib, neuron, syn, proj):
        super().__init__()
        self.neu = getattr(lib, neuron)(N, spk_fun=braintools.surrogate.ReluGrad(), **NEURONS[neuron])
        if proj == "align_post":  # the synapse as a describer, merged into the neuron
            desc = getattr(lib, syn).desc(N, g_initializer=braintools.init.Constant(0. * u.mS), **SYNAPSES[syn])
            self.proj = bps.AlignPostProj(comm=Comm(u.mS, 0), syn=desc, out=bps.CUBA.desc(), post=self.neu)
        elif proj == "align_post_instance":
            inst = getattr(lib, syn)(N, g_initializer=braintools.init.Constant(0. * u.mS), **SYNAPSES[syn])
            self.proj = bps.AlignPostProj(comm=Comm(u.mS, 0), syn=inst, out=bps.CUBA(), post=self.neu)
        elif proj == "delta":
            self.proj = bps.DeltaProj(comm=Comm(u.mV, 0), post=self.neu)
        else:
            self.proj = bps.CurrentProj(comm=Comm(u.mS, 0), out=bps.COBA(E=3. * u.mV), post=self.neu)
        w = jax.random.normal(jax.random.PRNGKey(7), (N, 2))
        self.readout = brainstate.ParamState(w)

    def update(self, x):
        self.proj(x)
        return self.neu() @ self.readout.value


def _mse(out, y):
    return jnp.sum((out - y) ** 2)


def _data(T):
    xs = (jax.random.uniform(jax.random.PRNGKey(3), (T, B, N_IN)) < 0.4).astype(float)
    ys = jax.random.normal(jax.random.PRNGKey(4), (T, B, 2))
    return xs, ys


def _build(lib, neuron, syn, proj):
    with brainstate.environ.context(dt=DT):
        net = Net(lib, neuron, syn, proj)
        brainstate.nn.init_all_states(net, batch_size=B)
    return net


@pytest.mark.parametrize("neuron,syn,proj", [
    ("LIF", "Expon", "align_post"), ("ALIF", None, "current"),
    pytest.param("ALIF", "Alpha", "align_post_instance", marks=pytest.mark.slow),
    pytest.param("IF", "DualExpon", "align_post", marks=pytest.mark.slow),
    pytest.param("LIF", None, "delta", marks=pytest.mark.slow)])
def test_gradients_equal_brainpy_state_and_d_rtrl_is_exact(precision64, neuron, syn, proj):
    """BPTT through etprop's build equals BPTT through brainpy.state's (same weights), and D-RTRL's
    online gradient on etprop's build equals both (a feed-forward layer: exact)."""
    T = 20
    xs, ys = _data(T)
    with brainstate.environ.context(dt=DT):
        g_theirs, l_theirs = bptt_reference(_build(bps, neuron, syn, proj), xs, ys, _mse, dt=DT)
        g_ours, l_ours = bptt_reference(_build(etprop.nn, neuron, syn, proj), xs, ys, _mse, dt=DT)
        assert g_theirs.keys() == g_ours.keys()
        assert abs(float(l_ours - l_theirs)) <= 1e-10 * abs(float(l_theirs))
        assert rel_err(g_ours, g_theirs) < 1e-10
        learner = etprop.compile(_build(etprop.nn, neuron, syn, proj), etprop.D_RTRL, xs[0], batch_size=B)
        g_online, _ = learner.etrace_grad(xs, ys, _mse)
    assert float(jnp.max(jnp.abs(u.get_mantissa(g_ours["proj.comm.weight"])))) > 0  # a nonzero check
    assert rel_err({k: g_online[k] for k in g_ours}, g_ours) < 1e-8
