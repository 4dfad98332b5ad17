"""D-RTRL equals BPTT where the hidden Jacobian is block-diagonal; per-step signal, finite windows."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import etprop
from tests.algorithms.models import ALIF, DenseGRU, ElementwiseRNN, LIFExpSyn, mse
from tests.conftest import plain_cos as _cos, plain_rel_err as _rel_err, seq_data as _data, zero_init_grads as _grads


MODELS = {
    "elementwise_rnn": (lambda: ElementwiseRNN(3, 6, 2), 3, 2),
    "lif_exp_synapse": (lambda: LIFExpSyn(4, 6, 2), 4, 2),
    "alif": (lambda: ALIF(4, 6, 2), 4, 2),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("B", [None, 3])
def test_d_rtrl_equals_bptt(x64, name, B):
    make, n_in, n_out = MODELS[name]
    xs, ys = _data(n_in, n_out, T=12, B=B, scale=1.5)
    g_online, l_online, learner = _grads(make, etprop.D_RTRL, xs, ys, B)
    g_bptt, l_bptt, _ = _grads(make, etprop.BPTT, xs, ys, B)
    assert np.isclose(l_online, l_bptt, rtol=1e-12)
    assert _rel_err(g_online, g_bptt) <= 1e-6, learner.report()
    assert learner.approximations() == {}, learner.report()  # the report calls it exact
    # the test must not pass trivially: traces carried real history
    assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(g_bptt))


def test_spiking_models_actually_spike(x64):
    """The LIF/ALIF exactness runs exercise the reset path (otherwise they would prove less)."""
    xs, _ = _data(4, 2, T=12, B=None, scale=1.5)
    m = LIFExpSyn(4, 6, 2)
    learner = etprop.compile(m, etprop.D_RTRL, xs[0])
    outs = []
    for t in range(12):
        learner(xs[t])
        outs.append(m.v.value)
    # after a spike v is reset by 1: some v must have crossed the threshold
    m2 = LIFExpSyn(4, 6, 2)
    v = jnp.zeros(6); g = jnp.zeros(6); n = 0
    for t in range(12):
        g = 0.8 * g + xs[t] @ m2.w.value["weight"] + m2.w.value["bias"]
        v = 0.9 * v + g
        n += int(jnp.sum(v > 1.0))
        v = v - (v > 1.0)
    assert n > 0


def test_groups_and_relations_found(x64):
    learner = etprop.compile(ALIF(4, 6, 2), etprop.D_RTRL, jnp.ones(4))
    g = learner.graph
    assert [grp.names for grp in g.groups] == [("b", "v")]
    traced = {r.leaf_name for r in g.relations}
    assert traced == {"w", "beta"}
    assert "w_out" in g.untraced
    rep = learner.report()
    assert "S=2" in rep and "not traced" in rep and "bytes" in rep


def test_readout_gets_exact_instantaneous_gradient(x64):
    """A parameter outside any relation gets dL/dtheta through the current step only."""
    make, n_in, n_out = MODELS["lif_exp_synapse"]
    xs, ys = _data(n_in, n_out, T=6, B=None)
    g_online, _, _ = _grads(make, etprop.ES_D_RTRL, xs, ys)
    # reference: BPTT where the readout's gradient has no history (it is memoryless here)
    g_bptt, _, _ = _grads(make, etprop.BPTT, xs, ys)
    np.testing.assert_allclose(g_online["w_out"], g_bptt["w_out"], rtol=1e-10)
    assert float(jnp.max(jnp.abs(g_online["w_out"]))) > 0


def test_untraced_parameter_is_never_zero(x64):
    """GRU reset-gate weight reaches h only through another ETP operator: it still learns."""
    xs, ys = _data(3, 2, T=8, B=None)
    g, _, learner = _grads(lambda: DenseGRU(3, 5, 2), etprop.D_RTRL, xs, ys)
    assert "wr" in learner.graph.untraced
    for k, v in g.items():
        assert float(jnp.max(jnp.abs(v))) > 0, k


@pytest.mark.parametrize("B", [None, 2])
def test_float32_matches_float64_above_64_inputs(B):
    """Regression for the XLA:CPU float32 fused-reduce miscompile (S=2 group, I > 64)."""
    make = lambda: LIFExpSyn(80, 16, 2, seed=3)
    xs, ys = _data(80, 2, T=5, B=B, scale=0.3)
    g32, _, _ = _grads(make, etprop.D_RTRL, xs, ys, B)
    weights = make().states(bs.ParamState)
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        to64 = lambda a: jnp.asarray(a, jnp.float64)
        model = make()
        for path, st_ in model.states(bs.ParamState).items():
            st_.value = jax.tree.map(to64, weights[path].value)
        for s in (model.g, model.v):
            s.value = jnp.zeros(((B,) if B else ()) + (16,), jnp.float64)
        learner = etprop.compile(model, etprop.D_RTRL, to64(xs[0]), batch_size=B)
        g64, _ = learner.etrace_grad(to64(xs), to64(ys), mse)
    finally:
        jax.config.update("jax_enable_x64", prev)
    w32, w64 = np.asarray(g32["w"]["weight"]), np.asarray(g64["w"]["weight"])
    np.testing.assert_allclose(w32[64:], w64[64:], rtol=2e-3, atol=2e-4 * np.abs(w64).max())


def test_batch_size_matches_per_sample_loop(x64):
    make, n_in, n_out = MODELS["alif"]
    xs, ys = _data(n_in, n_out, T=6, B=3)
    g_batch, l_batch, _ = _grads(make, etprop.D_RTRL, xs, ys, B=3)
    per = [_grads(make, etprop.D_RTRL, xs[:, b], ys[:, b])[0] for b in range(3)]
    mean = jax.tree.map(lambda *a: sum(a) / 3, *per)
    assert _rel_err(g_batch, mean) < 1e-10


def test_step_by_step_equals_sequence_driver(x64):
    make, n_in, n_out = MODELS["elementwise_rnn"]
    xs, ys = _data(n_in, n_out, T=5, B=None)
    g_seq, _, _ = _grads(make, etprop.D_RTRL, xs, ys)
    learner = etprop.compile(make(), etprop.D_RTRL, xs[0])
    total = None
    for t in range(5):
        _, g, _ = learner.step(etprop.SingleStepData(xs[t]), ys[t], mse)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    assert _rel_err(total, g_seq) < 1e-12


@settings(max_examples=5, deadline=None)
@given(n_in=st.integers(1, 5), n_hid=st.integers(1, 6), T=st.integers(1, 6), seed=st.integers(0, 1000))
def test_d_rtrl_identity_property(n_in, n_hid, T, seed):
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        xs, ys = _data(n_in, 2, T=T, B=None, seed=seed)
        make = lambda: ElementwiseRNN(n_in, n_hid, 2, seed=seed)
        g_online, _, _ = _grads(make, etprop.D_RTRL, xs, ys)
        g_bptt, _, _ = _grads(make, etprop.BPTT, xs, ys)
        assert _rel_err(g_online, g_bptt) <= 1e-6
    finally:
        jax.config.update("jax_enable_x64", prev)


# Approximations: cosine to BPTT measured on these models (T=20, B=4, seed 1): ES-D-RTRL
# (alpha 0.9) 0.9993 / 0.9983 / 0.9988 / 0.9676, D-RTRL on the dense GRU 0.9884. Floors below.
APPROX = {
    ("elementwise_rnn", "es"): 0.995, ("lif_exp_synapse", "es"): 0.99, ("alif", "es"): 0.99,
    ("dense_gru", "es"): 0.95, ("dense_gru", "d_rtrl"): 0.98,
}
_APPROX_MODELS = dict(MODELS, dense_gru=(lambda: DenseGRU(3, 8, 2), 3, 2))


@pytest.mark.parametrize("name,algo", sorted(APPROX))
def test_approximation_cosine_floor(x64, name, algo):
    make, n_in, n_out = _APPROX_MODELS[name]
    xs, ys = _data(n_in, n_out, T=20, B=4, scale=1.5)
    if algo == "es":
        g, _, learner = _grads(make, etprop.ES_D_RTRL, xs, ys, 4, decay_or_rank=0.9)
    else:
        g, _, learner = _grads(make, etprop.D_RTRL, xs, ys, 4)
    g_bptt, _, _ = _grads(make, etprop.BPTT, xs, ys, 4)
    assert _cos(g, g_bptt) >= APPROX[(name, algo)]
    assert learner.approximations(), learner.report()  # and the report says it approximates


def test_reset_returns_hidden_and_traces_to_start(x64):
    make, n_in, n_out = MODELS["alif"]
    xs, ys = _data(n_in, n_out, T=5, B=None, scale=1.5)
    learner = etprop.compile(make(), etprop.D_RTRL, xs[0])
    g1, l1 = learner.etrace_grad(xs, ys, mse)
    assert float(jnp.max(jnp.abs(learner.model.v.value))) > 0
    learner.reset()
    assert float(jnp.max(jnp.abs(learner.model.v.value))) == 0
    assert all(float(jnp.max(jnp.abs(t))) == 0 for t in jax.tree.leaves(learner.etrace.value))
    g2, l2 = learner.etrace_grad(xs, ys, mse)
    assert float(l1) == float(l2) and _rel_err(g1, g2) == 0
