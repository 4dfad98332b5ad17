"""etprop.nn spiking neurons, surrogates and the recurrent spiking layer.

Exactness: a feed-forward layer (input etprop.matmul -> neuron -> plain readout) has a
block-diagonal hidden Jacobian, so D-RTRL's online gradient must equal BPTT's.
"""

import brainstate as bs
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop import nn as enn
from etprop.nn import surrogate as sg
from tests.conftest import plain_cos as _cos
from tests.nn.conftest import FF, check_exact, count_spikes, data, grads


@pytest.fixture(autouse=True)
def _dt():
    with bs.environ.context(dt=1.0):
        yield


# -- surrogates -----------------------------------------------------------------------------

SURROGATES = {
    "sigmoid": (sg.Sigmoid(4.0), lambda x: 4.0 * jax.nn.sigmoid(4.0 * x) * (1 - jax.nn.sigmoid(4.0 * x)),
                lambda x: sg.sigmoid(x, 4.0)),
    "fast_sigmoid": (sg.FastSigmoid(10.0), lambda x: 1.0 / (1.0 + 10.0 * jnp.abs(x)) ** 2,
                     lambda x: sg.fast_sigmoid(x, 10.0)),
    "triangle": (sg.Triangle(2.0, 0.3), lambda x: 0.3 * jnp.maximum(0.0, 1.0 - 2.0 * jnp.abs(x)),
                 lambda x: sg.triangle(x, 2.0, 0.3)),
    "arctan": (sg.Arctan(2.0), lambda x: 1.0 / (1.0 + (jnp.pi * x) ** 2), lambda x: sg.arctan(x, 2.0)),
}


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_forward_and_derivative(x64, name):
    f, formula, functional = SURROGATES[name]
    x = jnp.array([-2.0, -0.7, -0.3, -0.01, 0.0, 0.01, 0.2, 0.45, 1.3])
    np.testing.assert_array_equal(f(x), (x > 0).astype(x.dtype))
    np.testing.assert_array_equal(functional(x), f(x))
    assert f(x).dtype == x.dtype
    d = jax.vmap(jax.grad(f))(x)
    np.testing.assert_allclose(d, formula(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jax.vmap(jax.grad(functional))(x), d, rtol=1e-12)
    # forward-mode and jit agree
    _, t = jax.jvp(jax.jit(f), (x,), (jnp.ones_like(x),))
    np.testing.assert_allclose(t, d, rtol=1e-12)


def test_surrogate_api():
    assert sg.FastSigmoid(10.0) == sg.FastSigmoid(10) and hash(sg.FastSigmoid(10.0)) == hash(sg.FastSigmoid(10))
    assert float(sg.Sigmoid()(u.Quantity(0.5))) == 1.0  # a dimensionless quantity is fine
    with pytest.raises(ValueError, match="dimensionless"):
        sg.FastSigmoid()(1.0 * u.mV)
    with pytest.raises(TypeError):
        sg.FastSigmoid(jnp.array(2.0))
    assert float(sg.heaviside(jnp.array(0.0))) == 0.0


# -- exactness of feed-forward neuron layers -------------------------------------------------

NEURONS = {
    "if": lambda: [enn.IF(6, tau=5.0)],
    "lif": lambda: [enn.LIF(6, tau=10.0, spike_fn=sg.Triangle(1.0, 0.5))],
    "lif_zero_refractory_train_tau": lambda: [enn.LIF(6, tau=10.0, reset="zero", tau_ref=2.0, train_tau=True)],
    "alif": lambda: [enn.ALIF(6, tau=10.0, tau_a=30.0, beta=0.3, train_tau=True, train_beta=True,
                              spike_fn=sg.Arctan(2.0))],
    "gif": lambda: [enn.GIF(6, tau=10.0, tau_I1=3.0, tau_I2=20.0, tau_theta=15.0, a=0.2, A1=0.5, A2=-0.3,
                            R1=0.5, V_th_reset=1.2, train_tau=True, spike_fn=sg.Sigmoid(4.0))],
}
_N_BATCHED = {"gif"}
# states per position of the neuron's hidden group
_GROUP_S = {"if": 1, "lif": 1, "lif_zero_refractory_train_tau": 1, "alif": 2, "gif": 4}


@pytest.mark.parametrize("name,B", [(n, None) for n in sorted(NEURONS)] + [(n, 2) for n in sorted(_N_BATCHED)])
def test_neuron_d_rtrl_equals_bptt(x64, name, B):
    make = lambda: FF(4, 6, 2, NEURONS[name])
    learner, xs = check_exact(make, B, offset=0.5)
    assert count_spikes(make, xs, B) >= 5  # the reset path is exercised
    # every neuron parameter is traced into the neuron's group
    traced = {r.leaf_name for r in learner.graph.relations}
    own = {k for k in learner.params() if k.startswith("layers.")}
    assert traced == {"w"} | own
    assert "w_out" in learner.graph.untraced
    (grp,) = learner.graph.groups
    assert grp.num_states == _GROUP_S[name]


def test_refractory_period(x64):
    n = enn.LIF(1, tau=10.0, tau_ref=3.0)
    spikes = [float(n.update(jnp.array([50.0]))[0]) for _ in range(12)]
    idx = [i for i, s in enumerate(spikes) if s]
    assert idx and all(b - a >= 4 for a, b in zip(idx, idx[1:]))  # 3 silent steps after each spike
    free = enn.LIF(1, tau=10.0)
    assert sum(float(free.update(jnp.array([50.0]))[0]) for _ in range(12)) > len(idx)


# -- units ------------------------------------------------------------------------------------

def _lif_mv(**kw):
    return enn.LIF(3, tau=10.0 * u.ms, V_th=-50.0 * u.mV, V_reset=-60.0 * u.mV, V_rest=-65.0 * u.mV, **kw)


def test_lif_units_match_hand_computation(x64):
    I = jnp.array([100.0, 200.0, 300.0])  # pA
    R = 100.0  # Mohm: R * I = 10, 20, 30 mV
    with bs.environ.context(dt=0.1 * u.ms):
        n_cur = _lif_mv(R=R * u.Mohm)
        n_mv = _lif_mv()  # input directly in mV
        d = np.exp(-0.1 / 10.0)
        v = np.full(3, -65.0)
        n_spk = 0
        for _ in range(120):
            s1 = n_cur.update(I * u.pA)
            s2 = n_mv.update(R * I * 1e-6 * u.volt)  # 0.01 V = 10 mV: converted to mV
            v = -65.0 + d * (v + 65.0) + (1 - d) * R * I * 1e-3  # Mohm * pA = 1e-3 mV
            s = (v > -50.0).astype(float)
            v = v - s * 10.0
            n_spk += s.sum()
            np.testing.assert_array_equal(s1, s)
            np.testing.assert_array_equal(s2, s)
        assert n_spk > 0
        for n in (n_cur, n_mv):
            assert u.get_unit(n.v.value) == u.mV
            np.testing.assert_allclose(n.v.value.to_decimal(u.mV), v, rtol=1e-10)
        with pytest.raises(ValueError, match="R \\* x"):
            n_mv.update(jnp.ones(3))  # a dimensionless input to a neuron in mV
    with pytest.raises(ValueError, match="dimensionless"):
        enn.LIF(3, tau=10.0 * u.ms).update(jnp.ones(3))  # dt = 1.0 (no unit) vs tau in ms


def test_lif_in_mv_d_rtrl_equals_bptt(x64):
    """Hidden states carrying mV and inputs in pA: the online gradient is still exact."""
    with bs.environ.context(dt=0.5 * u.ms):
        make = lambda: FF(4, 5, 2, lambda: [enn.LIF(5, tau=5.0 * u.ms, V_th=-50.0 * u.mV, V_reset=-60.0 * u.mV,
                                                     V_rest=-65.0 * u.mV, R=50.0 * u.Mohm, train_tau=True)],
                          w_scale=300.0, in_unit=u.pA, v_norm=lambda v: (v + 55.0 * u.mV) / (5.0 * u.mV))
        learner, xs = check_exact(make, None, T=20, offset=0.5)
        assert count_spikes(make, xs) >= 5
        assert u.get_unit(learner.model.layers[0].v.value) == u.mV


# -- batching and state handling ----------------------------------------------------------------

def test_states_batched_and_reset(x64):
    model = FF(4, 6, 2, lambda: [enn.LIF(6, tau=10.0, tau_ref=2.0), enn.ALIF(6, tau=10.0, tau_a=30.0),
                                 enn.GIF(6, tau=10.0, tau_I1=3.0, tau_I2=20.0, tau_theta=15.0)])
    assert model.layers[0].v.value.shape == (6,)  # usable without init
    bs.nn.init_all_states(model, batch_size=3)
    for layer in model.layers:
        for st in layer.states(bs.HiddenState).values():
            assert st.value.shape == (3, 6)
    assert model.layers[0].refractory.value.shape == (3, 6)
    xs, _ = data(4, 2, 4, 3, offset=1.0)
    for t in range(4):
        model(xs[t])
    assert float(jnp.max(jnp.abs(model.layers[1].v.value))) > 0
    bs.nn.reset_all_states(model, batch_size=3)
    assert float(jnp.max(jnp.abs(model.layers[1].v.value))) == 0
    np.testing.assert_array_equal(model.layers[2].theta.value, jnp.ones((3, 6)))


# -- recurrent spiking layer --------------------------------------------------------------------

class RecNet(bs.nn.Module):
    """SpikingRecurrentLayer -> plain readout of (spikes + tanh(v))."""

    def __init__(self, neuron, dale=None, seed=0, n_in=4, n_rec=8, n_out=2, **kw):
        super().__init__()
        self.layer = enn.SpikingRecurrentLayer(n_in, n_rec, neuron, dale=dale, seed=seed, in_scale=4.0,
                                               rec_scale=4.0, tau=4.0, **kw)
        self.w_out = bs.ParamState(jax.random.normal(jax.random.key(seed + 7), (n_rec, n_out)) * 0.5)

    def update(self, x):
        s = self.layer(x)
        return (s + jnp.tanh(self.layer.neuron.v.value)) @ self.w_out.value


def _traced_cos(g, ref):
    keys = ("layer.w_in", "layer.w_rec")
    return _cos({k: g[k] for k in keys}, {k: ref[k] for k in keys})


# Cosine to BPTT of the traced weights (w_in, w_rec concatenated) measured on these nets
# (T=20, B=4, data seed 1; 31 % / 21 % of the neurons spike per step), float64 on CPU:
#   lif, no Dale:    D-RTRL 0.9955, ES-D-RTRL (decay 0.9) 0.9926
#   alif, Dale 0.75: D-RTRL 0.9988, ES-D-RTRL (decay 0.9) 0.9941
# (data seed 2: 0.9984 / 0.9942 and 0.9994 / 0.9881; lif+Dale 0.9993 / 0.9930, alif 0.9991 / 0.9965.)
# Floors below. The readout w_out (plain matmul) is exact in all.
REC = {("lif", None): (0.99, 0.985), ("alif", 0.75): (0.995, 0.985)}


@pytest.mark.parametrize("neuron,dale", sorted(REC, key=str))
def test_recurrent_layer_cosine_to_bptt(x64, neuron, dale):
    kw = dict(tau_a=30.0, beta=0.3) if neuron == "alif" else {}
    make = lambda: RecNet(neuron, dale, **kw)
    T, B = 20, 4
    xs, ys = data(4, 2, T, B, offset=0.5)
    g_bp, _, _ = grads(make, etprop.BPTT, xs, ys, B)
    g_d, _, _ = grads(make, etprop.D_RTRL, xs, ys, B)
    g_es, _, _ = grads(make, etprop.ES_D_RTRL, xs, ys, B, decay_or_rank=0.9)
    m = make()
    bs.nn.init_all_states(m, batch_size=B)
    rate = sum(float(jnp.mean(m.layer(xs[t]))) for t in range(T)) / T
    assert 0.05 < rate < 0.7, rate
    c_d, c_es = _traced_cos(g_d, g_bp), _traced_cos(g_es, g_bp)
    floor_d, floor_es = REC[(neuron, dale)]
    assert c_d >= floor_d and c_es >= floor_es, (c_d, c_es)
    assert c_d < 1 - 1e-6  # recurrence makes D-RTRL an approximation here
    np.testing.assert_allclose(g_d["w_out"], g_bp["w_out"], rtol=1e-8)


def test_recurrent_layer_relations_and_constraints(x64):
    xs, _ = data(4, 2, 2, None)
    learner = etprop.compile(RecNet("alif", dale=0.75, tau_a=30.0), etprop.D_RTRL, xs[0])
    g = learner.graph
    (grp,) = g.groups
    assert set(grp.names) == {"layer.z", "layer.neuron.v", "layer.neuron.a"} and grp.num_states == 3
    assert {(r.leaf_name, r.group) for r in g.relations} == {("layer.w_in", 0), ("layer.w_rec", 0)}
    assert "w_out" in g.untraced
    rep = learner.report()
    assert "layer.w_in (4, 8): traced via matmul" in rep and "layer.w_rec (8, 8): traced via matmul" in rep
    assert "w_out (8, 2): not traced" in rep
    # Dale's law and no self-connections hold for any raw weight
    layer = learner.model.layer
    layer.w_rec.value = jax.random.normal(jax.random.key(3), (8, 8))
    w = np.asarray(layer.effective_w_rec)
    assert np.all(np.diag(w) == 0)
    assert np.all(w[:6] >= 0) and np.all(w[6:] <= 0) and layer.n_exc == 6
    # without Dale, only the diagonal is masked
    plain = enn.SpikingRecurrentLayer(3, 5, "lif", seed=0)
    w = np.asarray(plain.effective_w_rec)
    assert np.all(np.diag(w) == 0) and np.any(w < 0) and np.any(w > 0)
    with pytest.raises(ValueError, match="neuron"):
        enn.SpikingRecurrentLayer(3, 5, "hh")
