"""Tests for the dense ETP operators: matmul, grouped_matmul, einsum."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etprop

from _op_helpers import (check_apply_mantissa, check_marking, check_not_diagonal, check_out_to_param, close,
                         grads_match, jvp_match, per_sample, rand, single_call)

I, O, B, G = 3, 4, 2, 2



# ============================================================================ matmul

def _mm_args(batched: bool, bias: bool):
    x = rand(0, (B, I) if batched else (I,))
    w = rand(1, (I, O))
    b = rand(2, (O,)) if bias else None
    return x, w, b


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_value(batched, bias):
    x, w, b = _mm_args(batched, bias)
    y = etprop.matmul(x, w, b)
    want = x @ w + (0 if b is None else b)
    assert y.shape == ((B, O) if batched else (O,))
    close(y, want)


@pytest.mark.parametrize("batched", [False, True])
def test_matmul_grad(batched):
    x, w, b = _mm_args(batched, True)
    grads_match(lambda x, w, b: etprop.matmul(x, w, b), lambda x, w, b: x @ w + b, (x, w, b), (0, 1, 2),
                eager=True)


@pytest.mark.parametrize("batched", [False, True])
def test_matmul_jvp(batched):
    x, w, b = _mm_args(batched, True)
    jvp_match(lambda x, w, b: etprop.matmul(x, w, b), lambda x, w, b: x @ w + b, (x, w, b))


def test_matmul_vmap_matches_batched():
    x, w, b = _mm_args(True, True)
    y_vmap = jax.vmap(lambda xi: etprop.matmul(xi, w, b))(x)
    close(y_vmap, etprop.matmul(x, w, b))
    close(y_vmap, x @ w + b)
    # vmapped per-sample grads equal the per-sample plain grads
    gw = jax.vmap(jax.grad(lambda xi, w: etprop.matmul(xi, w, b).sum(), argnums=1), (0, None))(x, w)
    close(gw, jax.vmap(lambda xi: jnp.outer(xi, jnp.ones(O)))(x))


def test_matmul_jit():
    x, w, b = _mm_args(True, True)
    close(jax.jit(etprop.matmul)(x, w, b), x @ w + b)
    close(jax.jit(jax.grad(lambda w: etprop.matmul(x, w, b).sum()))(w), jax.grad(lambda w: (x @ w + b).sum())(w))


def test_matmul_transforms():
    x, w, b = _mm_args(True, True)
    mask = (rand(5, (I, O)) > 0).astype(jnp.float32)
    wf = lambda w: jnp.abs(w) * mask  # noqa: E731
    bf = jax.nn.softplus
    op = lambda x, w, b: etprop.matmul(x, w, b, weight_fn=wf, bias_fn=bf)  # noqa: E731
    plain = lambda x, w, b: x @ wf(w) + bf(b)  # noqa: E731
    close(op(x, w, b), plain(x, w, b))
    # not the untransformed product
    assert not np.allclose(op(x, w, b), x @ w + b, atol=1e-3)
    grads_match(op, plain, (x, w, b), (0, 1, 2))


def test_matmul_units_dimensionless_weight():
    x, w, _ = _mm_args(True, False)
    y = etprop.matmul(x * u.mV, w)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, x @ w)


def test_matmul_units_mV_times_nS_is_pA():
    x, w, _ = _mm_args(False, False)
    y = etprop.matmul(x * u.mV, w * u.nS)
    assert u.get_unit(y).has_same_dim(u.amp)
    close(y.to_decimal(u.pA), x @ w, rtol=1e-5)
    assert u.get_unit(y) == u.pA


def test_matmul_units_bias_in_volt_converted_to_mV():
    x, w, b = _mm_args(True, True)
    y = etprop.matmul(x * u.mV, w, b * u.volt)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, x @ w + 1000.0 * b, rtol=1e-5, atol=1e-3)
    # gradient w.r.t. the bias mantissa (in V) of the output mantissa (in mV) is 1000
    g = jax.grad(lambda bm: etprop.matmul(x * u.mV, w, bm * u.volt).mantissa.sum())(b)
    close(g, jnp.full((O,), 1000.0 * B))


def test_matmul_units_dimensionless_with_scale():
    # mV * (1/V) is dimensionless with scale 1e-3; a plain bias is added after scaling
    x, w, b = _mm_args(False, True)
    y = etprop.matmul(x * u.mV, w / u.volt, b)
    close(jnp.asarray(u.maybe_decimal(y)), 1e-3 * (x @ w) + b)


def test_matmul_units_bias_wrong_dimension():
    x, w, b = _mm_args(False, True)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        etprop.matmul(x * u.mV, w, b * u.nS)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        etprop.matmul(x * u.mV, w, b)  # unitless bias for an mV output


def test_matmul_units_grad():
    x, w, _ = _mm_args(True, False)
    g = jax.grad(lambda w: etprop.matmul(x * u.mV, w * u.nS).mantissa.sum())(w)
    close(g, jax.grad(lambda w: (x @ w).sum())(w))


@pytest.mark.parametrize("x_shape, w, b, match", [
    ((2, 2, I), rand(1, (I, O)), None, "'x'.*rank 3"),
    ((), rand(1, (I, O)), None, "'x'.*rank 0"),
    ((I + 1,), rand(1, (I, O)), None, "'x'"),
    ((B, I + 1), rand(1, (I, O)), None, "'x'"),
    ((I,), rand(1, (I, O, 1)), None, "'weight'"),
    ((I,), rand(1, (I, O)), rand(2, (O + 1,)), "'bias'"),
    ((I,), rand(1, (I, O)), rand(2, (1, O)), "'bias'"),
    ((I,), jnp.ones((I, O), jnp.int32), None, "'weight'.*floating"),
    ((I,), rand(1, (I, O)), jnp.ones((O,), jnp.int32), "'bias'.*floating"),
])
def test_matmul_bad_operands(x_shape, w, b, match):
    with pytest.raises(etprop.OperandError, match=match):
        etprop.matmul(jnp.ones(x_shape), w, b)


def test_matmul_non_callable_transform():
    x, w, _ = _mm_args(False, False)
    with pytest.raises(etprop.OperandError, match="'weight'.*callable"):
        etprop.matmul(x, w, weight_fn=3.0)


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_marked_in_jaxpr(bias):
    x, w, b = _mm_args(True, bias)
    if bias:
        check_marking(lambda x, w, b: etprop.matmul(x, w, b), (x, w, b), "matmul", ("weight", "bias"))
    else:
        check_marking(lambda x, w: etprop.matmul(x, w), (x, w), "matmul", ("weight",))


def test_matmul_marked_with_units():
    x, w, b = _mm_args(False, True)
    check_marking(lambda x, w, b: etprop.matmul(x, w, b), (x * u.mV, w * u.nS, b * u.pA), "matmul",
                  ("weight", "bias"))


def test_matmul_transformed_params_bias_unit():
    """apply_mantissa(transformed_params) must add the bias in the OUTPUT unit (mV), not in V."""
    x, w, b = _mm_args(False, True)
    check_apply_mantissa(lambda x, w, b: etprop.matmul(x, w, b), (x * u.mV, w, b * u.volt))
    check_apply_mantissa(lambda x, w, b: etprop.matmul(x, w, b, weight_fn=u.math.abs, bias_fn=u.math.abs),
                         (x * u.mV, w * u.nS, b * u.nA))


def test_matmul_out_to_param():
    x, w, b = _mm_args(False, True)
    _, call, ops = single_call(lambda x, w, b: etprop.matmul(x, w, b), x, w, b)
    x_m, tp, aux = per_sample(call, *ops)
    check_out_to_param(call, x_m, tp, aux, "weight")
    check_out_to_param(call, x_m, tp, aux, "bias")


def test_matmul_param_grad():
    x, w, b = _mm_args(False, True)
    _, call, ops = single_call(lambda x, w, b: etprop.matmul(x, w, b), x, w, b)
    x_m, tp, aux = per_sample(call, *ops)
    dy = rand(9, (O,))
    g = call.primitive.param_grad(call, x_m, dy, tp, aux)
    _, pull = jax.vjp(lambda p: call.apply_mantissa(x_m, p, aux), tp)
    close(g, pull(dy)[0])
    close(g["weight"], x[:, None] * dy[None, :])


@settings(max_examples=12, deadline=None)
@given(i=st.integers(1, 4), o=st.integers(1, 4), batch=st.sampled_from([None, 1, 3]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_property(i, o, batch, bias, seed):
    x = rand(seed, (i,) if batch is None else (batch, i))
    w = rand(seed + 1, (i, o))
    b = rand(seed + 2, (o,)) if bias else jnp.zeros((o,))
    op = (lambda x, w, b: etprop.matmul(x, w, b)) if bias else (lambda x, w, b: etprop.matmul(x, w) + b)
    plain = lambda x, w, b: x @ w + b  # noqa: E731
    ct = rand(seed + 3, (o,) if batch is None else (batch, o))
    argnums = (0, 1, 2) if bias else (0, 1)

    @jax.jit
    def both(x, w, b):
        return [(f(x, w, b), jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums)(x, w, b)) for f in (op, plain)]

    got, want = both(x, w, b)
    close(got, want)


# ============================================================================ grouped_matmul

def _gm_args(batched: bool, bias: bool = True):
    x = rand(10, (B, G, I) if batched else (G, I))
    w = rand(11, (G, I, O))
    b = rand(12, (G, O)) if bias else None
    return x, w, b


def _gm_plain(x, w, b):
    return jnp.einsum("...gi,gio->...go", x, w) + b


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_grouped_value(batched, bias):
    x, w, b = _gm_args(batched, bias)
    y = etprop.grouped_matmul(x, w, b)
    assert y.shape == ((B, G, O) if batched else (G, O))
    # per-group reference with plain matmuls
    want = jnp.stack([x[..., g, :] @ w[g] for g in range(G)], axis=-2)
    close(y, want + (0 if b is None else b))


@pytest.mark.parametrize("batched", [False, True])
def test_grouped_grad_jvp(batched):
    x, w, b = _gm_args(batched)
    op = lambda x, w, b: etprop.grouped_matmul(x, w, b)  # noqa: E731
    grads_match(op, _gm_plain, (x, w, b), (0, 1, 2))
    jvp_match(op, _gm_plain, (x, w, b))


def test_grouped_vmap_jit():
    x, w, b = _gm_args(True)
    close(jax.vmap(lambda xi: etprop.grouped_matmul(xi, w, b))(x), etprop.grouped_matmul(x, w, b))
    close(jax.jit(etprop.grouped_matmul)(x, w, b), _gm_plain(x, w, b))


def test_grouped_transforms():
    x, w, b = _gm_args(True)
    op = lambda x, w, b: etprop.grouped_matmul(x, w, b, weight_fn=jnp.tanh, bias_fn=jnp.exp)  # noqa: E731
    plain = lambda x, w, b: _gm_plain(x, jnp.tanh(w), jnp.exp(b))  # noqa: E731
    close(op(x, w, b), plain(x, w, b))
    grads_match(op, plain, (x, w, b), (0, 1, 2))


def test_grouped_units():
    x, w, b = _gm_args(False)
    y = etprop.grouped_matmul(x * u.mV, w)
    assert u.get_unit(y) == u.mV
    y = etprop.grouped_matmul(x * u.mV, w * u.nS)
    assert u.get_unit(y) == u.pA
    close(y.mantissa, _gm_plain(x, w, 0.0))
    y = etprop.grouped_matmul(x * u.mV, w, b * u.volt)
    close(y.mantissa, _gm_plain(x, w, 1000.0 * b), atol=1e-3)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        etprop.grouped_matmul(x * u.mV, w, b * u.second)


@pytest.mark.parametrize("x_shape, w_shape, b_shape, w_dtype, match", [
    ((I,), (G, I, O), None, jnp.float32, "'x'.*rank 1"),
    ((1, B, G, I), (G, I, O), None, jnp.float32, "'x'.*rank 4"),
    ((G, I + 1), (G, I, O), None, jnp.float32, "'x'"),
    ((G + 1, I), (G, I, O), None, jnp.float32, "'x'"),
    ((G, I), (I, O), None, jnp.float32, "'weight'"),
    ((G, I), (G, I, O), (O,), jnp.float32, "'bias'"),
    ((G, I), (G, I, O), None, jnp.int32, "'weight'.*floating"),
])
def test_grouped_bad_operands(x_shape, w_shape, b_shape, w_dtype, match):
    b = None if b_shape is None else jnp.ones(b_shape)
    with pytest.raises(etprop.OperandError, match=match):
        etprop.grouped_matmul(jnp.ones(x_shape), jnp.ones(w_shape, w_dtype), b)


def test_grouped_marking_and_out_to_param():
    x, w, b = _gm_args(False)
    check_marking(lambda x, w, b: etprop.grouped_matmul(x, w, b), (x, w, b), "grouped_matmul",
                  ("weight", "bias"))
    _, call, ops = single_call(lambda x, w, b: etprop.grouped_matmul(x, w, b), x, w, b)
    x_m, tp, aux = per_sample(call, *ops)
    check_out_to_param(call, x_m, tp, aux, "weight")
    check_out_to_param(call, x_m, tp, aux, "bias")


# ============================================================================ einsum

# (equation, x shape (unbatched), weight shape)
EINSUM_CASES = [
    ("i,io->o", (I,), (I, O)),
    ("i,oi->o", (I,), (O, I)),
    ("ij,jk->ik", (2, I), (I, O)),
    ("ij,kj->jk", (2, I), (O, I)),
    ("i,i->i", (I,), (I,)),
    ("i,j->ij", (I,), (O,)),
    ("gi,gio->go", (G, I), (G, I, O)),
]


@pytest.mark.parametrize("eq, xs, ws", EINSUM_CASES)
@pytest.mark.parametrize("batched", [False, True])
def test_einsum_value_grad_jvp(eq, xs, ws, batched):
    x = rand(20, ((B,) if batched else ()) + xs)
    w = rand(21, ws)
    op = lambda x, w: etprop.einsum(eq, x, w)  # noqa: E731
    # the batch axis gets its own letter in the plain reference
    plain_eq = "Z" + eq.replace("->", "->Z") if batched else eq
    plain = lambda x, w: jnp.einsum(plain_eq, x, w)  # noqa: E731
    close(op(x, w), plain(x, w))
    grads_match(op, plain, (x, w), (0, 1))
    jvp_match(op, plain, (x, w))


def test_einsum_ellipsis():
    x = rand(22, (B, 2, I))
    w = rand(23, (I, O))
    close(etprop.einsum("...i,io->...o", x, w), jnp.einsum("...i,io->...o", x, w))
    close(etprop.einsum("...i,io->...o", x[0, 0], w), x[0, 0] @ w)


def test_einsum_vmap_jit_transform():
    x = rand(24, (B, I))
    w = rand(25, (I, O))
    close(jax.vmap(lambda xi: etprop.einsum("i,io->o", xi, w))(x), etprop.einsum("i,io->o", x, w))
    close(jax.jit(lambda x, w: etprop.einsum("i,io->o", x, w))(x, w), x @ w)
    op = lambda x, w: etprop.einsum("i,io->o", x, w, weight_fn=jnp.sin)  # noqa: E731
    plain = lambda x, w: x @ jnp.sin(w)  # noqa: E731
    close(op(x, w), plain(x, w))
    grads_match(op, plain, (x, w), (0, 1))


def test_einsum_units():
    x = rand(26, (I,))
    w = rand(27, (I, O))
    y = etprop.einsum("i,io->o", x * u.mV, w)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, x @ w)
    y = etprop.einsum("i,io->o", x * u.mV, w * u.nS)
    assert u.get_unit(y) == u.pA
    close(y.mantissa, x @ w)


@pytest.mark.parametrize("eq, xs, ws, w_dtype, match", [
    ("i,io,o->o", (I,), (I, O), jnp.float32, "two operands"),
    ("i,io", (I,), (I, O), jnp.float32, "'->'|explicit output"),
    ("i,io->o", (2, 2, I), (I, O), jnp.float32, "'x'.*rank 3"),
    ("i,io->o", (I + 1,), (I, O), jnp.float32, "'x'.*'weight'"),
    ("i,io->o", (B, I + 1), (I, O), jnp.float32, "'x'.*'weight'"),
    ("i,io->o", (I,), (I, O, 1), jnp.float32, "'weight'"),
    ("i,io->o", (I,), (I, O), jnp.int32, "'weight'.*floating"),
    ("i,...o->o", (I,), (I, O), jnp.float32, "weight spec"),
    ("ii,io->o", (I, I), (I, O), jnp.float32, "distinct letters"),
])
def test_einsum_bad_operands(eq, xs, ws, w_dtype, match):
    with pytest.raises(etprop.OperandError, match=match):
        etprop.einsum(eq, jnp.ones(xs), jnp.ones(ws, w_dtype))


def test_einsum_equation_not_string():
    with pytest.raises(etprop.OperandError, match="equation"):
        etprop.einsum(None, jnp.ones(I), jnp.ones((I, O)))


def test_einsum_marking():
    x, w = rand(28, (B, I)), rand(29, (I, O))
    call = check_marking(lambda x, w: etprop.einsum("i,io->o", x, w), (x, w), "einsum", ("weight",))
    assert call.config_dict["batch"] != ""


@pytest.mark.parametrize("eq, xs, ws", [c for c in EINSUM_CASES if c[0] not in ("i,j->ij", "ij,jk->ik")])
@pytest.mark.parametrize("batched", [False, True])
def test_einsum_out_to_param_diagonal(eq, xs, ws, batched):
    x = rand(30, ((B,) if batched else ()) + xs)
    w = rand(31, ws)
    _, call, (x_op, params, aux) = single_call(lambda x, w: etprop.einsum(eq, x, w), x, w)
    # the rule sees one sample of a (possibly batched) call
    x_m, tp, aux = per_sample(call, x_op[0] if batched else x_op, params, aux)
    if batched:
        call_ps = single_call(lambda x, w: etprop.einsum(eq, x, w), x[0], w)[1]
        # the per-sample forward of the batched call is the unbatched einsum
        check_out_to_param(call_ps, x_m, tp, aux, "weight")
        # and the batched call's rule maps per-sample outputs the same way
        v = rand(32, call_ps.apply_mantissa(x_m, tp, aux).shape)
        close(jnp.broadcast_to(call.out_to_param("weight", v, tp, aux), w.shape),
              jnp.broadcast_to(call_ps.out_to_param("weight", v, tp, aux), w.shape))
    else:
        check_out_to_param(call, x_m, tp, aux, "weight")


@pytest.mark.parametrize("eq, xs, ws", [("i,j->ij", (I,), (O,)), ("ij,jk->ik", (2, I), (I, O)),
                                        ("...i,io->...o", (2, I), (I, O))])
def test_einsum_out_to_param_non_diagonal(eq, xs, ws):
    x, w = rand(33, xs), rand(34, ws)
    _, call, ops = single_call(lambda x, w: etprop.einsum(eq, x, w), x, w)
    x_m, tp, aux = per_sample(call, *ops)
    check_not_diagonal(call, x_m, tp, aux, "weight")
