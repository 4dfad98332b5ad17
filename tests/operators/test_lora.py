"""Tests for the `lora_matmul` ETP operator."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop

from _op_helpers import (check_apply_mantissa, check_marking, check_not_diagonal, check_out_to_param, close,
                         grads_match, jvp_match, per_sample, rand, single_call)

I, R, O, BATCH = 4, 2, 3, 2
ALPHA = 0.5


def _args(batched, seed=0):
    x = rand(seed, (BATCH, I) if batched else (I,))
    Bm = rand(seed + 1, (I, R))
    A = rand(seed + 2, (R, O))
    b = rand(seed + 3, (O,))
    return x, Bm, A, b


def _plain(x, Bm, A, b=None, alpha=ALPHA):
    y = alpha * (x @ Bm @ A)
    return y if b is None else y + b


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_value(batched, bias):
    x, Bm, A, b = _args(batched)
    b = b if bias else None
    y = etprop.lora_matmul(x, Bm, A, alpha=ALPHA, bias=b)
    assert y.shape == ((BATCH, O) if batched else (O,))
    close(y, _plain(x, Bm, A, b))
    # alpha defaults to 1
    close(etprop.lora_matmul(x, Bm, A), x @ Bm @ A)


@pytest.mark.parametrize("batched", [False, True])
def test_grad_and_jvp(batched):
    x, Bm, A, b = _args(batched, seed=4)
    op = lambda x, Bm, A, b: etprop.lora_matmul(x, Bm, A, alpha=ALPHA, bias=b)  # noqa: E731
    grads_match(op, _plain, (x, Bm, A, b), (0, 1, 2, 3))
    jvp_match(op, _plain, (x, Bm, A, b))


def test_vmap_and_jit():
    x, Bm, A, b = _args(True, seed=5)
    op = lambda x, Bm, A, b: etprop.lora_matmul(x, Bm, A, alpha=ALPHA, bias=b)  # noqa: E731
    close(jax.vmap(lambda xi: op(xi, Bm, A, b))(x), op(x, Bm, A, b))
    close(jax.jit(op)(x, Bm, A, b), _plain(x, Bm, A, b))


def test_transforms():
    x, Bm, A, b = _args(True, seed=6)
    op = lambda x, Bm, A, b: etprop.lora_matmul(x, Bm, A, alpha=ALPHA, bias=b, b_fn=jnp.tanh,  # noqa: E731
                                                a_fn=jnp.abs, bias_fn=jnp.exp)
    plain = lambda x, Bm, A, b: _plain(x, jnp.tanh(Bm), jnp.abs(A), jnp.exp(b))  # noqa: E731
    close(op(x, Bm, A, b), plain(x, Bm, A, b))
    assert not np.allclose(op(x, Bm, A, b), _plain(x, Bm, A, b), atol=1e-3)
    grads_match(op, plain, (x, Bm, A, b), (0, 1, 2, 3))


def test_units():
    x, Bm, A, b = _args(False, seed=7)
    y = etprop.lora_matmul(x * u.mV, Bm, A, alpha=ALPHA)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, _plain(x, Bm, A))
    # mV through a dimensionless bottleneck into nS: pA
    y = etprop.lora_matmul(x * u.mV, Bm, A * u.nS, alpha=ALPHA)
    assert u.get_unit(y) == u.pA
    close(y.mantissa, _plain(x, Bm, A))
    y = etprop.lora_matmul(x * u.mV, Bm, A, alpha=ALPHA, bias=b * u.volt)
    close(y.mantissa, _plain(x, Bm, A, 1000.0 * b), atol=1e-3)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        etprop.lora_matmul(x * u.mV, Bm, A, bias=b * u.nS)
    check_apply_mantissa(lambda x, Bm, A, b: etprop.lora_matmul(x, Bm, A, alpha=ALPHA, bias=b),
                         (x * u.mV, Bm, A, b * u.volt))


@pytest.mark.parametrize("x_shape, B_shape, A_shape, b_shape, match", [
    ((2, BATCH, I), (I, R), (R, O), None, "'x'.*rank 3"),
    ((I + 1,), (I, R), (R, O), None, "'x'"),
    ((I,), (I, R, 1), (R, O), None, "'B'"),
    ((I,), (I, R), (O,), None, "'A'"),
    ((I,), (I, R), (R + 1, O), None, "rank.*'A'"),
    ((I,), (I, R), (R, O), (O + 1,), "'bias'"),
])
def test_bad_operands(x_shape, B_shape, A_shape, b_shape, match):
    b = None if b_shape is None else jnp.ones(b_shape)
    with pytest.raises(etprop.OperandError, match=match):
        etprop.lora_matmul(jnp.ones(x_shape), jnp.ones(B_shape), jnp.ones(A_shape), bias=b)


@pytest.mark.parametrize("which", ["B", "A"])
def test_integer_params(which):
    Bm = jnp.ones((I, R), jnp.int32 if which == "B" else jnp.float32)
    A = jnp.ones((R, O), jnp.int32 if which == "A" else jnp.float32)
    with pytest.raises(etprop.OperandError, match=f"'{which}'.*floating"):
        etprop.lora_matmul(jnp.ones(I), Bm, A)


def test_marking_and_out_to_param():
    x, Bm, A, b = _args(False, seed=8)
    op = lambda x, Bm, A, b: etprop.lora_matmul(x, Bm, A, alpha=ALPHA, bias=b)  # noqa: E731
    call = check_marking(op, (x, Bm, A, b), "lora_matmul", ("A", "B", "bias"))
    assert call.config_dict["alpha"] == ALPHA
    _, call, ops = single_call(op, x, Bm, A, b)
    x_m, tp, aux = per_sample(call, *ops)
    check_out_to_param(call, x_m, tp, aux, "A")
    check_out_to_param(call, x_m, tp, aux, "bias")
    check_not_diagonal(call, x_m, tp, aux, "B")
