"""The event-driven path of `matmul` and `sparse_matmul` (``event=True``, brainevent's kernels):
the values and gradients of ``event=False``, the gradient w.r.t. the spikes included, under
jit, vmap and the online learners; bad options and a missing brainevent/numba are etprop errors."""

from __future__ import annotations

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import etprop
from etprop.operators import event as ev

from _op_helpers import check_marking, check_out_to_param, close, grads_match, jvp_match, per_sample, rand, single_call

pytest.importorskip("brainevent")
pytest.importorskip("numba", reason='event=True on CPU needs numba: pip install -e ".[event]"')

I, O, B = 70, 9, 4  # I > 64: past the sizes where XLA:CPU's float32 fusions have misbehaved here


def spikes(seed, shape, p=0.3, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p, dtype)


def _structure(seed=0, shuffle=True):
    """An (I, O) BCOO whose stored values are NOT in row order (the event path must permute)."""
    rng = np.random.default_rng(seed)
    idx = np.argwhere(rng.random((I, O)) < 0.3).astype(np.int32)
    if shuffle:
        idx = idx[rng.permutation(len(idx))]
    return jsparse.BCOO((jnp.asarray(rng.standard_normal(len(idx)), jnp.float32), jnp.asarray(idx)), shape=(I, O))


MAT = _structure()


def _mm(event):
    return lambda x, w, b: etprop.matmul(x, w, b, event=event)


def _sp(event, mat=MAT):
    return lambda x, w, b: etprop.sparse_matmul(x, w, sparse_mat=mat, bias=b, event=event)


def _args(kind, batched, dtype=jnp.float32, seed=0):
    x = spikes(seed, (B, I) if batched else (I,), dtype=dtype)
    w = rand(seed + 1, (I, O) if kind == "dense" else (MAT.nse,)).astype(dtype)
    b = rand(seed + 2, (O,)).astype(dtype)
    return x, w, b


OPS = {"dense": _mm, "sparse": _sp}


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("batched", [False, True])
def test_values_equal_the_dense_path_float32(kind, batched):
    x, w, b = _args(kind, batched)
    y_ev, y = OPS[kind](True)(x, w, b), OPS[kind](False)(x, w, b)
    assert y_ev.shape == y.shape and y_ev.dtype == y.dtype == jnp.float32
    close(y_ev, y)  # (under jit: the gradient tests below)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_values_and_grads_equal_the_dense_path_float64(x64, kind):
    x, w, b = _args(kind, True, jnp.float64)
    y_ev, y = OPS[kind](True)(x, w, b), OPS[kind](False)(x, w, b)
    assert y_ev.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y_ev), np.asarray(y), rtol=1e-12, atol=1e-12)
    ct = jnp.asarray(np.random.default_rng(5).standard_normal(y.shape))
    g = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a)) * ct), argnums=(0, 1, 2)))(x, w, b)
    for a, c in zip(g(OPS[kind](True)), g(OPS[kind](False))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("batched", [False, True])
def test_grads_wrt_spikes_weight_and_bias(kind, batched):
    """jax.grad (under jit) w.r.t. x (the spikes: the surrogate learning signal's path), weight, bias."""
    grads_match(OPS[kind](True), OPS[kind](False), _args(kind, batched), (0, 1, 2))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_jvp(kind):
    x, w, b = _args(kind, True)
    jvp_match(OPS[kind](True), OPS[kind](False), (x, w, b))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_vmap_over_a_batch_with_shared_weights(kind):
    """Per-sample gradients under vmap with the weights shared: how the learners take them."""
    x, w, b = _args(kind, True)
    ct = rand(9, (B, O))

    def per_sample_grads(f):
        g = jax.grad(lambda xi, w, b, c: jnp.sum(jnp.tanh(f(xi, w, b)) * c), argnums=(0, 1, 2))
        return jax.jit(jax.vmap(g, (0, None, None, 0)))(x, w, b, ct)

    close(jax.vmap(OPS[kind](True), (0, None, None))(x, w, b), OPS[kind](False)(x, w, b))
    close(per_sample_grads(OPS[kind](True)), per_sample_grads(OPS[kind](False)))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_pullback_with_graded_input_under_jit(kind):
    """The learners pull back through the operator with a non-binary input in place of the spikes
    (ES-D-RTRL's input trace, traced: not checked); the derivatives are the dense formulas, so the
    pullback is the dense one (only the discarded primal assumes spikes)."""
    _, w, b = _args(kind, True)
    trace = jnp.abs(rand(8, (B, I)))  # graded, like a low-pass filtered spike train
    ct = rand(9, (B, O))
    pull = lambda f: jax.jit(lambda x, w, b: jax.vjp(lambda w, b: f(x, w, b), w, b)[1](ct))(trace, w, b)
    close(pull(OPS[kind](True)), pull(OPS[kind](False)))


def test_bool_spikes():
    x, w, b = _args("dense", True)
    xb = x.astype(bool)
    close(etprop.matmul(xb, w, b, event=True), etprop.matmul(xb, w, b))
    ws = rand(3, (MAT.nse,))
    close(etprop.sparse_matmul(xb, ws, sparse_mat=MAT, event=True), etprop.sparse_matmul(xb, ws, sparse_mat=MAT))
    gw = lambda e: jax.grad(lambda w: jnp.sum(etprop.matmul(xb, w, event=e) ** 2))(w)
    close(gw(True), gw(False))


def test_sparse_structure_in_row_order_and_from_brainevent_csr():
    import brainevent
    mat = _structure(seed=3, shuffle=False)
    x, w = spikes(1, (B, I)), rand(4, (mat.nse,))
    close(_sp(True, mat)(x, w, None), _sp(False, mat)(x, w, None))
    dense = np.asarray(mat.todense())
    csr = brainevent.CSR.fromdense(jnp.asarray(dense))
    y_ev = etprop.sparse_matmul(x, csr.data, sparse_mat=csr, event=True)
    close(y_ev, x @ dense)


def test_static_config_same_operator_and_rules():
    """event=True is static config of the same primitive: the same out_to_param rules hold."""
    for fn, args, name, aux in [(_mm(True), _args("dense", False), "matmul", ()),
                                (_sp(True), _args("sparse", False), "sparse_matmul", ("indices",))]:
        call = check_marking(fn, args, name, ("weight", "bias"), aux)
        assert call.config_dict["event"] is True
        _, call, operands = single_call(fn, *args)
        x_m, tp, aux_v = per_sample(call, *operands)
        check_out_to_param(call, x_m, tp, aux_v, "weight")
        # the event kernel is what runs
        jaxpr = str(jax.make_jaxpr(fn)(*args))
        assert "binary_dense" in jaxpr or "binary_csr" in jaxpr
    # event=False keeps the plain call (no extra config key)
    _, call, _ = single_call(_mm(False), *_args("dense", False))
    assert "event" not in call.config_dict


# -- an online learner: D-RTRL / ES-D-RTRL with event=True give the event=False gradients ----------

class SpikingTwoLayer(bs.nn.Module):
    """Binary input -> sparse LIF layer -> dense LIF layer -> readout; both ETP operators take spikes,
    and layer 1 learns through the gradient w.r.t. layer 2's input spikes."""

    def __init__(self, event, n_in=I, n1=O, n2=6, n_out=2, seed=0):
        from tests.algorithms.models import spike
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        self.spike, self.event = spike, event
        self.mat = MAT
        self.w1 = bs.ParamState(jax.random.normal(k[0], (MAT.nse,)) * 1.2)
        self.w2 = bs.ParamState({"weight": jax.random.normal(k[1], (n1, n2)) * 1.0, "bias": jnp.full((n2,), 0.2)})
        self.w_out = bs.ParamState(jax.random.normal(k[2], (n2, n_out)) * 0.5)
        self.v1 = bs.HiddenState(jnp.zeros(n1))
        self.v2 = bs.HiddenState(jnp.zeros(n2))

    def update(self, x):
        v1 = 0.8 * self.v1.value + etprop.sparse_matmul(x, self.w1.value, sparse_mat=self.mat, event=self.event)
        s1 = self.spike(v1 - 1.0)
        self.v1.value = v1 - s1
        v2 = 0.8 * self.v2.value + etprop.matmul(s1, self.w2.value["weight"], self.w2.value["bias"],
                                                 event=self.event)
        s2 = self.spike(v2 - 1.0)
        self.v2.value = v2 - s2
        return (jnp.tanh(self.v2.value) + s2) @ self.w_out.value


@pytest.mark.parametrize("algo", ["d_rtrl", "es_d_rtrl"])
def test_online_learner_gradient_equals_event_false(algo):
    from tests.algorithms.influence_models import batched, rel_err
    from tests.algorithms.models import mse
    T = 4
    xs = spikes(11, (T, B, I), p=0.25)
    ys = rand(12, (T, B, 2))
    out = {}
    for event in (True, False):
        learner = etprop.compile(batched(SpikingTwoLayer(event), B), algo, xs[0], batch_size=B)
        out[event] = learner.etrace_grad(xs, ys, mse)
    (g_ev, l_ev), (g, l) = out[True], out[False]
    np.testing.assert_allclose(float(l_ev), float(l), rtol=1e-5)
    assert rel_err(g_ev, g) <= 1e-5
    for leaf in jax.tree.leaves(g):  # every parameter learns (layer 1 through layer 2's input spikes)
        assert float(jnp.max(jnp.abs(leaf))) > 0


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["yes", 1, None, jnp.array(True)])
def test_event_must_be_a_bool(bad):
    x, w, b = _args("dense", False)
    with pytest.raises(etprop.ArgumentError, match="'event' must be True or False"):
        etprop.matmul(x, w, event=bad)
    with pytest.raises(etprop.ArgumentError, match="'event' must be True or False"):
        etprop.sparse_matmul(x, rand(0, (MAT.nse,)), sparse_mat=MAT, event=bad)


def test_concrete_non_binary_input_is_rejected():
    x = rand(0, (I,))
    with pytest.raises(etprop.OperandError, match="0s and 1s"):
        etprop.matmul(x, rand(1, (I, O)), event=True)
    with pytest.raises(etprop.OperandError, match="0s and 1s"):
        etprop.sparse_matmul(x, rand(1, (MAT.nse,)), sparse_mat=MAT, event=True)


def test_traced_structure_is_rejected():
    w, x = rand(1, (MAT.nse,)), spikes(0, (I,))
    with pytest.raises(etprop.OperandError, match="structure to be concrete"):
        jax.jit(lambda idx: etprop.sparse_matmul(x, w, sparse_mat=jsparse.BCOO((w, idx), shape=(I, O)),
                                                 event=True))(MAT.indices)


@pytest.mark.parametrize("missing", ["brainevent", "numba"])
def test_missing_dependency_names_the_extra(monkeypatch, missing):
    real = ev._import

    def fake(name):
        if name == missing:
            raise ImportError(f"No module named {name!r}")
        return real(name)

    monkeypatch.setattr(ev, "_import", fake)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    x, w, b = _args("dense", False)
    with pytest.raises(etprop.NotSupportedError, match=r"etprop\[event\]") as err:
        etprop.matmul(x, w, event=True)
    assert missing in str(err.value)
    with pytest.raises(etprop.NotSupportedError, match=r"etprop\[event\]"):
        etprop.sparse_matmul(x, rand(0, (MAT.nse,)), sparse_mat=MAT, event=True)
    etprop.matmul(x, w)  # event=False needs neither
