"""e-prop: symmetric feedback is D-RTRL; random feedback is the readout transpose swapped for B;
the low-pass filter advances with the forward step and is what meets the learning signal."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from tests.algorithms.models import ALIF, LIFExpSyn, mse


def _data(n_in, n_out, T, B, seed=1, scale=1.5):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (T, B, n_in)) * scale, jax.random.normal(k2, (T, B, n_out))


def _model(cls, B, *args, **kw):
    m = cls(*args, **kw)
    for st in m.states(bs.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    return m


def _learner(model, algo, x0, B, **opts):
    return etprop.compile(model, algo, x0, batch_size=B, **opts)


def _rel_err(a, b):
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _linear_loss(out, y):
    """dL/dout = y whatever the output: makes the error independent of the readout weight."""
    return jnp.sum(out * y)


def test_symmetric_no_filter_equals_d_rtrl(x64, cls=ALIF):
    xs, ys = _data(4, 2, T=10, B=3)
    g_e, _ = _learner(_model(cls, 3, 4, 6, 2), etprop.EProp, xs[0], 3).etrace_grad(xs, ys, mse)
    g_d, _ = _learner(_model(cls, 3, 4, 6, 2), etprop.D_RTRL, xs[0], 3).etrace_grad(xs, ys, mse)
    assert _rel_err(g_e, g_d) < 1e-12
    assert all(float(jnp.max(jnp.abs(v))) > 0 for v in jax.tree.leaves(g_e))


def test_feedback_equal_to_readout_transpose_is_symmetric(x64):
    """B := W_out^T must reproduce the symmetric rule: the injection point is the readout transpose."""
    xs, ys = _data(4, 3, T=8, B=2)
    m = _model(ALIF, 2, 4, 6, 3)
    learner = _learner(m, etprop.EProp, xs[0], 2, feedback=jnp.asarray(m.w_out.value).T)
    g_e, _ = learner.etrace_grad(xs, ys, mse)
    g_d, _ = _learner(_model(ALIF, 2, 4, 6, 3), etprop.D_RTRL, xs[0], 2).etrace_grad(xs, ys, mse)
    assert _rel_err(g_e, g_d) < 1e-12


def test_random_feedback_replaces_readout_transpose(x64, n_out=3):
    """With a loss linear in the output (error independent of W_out), random e-prop's traced-weight
    gradient equals D-RTRL's on the same model whose readout is B^T; the readout keeps its exact
    gradient. Holds for any readout width (n_out != n_hidden)."""
    n_hid = 6
    xs, ys = _data(4, n_out, T=8, B=2)
    learner = _learner(_model(ALIF, 2, 4, n_hid, n_out), etprop.EProp, xs[0], 2, feedback="random", seed=3)
    B = learner.feedback_matrix.value
    assert B.shape == (n_out, n_hid)
    g_r, _ = learner.etrace_grad(xs, ys, _linear_loss)

    swapped = _model(ALIF, 2, 4, n_hid, n_out)
    swapped.w_out.value = B.T
    g_swap, _ = _learner(swapped, etprop.D_RTRL, xs[0], 2).etrace_grad(xs, ys, _linear_loss)
    g_sym, _ = _learner(_model(ALIF, 2, 4, n_hid, n_out), etprop.D_RTRL, xs[0], 2).etrace_grad(xs, ys, _linear_loss)
    for k in ("w", "beta"):
        np.testing.assert_allclose(g_r[k], g_swap[k], rtol=1e-10, atol=1e-12)
        assert not np.allclose(g_r[k], g_sym[k], rtol=1e-3)  # really a different signal
    np.testing.assert_allclose(g_r["w_out"], g_sym["w_out"], rtol=1e-10)  # readout: exact gradient


def test_random_feedback_deterministic_per_seed_and_correlated(x64):
    xs, ys = _data(4, 2, T=8, B=2)
    def run(**o):
        learner = _learner(_model(LIFExpSyn, 2, 4, 6, 2), etprop.EProp, xs[0], 2, **o)
        return learner, learner.etrace_grad(xs, ys, mse)[0]

    (l1, g1), (l2, g2) = run(feedback="random", seed=7), run(feedback="random", seed=7)
    assert _rel_err(g1, g2) == 0.0 and np.array_equal(l1.feedback_matrix.value, l2.feedback_matrix.value)
    b8 = _learner(_model(LIFExpSyn, 2, 4, 6, 2), etprop.EProp, xs[0], 2, feedback="random", seed=8).feedback_matrix
    assert b8.value.shape == (2, 6) and not np.allclose(b8.value, l1.feedback_matrix.value)
    # a feedback matrix near W_out^T gives a gradient near the symmetric one: the signal is continuous in B
    m = _model(LIFExpSyn, 2, 4, 6, 2)
    w_t = jnp.asarray(m.w_out.value).T
    near = w_t + 0.05 * jnp.std(w_t) * jax.random.normal(jax.random.key(0), w_t.shape)
    g_near = _learner(m, etprop.EProp, xs[0], 2, feedback=near).etrace_grad(xs, ys, mse)[0]
    g_sym = run()[1]
    a, b = np.ravel(g_near["w"]["weight"]), np.ravel(g_sym["w"]["weight"])
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert 0.95 < cos < 1 - 1e-9


def test_random_feedback_fixed_across_calls(x64):
    xs, ys = _data(4, 2, T=4, B=2)
    learner = _learner(_model(ALIF, 2, 4, 6, 2), etprop.EProp, xs[0], 2, feedback="random", seed=1)
    B0 = np.asarray(learner.feedback_matrix.value)
    g1, _ = learner.etrace_grad(xs, ys, mse)
    learner.reset()
    g2, _ = learner.etrace_grad(xs, ys, mse)
    assert np.array_equal(B0, learner.feedback_matrix.value) and _rel_err(g1, g2) == 0.0
    assert "B (2, 6) fixed" in learner.report()


def test_filter_advances_with_forward_step(x64):
    """etrace_evolve (no gradients) advances the filtered trace: ebar^t = kappa ebar^{t-1} + e^t,
    with e^t D-RTRL's trace, step by step."""
    kappa = 0.7
    xs, _ = _data(4, 2, T=6, B=2)
    ep = _learner(_model(ALIF, 2, 4, 6, 2), etprop.EProp, xs[0], 2, kappa=kappa)
    dr = _learner(_model(ALIF, 2, 4, 6, 2), etprop.D_RTRL, xs[0], 2)
    assert all(float(jnp.max(jnp.abs(f))) == 0 for f in jax.tree.leaves(ep.filter_state()))
    want = jax.tree.map(jnp.zeros_like, dr.etrace.value["rel"])
    for t in range(6):
        ep.etrace_evolve(xs[t:t + 1])
        dr.etrace_evolve(xs[t:t + 1])
        want = jax.tree.map(lambda f, e: kappa * f + e, want, dr.etrace.value["rel"])
    got = ep.filter_state()
    assert float(jnp.max(jnp.abs(got[0][0]))) > 0
    assert _rel_err(got, want) < 1e-12


def test_filtered_trace_meets_learning_signal(x64):
    """After a warm-up, one e-prop step equals a D-RTRL step whose trace is e-prop's filtered one."""
    xs, ys = _data(4, 2, T=6, B=2)
    ep = _learner(_model(ALIF, 2, 4, 6, 2), etprop.EProp, xs[0], 2, kappa=0.6)
    dr = _learner(_model(ALIF, 2, 4, 6, 2), etprop.D_RTRL, xs[0], 2)
    ep.etrace_evolve(xs[:5])
    dr.etrace_evolve(xs[:5])
    dr.etrace.value = {"rel": ep.filter_state(), "count": dr.etrace.value["count"]}
    _, g_e, _ = ep.step(xs[5], ys[5], mse)
    _, g_d, _ = dr.step(xs[5], ys[5], mse)
    assert _rel_err(g_e, g_d) < 1e-12
    assert float(jnp.max(jnp.abs(g_e["w"]))) > 0


class _TanhReadout(bs.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((3, 4)) * 0.1)
        self.w_out = bs.ParamState(jnp.ones((4, 2)) * 0.1)
        self.h = bs.HiddenState(jnp.zeros(4))

    def update(self, x):
        self.h.value = 0.9 * self.h.value + etprop.matmul(x, self.w.value)
        return jnp.tanh(self.h.value @ self.w_out.value)


def test_bad_arguments():
    x0 = jnp.ones(4)
    with pytest.raises(etprop.ArgumentError, match="feedback"):
        etprop.EProp(ALIF(4, 6, 2), feedback="sideways")
    with pytest.raises(etprop.ArgumentError, match="kappa"):
        etprop.EProp(ALIF(4, 6, 2), kappa=1.0)
    with pytest.raises(etprop.ArgumentError, match=r"shape \(2, 6\)"):
        etprop.compile(ALIF(4, 6, 2), etprop.EProp, x0, feedback=jnp.ones((6, 2)))
    with pytest.raises(etprop.ArgumentError, match="readout='nope'"):
        etprop.compile(ALIF(4, 6, 2), etprop.EProp, x0, feedback="random", readout="nope")
    with pytest.raises(etprop.ArgumentError, match="non-linearly.*tanh"):
        etprop.compile(_TanhReadout(), etprop.EProp, jnp.ones(3), feedback="random")
    # symmetric feedback has no such restriction
    etprop.compile(_TanhReadout(), etprop.EProp, jnp.ones(3))
