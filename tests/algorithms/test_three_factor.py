"""Three-factor rule: dW = M^t . e^t with the modulator a traced, per-call argument."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from tests.algorithms.models import ALIF, ElementwiseRNN, mse

B, T = 2, 5


def _data(n_in, n_out, seed=1):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (T, B, n_in)) * 1.5, jax.random.normal(k2, (T, B, n_out))


def _model(cls, *args):
    m = cls(*args)
    for st in m.states(bs.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    return m


def _reference(cls, args, xs, ms, state_index=0):
    """``sum_t sum_b M^t e^t`` per traced weight from D-RTRL's traces, advanced step by step."""
    dr = etprop.compile(_model(cls, *args), etprop.D_RTRL, xs[0], batch_size=B)
    rels = dr.graph.relations
    acc = {r.leaf_name: 0.0 for r in rels}
    for t in range(T):
        dr.etrace_evolve(xs[t:t + 1])
        for i, r in enumerate(rels):
            e = dr.etrace.value["rel"][i][state_index]  # (B, *param shape)
            m = jnp.broadcast_to(ms[t], (B,) + e.shape[-1:])  # per (sample, unit); units = last axis
            m = m.reshape((B,) + (1,) * (e.ndim - 2) + e.shape[-1:])
            acc[r.leaf_name] = acc[r.leaf_name] + jnp.sum(m * e, axis=0)
    return acc


@pytest.mark.parametrize("kind", ["scalar", "per_unit", "per_sample"])
def test_gradient_is_modulator_times_trace(x64, kind):
    xs, _ = _data(3, 2)
    key = jax.random.key(4)
    ms = {"scalar": jax.random.normal(key, (T,)), "per_unit": jax.random.normal(key, (T, 6)),
          "per_sample": jax.random.normal(key, (T, B, 1))}[kind]
    tf = etprop.compile(_model(ElementwiseRNN, 3, 6, 2), etprop.ThreeFactor, xs[0], batch_size=B)
    g, loss = tf.etrace_grad(xs, modulator=ms)
    want = _reference(ElementwiseRNN, (3, 6, 2), xs, ms)
    for name in ("w", "a"):
        np.testing.assert_allclose(g[name], want[name], rtol=1e-12, atol=1e-14)
        assert float(jnp.max(jnp.abs(g[name]))) > 0
    assert float(loss) == 0.0 and float(jnp.max(jnp.abs(g["w_out"]))) == 0.0  # no loss: readout has no signal


def test_modulator_is_traced_not_frozen(x64):
    """The jitted path is reused for new modulators and follows them (braintrace froze them)."""
    xs, _ = _data(3, 2)
    tf = etprop.compile(_model(ElementwiseRNN, 3, 6, 2), etprop.ThreeFactor, xs[0], batch_size=B)
    m1 = jax.random.normal(jax.random.key(0), (T,))
    g1, _ = tf.etrace_grad(xs, modulator=m1)
    tf.reset()
    g2, _ = tf.etrace_grad(xs, modulator=-3.0 * m1)
    tf.reset()
    mu = jnp.zeros((T, 6)).at[:, 2].set(1.0)  # only unit 2 learns
    g3, _ = tf.etrace_grad(xs, modulator=mu)
    fns = [f for _, f in tf._jit_cache.items()]  # the one sequence driver of every trace learner
    assert len(fns) == 1 and fns[0]._cache_size() == 2  # one trace per modulator shape, none per value
    np.testing.assert_allclose(g2["w"], -3.0 * g1["w"], rtol=1e-12)
    assert float(jnp.max(jnp.abs(g3["w"][:, 2]))) > 0
    assert float(jnp.max(jnp.abs(jnp.delete(g3["w"], 2, axis=1)))) == 0.0


def test_loss_trains_untraced_parameters_only(x64):
    xs, ys = _data(3, 2)
    ms = jnp.ones((T,))
    make = lambda: _model(ElementwiseRNN, 3, 6, 2)
    g_mod, _ = etprop.compile(make(), etprop.ThreeFactor, xs[0], batch_size=B).etrace_grad(xs, modulator=ms)
    tf = etprop.compile(make(), etprop.ThreeFactor, xs[0], batch_size=B)
    g_both, loss = tf.etrace_grad(xs, ys, mse, modulator=ms)
    g_d, loss_d = etprop.compile(make(), etprop.D_RTRL, xs[0], batch_size=B).etrace_grad(xs, ys, mse)
    np.testing.assert_allclose(g_both["w"], g_mod["w"], rtol=1e-12)  # the loss never reaches traced weights
    np.testing.assert_allclose(g_both["w_out"], g_d["w_out"], rtol=1e-12)  # readout: exact instantaneous
    assert np.isclose(loss, loss_d, rtol=1e-12)
    # step by step gives the same as the sequence driver
    tf.reset()
    total = None
    for t in range(T):
        _, g, _ = tf.step(xs[t], ys[t], mse, modulator=ms[t])
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    for k in g_both:
        np.testing.assert_allclose(total[k], g_both[k], rtol=1e-12)


def test_multi_state_group_needs_the_gated_state(x64):
    xs, _ = _data(4, 2)
    with pytest.raises(etprop.ArgumentError, match="state="):
        etprop.compile(_model(ALIF, 4, 6, 2), etprop.ThreeFactor, xs[0], batch_size=B)
    tf = etprop.compile(_model(ALIF, 4, 6, 2), etprop.ThreeFactor, xs[0], batch_size=B, state="v")
    ms = jax.random.normal(jax.random.key(1), (T, 6))
    g, _ = tf.etrace_grad(xs, modulator=ms)
    v_index = tf.graph.groups[0].names.index("v")
    want = _reference(ALIF, (4, 6, 2), xs, ms, state_index=v_index)
    np.testing.assert_allclose(g["w"], want["w"], rtol=1e-12, atol=1e-14)
    assert "'v'" in tf.report() and "modulator" in tf.report()


def test_bad_calls():
    xs, ys = _data(3, 2)
    tf = etprop.compile(_model(ElementwiseRNN, 3, 6, 2), etprop.ThreeFactor, xs[0], batch_size=B)
    with pytest.raises(etprop.ArgumentError, match="modulator="):
        tf.etrace_grad(xs)
    with pytest.raises(etprop.ArgumentError, match="does not broadcast"):
        tf.etrace_grad(xs, modulator=jnp.ones((T, 5)))
    with pytest.raises(etprop.ArgumentError, match="leading time axis"):
        tf.etrace_grad(xs, modulator=jnp.ones((T + 1,)))
    with pytest.raises(etprop.ArgumentError, match="window"):
        tf.etrace_grad(xs, modulator=jnp.ones((T,)), window=2)
    with pytest.raises(etprop.NotSupportedError, match="modulator"):
        bs.transform.grad(lambda: jnp.sum(tf(xs[0])), tf.param_states())()
    with pytest.raises(etprop.ArgumentError, match="state"):
        etprop.ThreeFactor(ElementwiseRNN(3, 6, 2), state=3)
