"""Tests for the `sparse_matmul` ETP operator."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse as jsparse

import etprop

from _op_helpers import (check_apply_mantissa, check_marking, check_out_to_param, close, grads_match, jvp_match,
                         per_sample, rand, single_call)

I, O, B = 4, 5, 3


def _structure(seed=0):
    dense = np.array(rand(seed, (I, O)))
    dense[np.abs(dense) < 0.6] = 0.0
    dense[0, 0] = 1.5  # never empty
    idx = np.argwhere(dense != 0).astype(np.int32)
    mat = jsparse.BCOO((jnp.asarray(dense[idx[:, 0], idx[:, 1]]), jnp.asarray(idx)), shape=(I, O))
    assert 0 < mat.nse < I * O
    return mat


MAT = _structure()


def _dense(w, mat=MAT):
    return jsparse.BCOO((w, mat.indices), shape=mat.shape).todense()


def _plain(x, w, b=None):
    y = x @ _dense(w)
    return y if b is None else y + b


def _args(batched, seed=1):
    x = rand(seed, (B, I) if batched else (I,))
    w = rand(seed + 1, (MAT.nse,))
    b = rand(seed + 2, (O,))
    return x, w, b


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_value(batched, bias):
    x, w, b = _args(batched)
    b = b if bias else None
    y = etprop.sparse_matmul(x, w, sparse_mat=MAT, bias=b)
    assert y.shape == ((B, O) if batched else (O,))
    close(y, x @ jsparse.BCOO((w, MAT.indices), shape=MAT.shape).todense() + (0 if b is None else b))
    # with the structure's own values, it is x @ sparse_mat
    close(etprop.sparse_matmul(x, MAT.data, sparse_mat=MAT), x @ MAT.todense())


def test_bcsr_accepted():
    x, w, _ = _args(True)
    csr = jsparse.BCSR.from_bcoo(MAT)
    w_csr = csr.to_bcoo().data
    close(etprop.sparse_matmul(x, w_csr, sparse_mat=csr), x @ MAT.todense())


@pytest.mark.parametrize("batched", [False, True])
def test_grad_and_jvp(batched):
    x, w, b = _args(batched, seed=3)
    op = lambda x, w, b: etprop.sparse_matmul(x, w, sparse_mat=MAT, bias=b)  # noqa: E731
    grads_match(op, _plain, (x, w, b), (0, 1, 2))
    jvp_match(op, _plain, (x, w, b))
    # the weight gradient is the dense gradient gathered at the stored positions
    gw = jax.jit(jax.grad(lambda w: op(x, w, b).sum()))(w)
    gd = jax.jit(jax.grad(lambda d: (x @ d).sum()))(_dense(w))
    close(gw, gd[MAT.indices[:, 0], MAT.indices[:, 1]])


def test_vmap_and_jit():
    x, w, b = _args(True, seed=4)
    op = lambda x, w, b: etprop.sparse_matmul(x, w, sparse_mat=MAT, bias=b)  # noqa: E731
    close(jax.vmap(lambda xi: op(xi, w, b))(x), op(x, w, b))
    close(jax.jit(op)(x, w, b), _plain(x, w, b))


def test_transforms():
    x, w, b = _args(True, seed=5)
    op = lambda x, w, b: etprop.sparse_matmul(x, w, sparse_mat=MAT, bias=b, weight_fn=jnp.abs,  # noqa: E731
                                              bias_fn=jnp.tanh)
    plain = lambda x, w, b: _plain(x, jnp.abs(w), jnp.tanh(b))  # noqa: E731
    close(op(x, w, b), plain(x, w, b))
    assert not np.allclose(op(x, w, b), _plain(x, w, b), atol=1e-3)
    grads_match(op, plain, (x, w, b), (0, 1, 2))


def test_units():
    x, w, b = _args(False, seed=6)
    y = etprop.sparse_matmul(x * u.mV, w, sparse_mat=MAT)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, _plain(x, w))
    y = etprop.sparse_matmul(x * u.mV, w * u.nS, sparse_mat=MAT)
    assert u.get_unit(y) == u.pA
    close(y.mantissa, _plain(x, w))
    y = etprop.sparse_matmul(x * u.mV, w, sparse_mat=MAT, bias=b * u.volt)
    close(y.mantissa, _plain(x, w, 1000.0 * b), atol=1e-3)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        etprop.sparse_matmul(x * u.mV, w, sparse_mat=MAT, bias=b * u.nS)
    check_apply_mantissa(lambda x, w, b: etprop.sparse_matmul(x, w, sparse_mat=MAT, bias=b),
                         (x * u.mV, w, b * u.volt))


def test_bad_structure():
    x, w, _ = _args(False)
    with pytest.raises(etprop.OperandError, match="'sparse_mat'.*BCOO"):
        etprop.sparse_matmul(x, w, sparse_mat=MAT.todense())
    # n_batch=1: two stacked (I, O) structures
    batched_mat = jsparse.BCOO((jnp.ones((2, MAT.nse)), jnp.stack([MAT.indices] * 2)), shape=(2, I, O))
    assert batched_mat.n_batch == 1
    with pytest.raises(etprop.OperandError, match="'sparse_mat'"):
        etprop.sparse_matmul(x, w, sparse_mat=batched_mat)
    # n_dense=1: whole rows stored densely
    dense_blocks = jsparse.BCOO((jnp.ones((I, O)), jnp.arange(I, dtype=jnp.int32)[:, None]), shape=(I, O))
    assert dense_blocks.n_dense == 1
    with pytest.raises(etprop.OperandError, match="'sparse_mat'"):
        etprop.sparse_matmul(x, w, sparse_mat=dense_blocks)


@pytest.mark.parametrize("x_shape, w, b, match", [
    ((2, B, I), rand(0, (MAT.nse,)), None, "'x'.*rank 3"),
    ((I + 1,), rand(0, (MAT.nse,)), None, "'x'"),
    ((B, I - 1), rand(0, (MAT.nse,)), None, "'x'"),
    ((I,), rand(0, (MAT.nse + 1,)), None, "'weight'"),
    ((I,), rand(0, (I, O)), None, "'weight'"),
    ((I,), jnp.ones((MAT.nse,), jnp.int32), None, "'weight'.*floating"),
    ((I,), rand(0, (MAT.nse,)), jnp.ones((O + 1,)), "'bias'"),
])
def test_bad_operands(x_shape, w, b, match):
    with pytest.raises(etprop.OperandError, match=match):
        etprop.sparse_matmul(jnp.ones(x_shape), w, sparse_mat=MAT, bias=b)


def test_marking_and_out_to_param():
    x, w, b = _args(False, seed=7)
    op = lambda x, w, b: etprop.sparse_matmul(x, w, sparse_mat=MAT, bias=b)  # noqa: E731
    call = check_marking(op, (x, w, b), "sparse_matmul", ("weight", "bias"), aux_names=("indices",))
    assert call.config_dict["shape"] == (I, O)
    _, call, ops = single_call(op, x, w, b)
    x_m, tp, aux = per_sample(call, *ops)
    np.testing.assert_array_equal(np.asarray(aux["indices"]), np.asarray(MAT.indices))
    check_out_to_param(call, x_m, tp, aux, "weight")
    check_out_to_param(call, x_m, tp, aux, "bias")


@pytest.mark.parametrize("n", [1, 8, 20, 24])
def test_batch_summed_parameter_gradient_equals_the_vmapped_pullback(n, x64):
    """`sparse_matmul`'s ``param_grad_sum`` (the online rules' batch sums: rows unrolled, then
    blocks of eight) is the pullback of the forward vmapped over ``n`` rows, in float64; with a
    padded (out-of-bounds) stored value as BCOO writes them."""
    from etprop.operators.sparse import SPARSE_MATMUL

    idx = np.concatenate([np.asarray(MAT.indices), [[I, O]]]).astype(np.int32)  # one padding entry
    w = jnp.asarray(rand(1, (idx.shape[0],)), jnp.float64)
    b = jnp.asarray(rand(2, (O,)), jnp.float64)
    x = jnp.asarray(rand(3, (n, I)), jnp.float64)
    dy = jnp.asarray(rand(4, (n, O)), jnp.float64)
    aux, config = {"indices": jnp.asarray(idx)}, {"shape": (I, O), "in_bounds": False}
    f = lambda p: jax.vmap(lambda xv: SPARSE_MATMUL.forward(xv, p, aux, **config))(x)
    want = jax.vjp(f, {"weight": w, "bias": b})[1](dy)[0]
    got = SPARSE_MATMUL.param_grad_sum(x, dy, {"weight": w, "bias": b}, aux, config)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12)
