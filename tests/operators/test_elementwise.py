"""Tests for the `element_wise` ETP operator."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop

from _op_helpers import (check_marking, check_out_to_param, close, grads_match, jvp_match, per_sample, rand,
                         single_call)

N = 5


def test_value_identity_and_shapes():
    for shape in [(N,), (2, 3), ()]:
        w = rand(0, shape)
        y = etprop.element_wise(w)
        assert y.shape == shape
        close(y, w)


def test_value_transform():
    w = rand(1, (N,))
    close(etprop.element_wise(w, weight_fn=jax.nn.sigmoid), jax.nn.sigmoid(w))
    assert not np.allclose(etprop.element_wise(w, weight_fn=jax.nn.sigmoid), w)


def test_grad_is_wrt_raw_weight():
    w = rand(2, (N,))
    x = rand(3, (N,))
    # used element-wise in a model: v * decay
    op = lambda w, x: x * etprop.element_wise(w, weight_fn=jax.nn.sigmoid)  # noqa: E731
    plain = lambda w, x: x * jax.nn.sigmoid(w)  # noqa: E731
    close(op(w, x), plain(w, x))
    grads_match(op, plain, (w, x), (0, 1), eager=True)
    grads_match(lambda w: etprop.element_wise(w) ** 2, lambda w: w ** 2, (w,), 0)


def test_jvp():
    w = rand(4, (N,))
    jvp_match(lambda w: etprop.element_wise(w, weight_fn=jnp.tanh), jnp.tanh, (w,))


def test_vmap_and_jit():
    ws = rand(5, (3, N))
    f = lambda w: etprop.element_wise(w, weight_fn=jnp.exp)  # noqa: E731
    close(jax.vmap(f)(ws), jnp.exp(ws))
    close(jax.vmap(f)(ws), f(ws))
    close(jax.jit(f)(ws[0]), jnp.exp(ws[0]))


def test_units():
    w = rand(6, (N,))
    y = etprop.element_wise(w * u.mV)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, w)
    # a transform can attach or change the unit; the result carries it
    y = etprop.element_wise(w, weight_fn=lambda w: jnp.exp(w) * u.nS)
    assert u.get_unit(y) == u.nS
    close(y.mantissa, jnp.exp(w))
    # gradient through the unit-carrying op is w.r.t. the raw mantissa
    g = jax.grad(lambda m: etprop.element_wise(m * u.ms, weight_fn=lambda t: t * 2).mantissa.sum())(w)
    close(g, jnp.full((N,), 2.0))


@pytest.mark.parametrize("w, match", [
    (jnp.ones((N,), jnp.int32), "'weight'.*floating"),
    (jnp.ones((N,), bool), "'weight'.*floating"),
])
def test_bad_operands(w, match):
    with pytest.raises(etprop.OperandError, match=match):
        etprop.element_wise(w)


def test_non_callable_transform():
    with pytest.raises(etprop.OperandError, match="'weight'.*callable"):
        etprop.element_wise(jnp.ones(N), weight_fn="sigmoid")


def test_marking_and_rules():
    w = rand(7, (2, 3))
    check_marking(lambda w: etprop.element_wise(w, weight_fn=jax.nn.sigmoid), (w,), "element_wise", ("weight",))
    _, call, (x, params, aux) = single_call(lambda w: etprop.element_wise(w, weight_fn=jax.nn.sigmoid), w)
    assert x is None
    x_m, tp, aux = per_sample(call, x, params, aux)
    close(tp["weight"], jax.nn.sigmoid(w))
    check_out_to_param(call, x_m, tp, aux, "weight")
    # the declared param_grad equals the vjp of the forward
    dy = rand(8, (2, 3))
    g = call.primitive.param_grad(call, x_m, dy, tp, aux)
    _, pull = jax.vjp(lambda p: call.apply_mantissa(x_m, p, aux), tp)
    close(g, pull(dy)[0])
