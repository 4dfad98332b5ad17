"""etprop.nn connection layers: values, constraints, gradients to the raw weights, online learning."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.experimental import sparse as jsparse

import etprop
from etprop.nn import Conv1d, Conv2d, Conv3d, Embedding, GroupedLinear, Linear, LoRA, SparseLinear

RTOL = 1e-5


def _rand(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _param_grad(layer, x, name="weight"):
    """d sum(layer(x)^2) / d layer.<name>, through brainstate's grad of the ParamState."""
    st = getattr(layer, name)
    return bs.transform.grad(lambda: jnp.sum(layer(x) ** 2), grad_states={"p": st})()["p"]


# -- Linear ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_value(batched, bias):
    layer = Linear(5, 3, bias=bias, b_init=_rand(9, (3,)) if bias else None, key=0)
    x = _rand(1, (4, 5) if batched else (5,))
    want = x @ layer.weight.value + (layer.bias.value if bias else 0.0)
    np.testing.assert_allclose(layer(x), want, rtol=RTOL, atol=1e-6)
    assert (layer.bias is None) == (not bias)


def test_linear_mask_and_dale_sign():
    n_in, n_out = 6, 4
    mask = np.random.default_rng(0).random((n_in, n_out)) < 0.5
    sign = np.array([1, 1, 1, -1, -1, 1])
    layer = Linear(n_in, n_out, w_mask=mask, sign=sign, key=3)
    w = layer.weight.value
    eff = layer.effective_weight
    np.testing.assert_allclose(eff, sign[:, None] * jnp.abs(w) * mask, rtol=RTOL)
    assert np.all(np.asarray(eff)[~mask] == 0)
    assert np.all(np.asarray(eff) * sign[:, None] >= 0)          # Dale: row i has the sign of unit i
    x = _rand(1, (3, n_in))
    np.testing.assert_allclose(layer(x), x @ eff + layer.bias.value, rtol=RTOL, atol=1e-6)
    # the gradient is w.r.t. the raw weight: chain rule through |w|, sign and mask
    g = _param_grad(layer, x)
    g_eff = x.T @ (2 * layer(x))
    np.testing.assert_allclose(g, g_eff * sign[:, None] * jnp.sign(w) * mask, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(g)[~mask] == 0) and float(jnp.max(jnp.abs(g))) > 0
    # a large raw update never flips an effective sign nor opens a masked connection
    layer.weight.value = w - 10.0 * g
    eff2 = np.asarray(layer.effective_weight)
    assert np.all(eff2 * sign[:, None] >= 0) and np.all(eff2[~mask] == 0)


def test_linear_full_sign_matrix_and_weight_fn_is_shared():
    sign = np.where(np.random.default_rng(1).random((3, 2)) < 0.5, -1, 1)
    layer = Linear(3, 2, sign=sign, bias=False, key=0)
    assert np.all(np.asarray(layer.effective_weight) * sign >= 0)
    # one weight_fn object per layer: repeated calls reuse one ETP call specialisation
    assert layer._weight_fn is layer._weight_fn
    jaxpr1 = jax.make_jaxpr(lambda x: layer(x))(jnp.ones(3))
    jaxpr2 = jax.make_jaxpr(lambda x: layer(x))(jnp.ones(3))
    assert str(jaxpr1) == str(jaxpr2)


def test_linear_init_options_and_errors():
    a, b = Linear(4, 3, key=5), Linear(4, 3, key=5)
    np.testing.assert_array_equal(a.weight.value, b.weight.value)          # seeded: reproducible
    assert not np.allclose(a.weight.value, Linear(4, 3, key=6).weight.value)
    c = Linear(4, 3, w_init=jnp.ones((4, 3)), b_init=jax.nn.initializers.constant(0.5))
    np.testing.assert_array_equal(c.weight.value, 1.0)
    np.testing.assert_array_equal(c.bias.value, 0.5)
    d = Linear(4, 3, w_init=jax.nn.initializers.orthogonal(), key=jax.random.key(0))
    assert d.weight.value.shape == (4, 3)
    with pytest.raises(etprop.ArgumentError, match="shape"):
        Linear(4, 3, w_init=jnp.ones((3, 4)))
    with pytest.raises(etprop.ArgumentError, match="w_mask"):
        Linear(4, 3, w_mask=np.ones((4, 4)))
    with pytest.raises(etprop.ArgumentError, match="sign"):
        Linear(4, 3, sign=np.array([1, 0, 1, 1]))
    with pytest.raises(etprop.ArgumentError, match="sign"):
        Linear(4, 3, sign=np.ones(3))
    with pytest.raises(etprop.ArgumentError, match="in_size"):
        Linear(0, 3)


# -- SparseLinear ----------------------------------------------------------------------------------

def _structure(n_in=6, n_out=5, seed=0):
    dense = np.where(np.random.default_rng(seed).random((n_in, n_out)) < 0.4,
                     np.random.default_rng(seed + 1).standard_normal((n_in, n_out)), 0.0).astype(np.float32)
    return jsparse.BCOO.fromdense(jnp.asarray(dense)), dense


@pytest.mark.parametrize("batched", [False, True])
def test_sparse_linear_value_and_grad(batched):
    mat, dense = _structure()
    layer = SparseLinear(mat, b_init=_rand(3, (5,)))
    np.testing.assert_allclose(layer.weight.value, mat.data)              # BCOO values are the default init
    np.testing.assert_allclose(layer.todense(), dense, rtol=RTOL)
    x = _rand(2, (3, 6) if batched else (6,))
    np.testing.assert_allclose(layer(x), x @ dense + layer.bias.value, rtol=RTOL, atol=1e-6)
    g = _param_grad(layer, x)
    rows, cols = np.asarray(mat.indices).T
    g_dense = jnp.atleast_2d(x).T @ jnp.atleast_2d(2 * layer(x))
    np.testing.assert_allclose(g, g_dense[rows, cols], rtol=1e-4, atol=1e-5)


def test_sparse_linear_from_indices_and_bcsr():
    mat, dense = _structure(seed=4)
    layer = SparseLinear((mat.indices, mat.shape), bias=False, key=0)
    assert layer.weight.value.shape == (mat.nse,) and layer.bias is None
    x = _rand(0, (6,))
    np.testing.assert_allclose(layer(x), x @ layer.todense(), rtol=RTOL, atol=1e-6)
    assert np.all(np.asarray(layer.todense())[dense == 0] == 0)          # absent connections stay absent
    bcsr = jsparse.BCSR.fromdense(jnp.asarray(dense))
    np.testing.assert_allclose(SparseLinear(bcsr)(x), x @ dense + 0.0, rtol=RTOL, atol=1e-6)
    with pytest.raises(etprop.ArgumentError):
        SparseLinear("not a structure")
    with pytest.raises(etprop.ArgumentError, match="indices"):
        SparseLinear((jnp.zeros((3, 3), jnp.int32), (4, 4)))


# -- LoRA ------------------------------------------------------------------------------------------

def test_lora_value_and_grads():
    layer = LoRA(6, 4, rank=2, alpha=0.5, bias=True, bias_init=_rand(5, (4,)), key=1)
    x = _rand(0, (3, 6))
    want = 0.5 * x @ layer.B.value @ layer.A.value + layer.bias.value
    np.testing.assert_allclose(layer(x), want, rtol=RTOL, atol=1e-6)
    for name in ("B", "A", "bias"):
        assert float(jnp.max(jnp.abs(_param_grad(layer, x, name)))) > 0, name
    adapter = LoRA(6, 4, rank=2, a_init=jax.nn.initializers.zeros, key=1)
    np.testing.assert_array_equal(adapter(x), 0.0)                        # starts as a no-op
    assert float(jnp.max(jnp.abs(_param_grad(adapter, x, "A")))) == 0     # (d(y^2)/dA = 0 at y = 0)


# -- convolutions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,spatial,batched", [(Conv1d, (9,), True), (Conv2d, (7, 6), False),
                                                 (Conv3d, (4, 5, 3), True)])
def test_conv_value_and_grad(cls, spatial, batched):
    n = len(spatial)
    layer = cls(4, 6, kernel_size=3, stride=2 if n == 2 else 1, padding="SAME", groups=2,
                b_init=_rand(1, (6,)), key=0)
    assert layer.weight.value.shape == (3,) * n + (2, 6)
    x = _rand(2, ((2,) if batched else ()) + spatial + (4,))
    dn = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[n]
    xb = x if batched else x[None]
    want = lax.conv_general_dilated(xb, layer.weight.value, layer.stride, "SAME", dimension_numbers=dn,
                                    feature_group_count=2) + layer.bias.value
    want = want if batched else want[0]
    np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(_param_grad(layer, x)))) > 0


def test_conv_dilation_valid_padding_and_errors():
    layer = Conv1d(2, 3, kernel_size=3, padding="VALID", dilation=2, bias=False, key=0)
    x = _rand(0, (10, 2))
    want = lax.conv_general_dilated(x[None], layer.weight.value, (1,), "VALID", rhs_dilation=(2,),
                                    dimension_numbers=("NWC", "WIO", "NWC"))[0]
    np.testing.assert_allclose(layer(x), want, rtol=1e-4, atol=1e-5)
    assert layer(x).shape == (6, 3)
    with pytest.raises(etprop.ArgumentError, match="groups"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(etprop.ArgumentError, match="kernel_size"):
        Conv2d(2, 4, (3, 3, 3))


# -- Embedding, GroupedLinear ----------------------------------------------------------------------

def test_embedding_value_and_grad():
    layer = Embedding(7, 3, key=0)
    idx = jnp.array([1, 4, 1])
    np.testing.assert_allclose(layer(idx), layer.weight.value[idx])
    np.testing.assert_allclose(layer(jnp.array(2)), layer.weight.value[2])
    g = np.asarray(_param_grad(layer, idx))
    w = np.asarray(layer.weight.value)
    np.testing.assert_allclose(g[1], 2 * 2 * w[1], rtol=1e-5)              # row 1 looked up twice
    np.testing.assert_allclose(g[4], 2 * w[4], rtol=1e-5)
    assert np.all(g[[0, 2, 3, 5, 6]] == 0)
    with pytest.raises(etprop.OperandError):
        layer(jnp.array([7]))


@pytest.mark.parametrize("batched", [False, True])
def test_grouped_linear_value_and_grad(batched):
    layer = GroupedLinear(3, 4, 2, b_init=_rand(1, (3, 2)), key=0)
    x = _rand(0, ((5,) if batched else ()) + (3, 4))
    want = jnp.einsum("...gi,gio->...go", x, layer.weight.value) + layer.bias.value
    np.testing.assert_allclose(layer(x), want, rtol=RTOL, atol=1e-6)
    assert float(jnp.max(jnp.abs(_param_grad(layer, x)))) > 0


# -- online learning through the layers ------------------------------------------------------------

class Leaky(bs.nn.Module):
    """h' = 0.8 h + tanh(layer(x)); out = h' summed over its last axis (a memoryless readout)."""

    def __init__(self, layer, shape):
        super().__init__()
        self.layer = layer
        self.shape = shape
        self.init_state()

    def init_state(self, batch_size=None, **kwargs):
        self.h = bs.HiddenState(jnp.zeros(((batch_size,) if batch_size else ()) + self.shape))

    def update(self, x):
        self.h.value = 0.8 * self.h.value + jnp.tanh(self.layer(x))
        return jnp.sum(self.h.value.reshape(self.shape[0], -1), axis=-1)


class ThreeLayers(bs.nn.Module):
    """Three leaky states driven by a masked Dale Linear, a GroupedLinear and an Embedding."""

    def __init__(self):
        super().__init__()
        self.lin = Leaky(Linear(3, 5, w_mask=_mask, sign=np.array([1, -1, 1]), key=0), (5,))
        self.grp = Leaky(GroupedLinear(2, 3, 4, key=1), (2, 4))
        self.emb = Leaky(Embedding(6, 5, key=2), (5,))

    def update(self, x, xg, idx):
        return jnp.concatenate([self.lin(x), self.grp(xg), self.emb(idx)])


def _online(make_model, algo, xs, ys, B, run=True):
    model = make_model()
    bs.nn.init_all_states(model, batch_size=B)
    xs = xs if isinstance(xs, tuple) else (xs,)
    learner = etprop.compile(model, algo, *(x[0] for x in xs), batch_size=B)
    if not run:
        return None, learner
    grads, _ = learner.etrace_grad(xs, ys, lambda o, y: jnp.sum((o - y) ** 2))
    return grads, learner


def _rel_err(a, b):
    return {k: float(jnp.max(jnp.abs(a[k] - b[k])) / (jnp.max(jnp.abs(b[k])) + 1e-30)) for k in b}


_mask = np.random.default_rng(0).random((3, 5)) < 0.6
_sparse = jsparse.BCOO.fromdense(jnp.asarray(np.random.default_rng(1).standard_normal((3, 5))
                                             * (np.random.default_rng(2).random((3, 5)) < 0.5)))


def test_layers_learn_online_and_d_rtrl_is_exact(x64):
    """Layers driving element-wise leaky states: every parameter traced per-parameter, D-RTRL == BPTT,
    and the online gradient of the masked Dale weight is w.r.t. the raw weight (zero where masked)."""
    T, B = 8, 2
    k = jax.random.split(jax.random.key(3), 4)
    xs = (jax.random.normal(k[0], (T, B, 3)), jax.random.normal(k[1], (T, B, 2, 3)),
          jax.random.randint(k[2], (T, B), 0, 6))
    ys = jax.random.normal(k[3], (T, B, 5 + 2 + 5))
    g_d, learner = _online(ThreeLayers, etprop.D_RTRL, xs, ys, B)
    g_bptt, _ = _online(ThreeLayers, etprop.BPTT, xs, ys, B)
    traced = {f"{m}.layer.{p}" for m in ("lin", "grp") for p in ("weight", "bias")} | {"emb.layer.weight"}
    assert {r.leaf_name for r in learner.graph.relations} == traced
    assert all(learner.relation_kind(r) == "param" for r in learner.graph.relations)
    errs = _rel_err(g_d, g_bptt)
    assert max(errs.values()) <= 1e-6, (errs, learner.report())
    for k_, v in g_d.items():
        assert float(jnp.max(jnp.abs(v))) > 0, k_
    assert np.all(np.asarray(g_d["lin.layer.weight"])[~_mask] == 0)


# Regression: sparse_matmul's pullback under vmap with shared values (was `x @ BCOO`, whose
# transpose rule fails there in jax 0.10) in every learner mode.
def test_sparse_linear_learns_online_and_d_rtrl_is_exact(x64):
    T, B = 8, 2
    make = lambda: Leaky(SparseLinear(_sparse, key=0), (5,))
    xs = jax.random.normal(jax.random.key(0), (T, B, 3))
    ys = jax.random.normal(jax.random.key(1), (T, B, 5))
    g_d, learner = _online(make, etprop.D_RTRL, xs, ys, B)
    g_bptt, _ = _online(make, etprop.BPTT, xs, ys, B)
    assert {r.leaf_name for r in learner.graph.relations} == {"layer.weight", "layer.bias"}
    assert max(_rel_err(g_d, g_bptt).values()) <= 1e-6


@pytest.mark.parametrize("name", ["lora", "conv"])
def test_multi_position_params_use_factorised_traces(name):
    """Conv kernels and LoRA's B drive several outputs: traced with factorised traces, still learn."""
    if name == "lora":
        make, xshape = (lambda: Leaky(LoRA(3, 5, rank=2, bias=True, key=0), (5,))), (3,)
        kinds = {"layer.A": "param", "layer.B": "io", "layer.bias": "param"}
    else:
        make, xshape = (lambda: Leaky(Conv1d(2, 3, kernel_size=3, key=0), (6, 3))), (6, 2)
        kinds = {"layer.weight": "io", "layer.bias": "io"}
    T, B = 6, 2
    xs = jax.random.normal(jax.random.key(0), (T, B) + xshape)
    ys = jax.random.normal(jax.random.key(1), (T, B, make().shape[0]))
    g, learner = _online(make, etprop.D_RTRL, xs, ys, B)
    assert {r.leaf_name: learner.relation_kind(r) for r in learner.graph.relations} == kinds, learner.report()
    for k, v in g.items():
        assert float(jnp.max(jnp.abs(v))) > 0, k
    _, es = _online(make, etprop.ES_D_RTRL, xs, ys, B, run=False)
    assert {r.leaf_name: es.relation_kind(r) for r in es.graph.relations} == {k: "io" for k in kinds}
