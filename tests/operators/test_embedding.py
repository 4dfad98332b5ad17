"""Tests for the `embedding` ETP operator."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop

from _op_helpers import (check_apply_mantissa, check_marking, check_out_to_param, close, grads_match, per_sample,
                         rand, single_call)

V, F = 5, 3
IDX = jnp.array([4, 0, 2, 2], jnp.int32)


def _w(seed=0):
    return rand(seed, (V, F))


@pytest.mark.parametrize("idx", [jnp.array(3, jnp.int32), IDX], ids=["scalar", "batched"])
def test_value(idx):
    w = _w()
    y = etprop.embedding(idx, w)
    assert y.shape == np.shape(idx) + (F,)
    close(y, w[idx])


def test_grad_and_jvp_wrt_weight():
    w = _w(1)
    op = lambda w: etprop.embedding(IDX, w)  # noqa: E731
    plain = lambda w: w[IDX]  # noqa: E731
    grads_match(op, plain, (w,), 0, eager=True)
    # the repeated index 2 accumulates, unused row 1 and 3 get zero
    g = jax.grad(lambda w: etprop.embedding(IDX, w).sum())(w)
    close(g[:, 0], jnp.array([1.0, 0.0, 2.0, 0.0, 1.0]))
    t = rand(2, (V, F))
    y, ty = jax.jvp(op, (w,), (t,))
    close(y, w[IDX])
    close(ty, t[IDX])


def test_vmap_and_jit():
    w = _w(3)
    close(jax.vmap(lambda i: etprop.embedding(i, w))(IDX), etprop.embedding(IDX, w))
    close(jax.jit(etprop.embedding)(IDX, w), w[IDX])
    g = jax.jit(jax.grad(lambda w: jnp.sum(etprop.embedding(IDX, w) ** 2)))(w)
    close(g, jax.grad(lambda w: jnp.sum(w[IDX] ** 2))(w))


def test_transform():
    w = _w(4)
    op = lambda w: etprop.embedding(IDX, w, weight_fn=jnp.tanh)  # noqa: E731
    plain = lambda w: jnp.tanh(w)[IDX]  # noqa: E731
    close(op(w), plain(w))
    grads_match(op, plain, (w,), 0)


def test_units():
    w = _w(5)
    y = etprop.embedding(IDX, w * u.mV)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, w[IDX])
    y = etprop.embedding(IDX, w)
    assert not isinstance(y, u.Quantity)


def test_traced_out_of_range_gives_nan_rows():
    w = _w(6)
    y = jax.jit(etprop.embedding)(jnp.array([1, V, -1], jnp.int32), w)
    close(y[0], w[1])
    assert bool(jnp.all(jnp.isnan(y[1]))) and bool(jnp.all(jnp.isnan(y[2])))


@pytest.mark.parametrize("idx, w, match", [
    (jnp.array([1.0, 2.0]), _w(), "'indices'.*integer"),
    (jnp.array([0, V], jnp.int32), _w(), r"'indices'.*\[0, 5\)"),
    (jnp.array([-1, 0], jnp.int32), _w(), r"'indices'.*\[0, 5\)"),
    (jnp.array(V + 3, jnp.int32), _w(), "'indices'"),
    (jnp.zeros((2, 2), jnp.int32), _w(), "'indices'.*rank 2"),
    (IDX, jnp.ones((V,)), "'weight'.*rank 1"),
    (IDX, jnp.ones((V, F), jnp.int32), "'weight'.*floating"),
])
def test_bad_operands(idx, w, match):
    with pytest.raises(etprop.OperandError, match=match):
        etprop.embedding(idx, w)


def test_marking_and_out_to_param():
    w = _w(7)
    check_marking(lambda i, w: etprop.embedding(i, w), (IDX, w), "embedding", ("weight",))
    check_apply_mantissa(lambda i, w: etprop.embedding(i, w, weight_fn=u.math.abs), (IDX, w * u.mV))
    idx = jnp.array(2, jnp.int32)
    _, call, ops = single_call(lambda i, w: etprop.embedding(i, w), idx, w)
    x_m, tp, aux = per_sample(call, *ops)
    check_out_to_param(call, x_m, tp, aux, "weight")
