"""Online learning through `etprop.sparse_matmul`: exact where theory says so, per-step by default
(the operator declares ``chunkable=False``), the closed form on request giving the same numbers."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import etprop
from tests.algorithms.models import mse, spike
from tests.conftest import plain_rel_err, seq_data


def _structure(n_in, n_out, fan_in, seed):
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(n_in, fan_in, replace=False) for _ in range(n_out)])
    cols = np.repeat(np.arange(n_out), fan_in)
    idx = np.stack([rows, cols], 1).astype(np.int32)
    return jsparse.BCOO((jnp.ones(len(rows)), jnp.asarray(idx)), shape=(n_in, n_out))


class SparseInLIF(bs.nn.Module):
    """Sparse input weights into LIF neurons with an exponential synapse (S=2: g, v); every hidden
    dependence is element-wise, so D-RTRL is exact. ``recurrent``: also a sparse recurrence from the
    last step's spikes (then D-RTRL is the diagonal approximation)."""

    def __init__(self, n_in, n_hid, n_out, recurrent=False, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        self.S_in = _structure(n_in, n_hid, 3, seed)
        self.w_in = bs.ParamState(jax.random.normal(k[0], (self.S_in.nse,)) * 0.8)
        self.recurrent = recurrent
        if recurrent:
            self.S_rec = _structure(n_hid, n_hid, 3, seed + 1)
            self.w_rec = bs.ParamState(jax.random.normal(k[1], (self.S_rec.nse,)) * 0.5)
        self.w_out = bs.ParamState(jax.random.normal(k[2], (n_hid, n_out)) * 0.3)
        self.g = bs.HiddenState(jnp.zeros(n_hid))
        self.v = bs.HiddenState(jnp.zeros(n_hid))

    def update(self, x):
        s_old = spike(self.v.value - 1.0)
        inp = etprop.sparse_matmul(x, self.w_in.value, sparse_mat=self.S_in)
        if self.recurrent:
            inp = inp + etprop.sparse_matmul(s_old, self.w_rec.value, sparse_mat=self.S_rec)
        self.g.value = 0.8 * self.g.value + inp
        self.v.value = 0.9 * (self.v.value - s_old) + self.g.value
        return jnp.tanh(self.v.value) @ self.w_out.value


def _grads(make, algo, xs, ys, B, **kw):
    model = make()
    if B is not None:
        for st in model.states(bs.HiddenState).values():
            st.value = jnp.zeros((B,) + st.value.shape, st.value.dtype)
    learner = etprop.compile(model, algo, xs[0], batch_size=B, **kw.pop("compile", {}))
    grads, loss = learner.etrace_grad(xs, ys, mse, **kw)
    return grads, float(loss), learner


@pytest.mark.parametrize("B", [3])
def test_d_rtrl_through_sparse_equals_bptt(x64, B):
    xs, ys = seq_data(8, 2, T=10, B=B, scale=1.5)
    make = lambda: SparseInLIF(8, 6, 2)
    g_on, l_on, learner = _grads(make, etprop.D_RTRL, xs, ys, B)
    g_bp, l_bp, _ = _grads(make, etprop.BPTT, xs, ys, B)
    assert np.isclose(l_on, l_bp, rtol=1e-12)
    assert plain_rel_err(g_on, g_bp) <= 1e-6, learner.report()
    assert float(jnp.max(jnp.abs(g_bp["w_in"]))) > 0
    # the learner chose per-step mode for the gather/scatter operator, and says so
    assert learner.per_step_reason is not None and "sparse_matmul" in learner.per_step_reason
    assert "per-step mode by default" in learner.report()


@pytest.mark.parametrize("algo, opts, B", [(etprop.D_RTRL, {}, None), (etprop.ES_D_RTRL, {"decay_or_rank": 0.9}, 2)])
def test_explicit_closed_form_chunk_equals_per_step(x64, algo, opts, B):
    """Recurrent sparse weights (approximate rules): the default per-step path and the closed form
    over chunks of 4 (asked for explicitly) compute the same online gradient."""
    xs, ys = seq_data(8, 2, T=12, B=B, scale=1.5)
    make = lambda: SparseInLIF(8, 6, 2, recurrent=True)
    g_step, _, _ = _grads(make, algo, xs, ys, B, compile=opts)
    g_chunk, _, _ = _grads(make, algo, xs, ys, B, compile=opts, closed_form_chunk=4)
    assert plain_rel_err(g_chunk, g_step) <= 1e-10
    assert float(jnp.max(jnp.abs(g_step["w_rec"]))) > 0


def test_float32_matches_float64_above_64_inputs():
    """float32 per-step path against float64 on a sparse layer with 80 inputs."""
    make = lambda: SparseInLIF(80, 16, 2, seed=2)
    xs, ys = seq_data(80, 2, T=5, B=2, scale=0.5)
    g32, _, _ = _grads(make, etprop.D_RTRL, xs, ys, 2)
    weights = make().states(bs.ParamState)
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        model = make()
        for path, st in model.states(bs.ParamState).items():
            st.value = to64(weights[path].value)
        for st in model.states(bs.HiddenState).values():
            st.value = jnp.zeros((2,) + st.value.shape, jnp.float64)
        learner = etprop.compile(model, etprop.D_RTRL, to64(xs[0]), batch_size=2)
        g64, _ = learner.etrace_grad(to64(xs), to64(ys), mse)
    finally:
        jax.config.update("jax_enable_x64", prev)
    np.testing.assert_allclose(np.asarray(g32["w_in"]), np.asarray(g64["w_in"]), rtol=2e-3,
                               atol=2e-4 * float(jnp.max(jnp.abs(g64["w_in"]))))


def test_padded_structure_is_refused():
    """BCOO padding (an index equal to the shape) would be dropped silently by the product."""
    idx = jnp.array([[0, 1], [2, 0], [3, 2]], jnp.int32)  # row 3 of a (3, 2) structure: padding
    mat = jsparse.BCOO((jnp.ones(3), idx), shape=(3, 2))
    with pytest.raises(etprop.OperandError, match=r"index \(3, 2\) outside its shape \(3, 2\)"):
        etprop.sparse_matmul(jnp.ones(3), jnp.ones(3), sparse_mat=mat)
