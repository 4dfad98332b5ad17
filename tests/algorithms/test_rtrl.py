"""RTRL is exact on any model: equal to BPTT (float64) with dense recurrence and several groups."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import etprop
from tests.algorithms.influence_models import TwoLayer, VanillaRNN, batched, cos, data, grads_of, rel_err
from tests.algorithms.models import ALIF, DenseGRU, mse

MODELS = {
    "vanilla_rnn": (lambda: VanillaRNN(3, 5, 2), 3),
    "dense_gru": (lambda: DenseGRU(3, 4, 2), 3),
    "two_layer": (lambda: TwoLayer(3, 4, 3, 2), 3),
    "alif": (lambda: ALIF(3, 4, 2), 3),
}


CASES = [("vanilla_rnn", None), ("dense_gru", 2), ("two_layer", 2)]
SLOW_CASES = [("vanilla_rnn", 2), ("alif", None), ("alif", 3), ("two_layer", None)]


@pytest.mark.parametrize("name,B", CASES + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW_CASES])
def test_rtrl_equals_bptt(x64, name, B):
    make, n_in = MODELS[name]
    xs, ys = data(n_in, 2, T=8, B=B, scale=1.5)
    g, loss, learner = grads_of(make, etprop.RTRL, xs, ys, B)
    g_b, loss_b, _ = grads_of(make, etprop.BPTT, xs, ys, B)
    assert np.isclose(loss, loss_b, rtol=1e-12)
    assert rel_err(g, g_b) <= 1e-6, learner.report()
    for k, v in g_b.items():  # every parameter carries a nonzero gradient (nothing passes trivially)
        assert float(jnp.max(jnp.abs(flat_leaf(v)))) > 0, k
    if name == "vanilla_rnn":
        # and a model where the diagonal approximation really differs
        g_d, _, _ = grads_of(make, etprop.D_RTRL, xs, ys, B)
        assert rel_err(g_d, g_b) > 1e-3


def flat_leaf(v):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(v)])


def test_windows_step_and_call_agree(x64):
    """window > 1, step(), and learner(x) under brainstate grad all give the exact gradient."""
    make, n_in = MODELS["two_layer"]
    xs, ys = data(n_in, 2, T=5, B=None, scale=1.5)
    g_b, _, _ = grads_of(make, etprop.BPTT, xs, ys)
    learner = etprop.compile(make(), etprop.RTRL, xs[0])
    g_w, _ = learner.etrace_grad(xs, ys, mse, window=3)  # 5 = 3 + 2: a remainder window too
    assert rel_err(g_w, g_b) <= 1e-6
    mask = jnp.array([0.0, 1.0, 0.5, 0.0, 2.0])  # weighted step losses
    bptt = etprop.compile(make(), etprop.BPTT, xs[0])
    learner.reset()
    assert rel_err(learner.etrace_grad(xs, ys, mse, mask=mask)[0], bptt.etrace_grad(xs, ys, mse, mask=mask)[0]) <= 1e-6
    learner.reset()
    total = None
    for t in range(5):
        _, g, _ = learner.step(xs[t], ys[t], mse)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    assert rel_err(total, g_b) <= 1e-6
    learner.reset()
    states = learner.param_states()

    @bs.transform.jit
    def grad_step(x, y):
        return bs.transform.grad(lambda: mse(learner(x), y), states)()

    total = None
    for t in range(5):
        g = grad_step(xs[t], ys[t])
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    assert rel_err(total, g_b) <= 1e-6


def test_train_online_equals_manual_updates(x64):
    make, n_in = MODELS["vanilla_rnn"]
    xs, ys = data(n_in, 2, T=5, B=2)
    opt = optax.sgd(0.05)
    a = etprop.compile(batched(make(), 2), etprop.RTRL, xs[0], batch_size=2)
    b = etprop.compile(batched(make(), 2), etprop.RTRL, xs[0], batch_size=2)
    _, losses = a.train_online(xs, ys, mse, opt)
    p0 = b.params()
    st = opt.init(p0)
    for t in range(5):
        _, g, loss = b.step(xs[t], ys[t], mse)
        upd, st = opt.update(g, st, b.params())
        b.set_params(optax.apply_updates(b.params(), upd))
        assert np.isclose(losses[t], loss, rtol=1e-10)
    assert rel_err(a.params(), b.params()) < 1e-10
    assert rel_err(b.params(), p0) > 1e-4  # the parameters did move


def test_reset_and_report(x64):
    make, n_in = MODELS["two_layer"]
    xs, ys = data(n_in, 2, T=4, B=None)
    learner = etprop.compile(make(), etprop.RTRL, xs[0])
    g1, l1 = learner.etrace_grad(xs, ys, mse)
    assert float(jnp.max(jnp.abs(learner.etrace.value))) > 0
    learner.reset()
    assert float(jnp.max(jnp.abs(learner.etrace.value))) == 0
    g2, l2 = learner.etrace_grad(xs, ys, mse)
    assert float(l1) == float(l2) and rel_err(g1, g2) == 0
    rep = learner.report()
    # N = 4 + 3 hidden numbers; theta = w1 (12) + a (4) + w2 (12) + u2 (9) = 37; w_out does not reach h
    assert "N = 7" in rep and "7 x 37 = 259" in rep
    assert "w_out (7, 2): does not reach the hidden state" in rep


def test_too_large_model_is_refused():
    # |theta| = w_in 2*4 + w_hh 4*4 + b 4 = 28, N = 4
    with pytest.raises(etprop.ArgumentError, match=r"\|theta\| x N = 28 x 4 = 112.*D_RTRL.*SnAp"):
        etprop.compile(VanillaRNN(2, 4, 1), etprop.RTRL, jnp.ones(2), max_influence_entries=111)
    learner = etprop.compile(VanillaRNN(2, 4, 1), etprop.RTRL, jnp.ones(2), max_influence_entries=112)
    assert learner.layout.N * learner.layout.n_theta == 112
    assert etprop.RTRL.default_max_influence_entries == 2 ** 22
    for bad in (0, -1, 1.5, True):
        with pytest.raises(etprop.ArgumentError, match="max_influence_entries"):
            etprop.RTRL(VanillaRNN(2, 3, 1), max_influence_entries=bad)


@pytest.mark.slow
def test_float32_runs_and_tracks_float64():
    """float32 (the default) is close to the float64 oracle: no silent miscompile of the update."""
    make, n_in = MODELS["dense_gru"]
    xs, ys = data(n_in, 2, T=6, B=2)
    g32, _, _ = grads_of(make, etprop.RTRL, xs, ys, 2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g32))
    g_b, _, _ = grads_of(make, etprop.BPTT, xs, ys, 2)
    assert cos(g32, g_b) > 1 - 1e-5 and rel_err(g32, g_b) < 1e-3
