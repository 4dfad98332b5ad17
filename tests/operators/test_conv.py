"""Tests for the `conv` ETP operator."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import etprop

from _op_helpers import (check_apply_mantissa, check_marking, check_not_diagonal, close, grads_match, jvp_match,
                         per_sample, rand, single_call)

B, CIN, COUT = 2, 2, 3
DN1 = ("NWC", "WIO", "NWC")
DN2 = ("NHWC", "HWIO", "NHWC")


def _plain(x, k, b=None, *, batched, strides=None, padding="SAME", dn=None, lhs_dilation=None,
           rhs_dilation=None, feature_group_count=1):
    n = k.ndim - 2
    dn = dn or (DN1 if n == 1 else DN2)
    if not batched:
        x = jnp.expand_dims(x, dn[0].index("N"))
    y = lax.conv_general_dilated(x, k, window_strides=strides or (1,) * n, padding=padding,
                                 lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dn,
                                 feature_group_count=feature_group_count)
    if b is not None:
        shape = [1] * y.ndim
        shape[dn[2].index("C")] = -1
        y = y + b.reshape(shape)
    if not batched:
        y = jnp.squeeze(y, dn[2].index("N"))
    return y


def _args(n: int, batched: bool, seed=0, bias=True):
    spatial = (6,) if n == 1 else (5, 4)
    window = (3,) if n == 1 else (3, 2)
    x = rand(seed, ((B,) if batched else ()) + spatial + (CIN,))
    k = rand(seed + 1, window + (CIN, COUT))
    b = rand(seed + 2, (COUT,)) if bias else None
    return x, k, b


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_value(n, batched, bias):
    x, k, b = _args(n, batched, bias=bias)
    y = etprop.conv(x, k, b)
    want = _plain(x, k, b, batched=batched)
    assert y.shape == want.shape
    close(y, want)


@pytest.mark.parametrize("opts", [
    dict(strides=2, padding="VALID"),
    dict(strides=(2, 1), padding=((1, 0), (0, 2))),
    dict(padding="SAME_LOWER", rhs_dilation=(2, 1)),
    dict(lhs_dilation=2, padding=((1, 1), (0, 1))),
], ids=["stride-valid", "stride-pairs", "same-lower-dil", "lhs-dil"])
def test_value_options_2d(opts):
    x, k, b = _args(2, True, seed=3)
    y = etprop.conv(x, k, b, **opts)
    to_tuple = lambda v: None if v is None else ((v,) * 2 if isinstance(v, int) else v)  # noqa: E731
    want = _plain(x, k, b, batched=True, strides=to_tuple(opts.get("strides")), padding=opts["padding"],
                  lhs_dilation=to_tuple(opts.get("lhs_dilation")), rhs_dilation=to_tuple(opts.get("rhs_dilation")))
    close(y, want)


def test_value_feature_groups_and_channels_first():
    x = rand(4, (B, 4, 7))           # NCW: 4 input channels
    k = rand(5, (3, 2, 6))           # WIO with groups=2: 4 / 2 = 2 in, 6 out
    b = rand(6, (6,))
    dn = ("NCW", "WIO", "NCW")
    y = etprop.conv(x, k, b, dimension_numbers=dn, feature_group_count=2)
    want = _plain(x, k, b, batched=True, dn=dn, feature_group_count=2)
    assert y.shape == (B, 6, 7)
    close(y, want)
    # unbatched channels-first
    y0 = etprop.conv(x[0], k, b, dimension_numbers=dn, feature_group_count=2)
    close(y0, want[0])


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("batched", [False, True])
def test_grad_and_jvp(n, batched):
    x, k, b = _args(n, batched, seed=7)
    op = lambda x, k, b: etprop.conv(x, k, b, strides=2)  # noqa: E731
    plain = lambda x, k, b: _plain(x, k, b, batched=batched, strides=(2,) * n)  # noqa: E731
    grads_match(op, plain, (x, k, b), (0, 1, 2))
    jvp_match(op, plain, (x, k, b))


def test_vmap_and_jit():
    x, k, b = _args(2, True, seed=8)
    close(jax.vmap(lambda xi: etprop.conv(xi, k, b))(x), etprop.conv(x, k, b))
    close(jax.jit(lambda x, k, b: etprop.conv(x, k, b, padding="VALID"))(x, k, b),
          _plain(x, k, b, batched=True, padding="VALID"))


def test_transforms():
    x, k, b = _args(1, True, seed=9)
    op = lambda x, k, b: etprop.conv(x, k, b, kernel_fn=jnp.tanh, bias_fn=jax.nn.softplus)  # noqa: E731
    plain = lambda x, k, b: _plain(x, jnp.tanh(k), jax.nn.softplus(b), batched=True)  # noqa: E731
    close(op(x, k, b), plain(x, k, b))
    assert not np.allclose(op(x, k, b), _plain(x, k, b, batched=True), atol=1e-3)
    grads_match(op, plain, (x, k, b), (0, 1, 2))


def test_units():
    x, k, b = _args(1, False, seed=10)
    want = _plain(x, k, None, batched=False)
    y = etprop.conv(x * u.mV, k)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, want)
    y = etprop.conv(x * u.mV, k * u.nS)
    assert u.get_unit(y) == u.pA
    close(y.mantissa, want)
    y = etprop.conv(x * u.mV, k, b * u.volt)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, want + 1000.0 * b, atol=1e-3)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        etprop.conv(x * u.mV, k, b * u.nS)
    check_apply_mantissa(lambda x, k, b: etprop.conv(x, k, b), (x * u.mV, k, b * u.volt))


@pytest.mark.parametrize("kwargs, match", [
    (dict(padding="FULL"), "'padding'"),
    (dict(padding=[(1, 1)]), "'padding'.*2"),
    (dict(padding=1), "'padding'"),
    (dict(padding=[(1, 1, 1), (0, 0, 0)]), "'padding'"),
    (dict(strides=(1, 1, 1)), "'strides'"),
    (dict(rhs_dilation=(1,)), "'rhs_dilation'"),
    (dict(dimension_numbers=("NWC", "WIO", "NWC")), "'dimension_numbers'"),
    (dict(dimension_numbers=("NHWC", "HWIO")), "'dimension_numbers'"),
    (dict(dimension_numbers=("NHWX", "HWIO", "NHWC")), "'dimension_numbers'"),
    (dict(dimension_numbers=("NHWC", "HWIO", "NDWC")), "'dimension_numbers'"),
])
def test_bad_options(kwargs, match):
    x, k, _ = _args(2, True)
    with pytest.raises(etprop.OperandError, match=match):
        etprop.conv(x, k, **kwargs)


@pytest.mark.parametrize("x_shape, k_shape, b_shape, k_dtype, match", [
    ((B, 5, 4, 6, CIN), (3, 2, CIN, COUT), None, jnp.float32, "'x'.*rank"),
    ((5, CIN), (3, 2, CIN, COUT), None, jnp.float32, "'x'.*rank"),
    ((B, 6, CIN), (3, COUT), None, jnp.float32, "'kernel'"),
    ((B, 6, CIN), (1, 1, 1, 3, CIN, COUT), None, jnp.float32, "'kernel'"),
    ((B, 6, CIN + 1), (3, CIN, COUT), None, jnp.float32, "'x'.*input channels"),
    ((B, 6, CIN), (3, CIN, COUT), (COUT + 1,), jnp.float32, "'bias'"),
    ((B, 6, CIN), (3, CIN, COUT), None, jnp.int32, "'kernel'.*floating"),
])
def test_bad_operands(x_shape, k_shape, b_shape, k_dtype, match):
    b = None if b_shape is None else jnp.ones(b_shape)
    with pytest.raises(etprop.OperandError, match=match):
        etprop.conv(jnp.ones(x_shape), jnp.ones(k_shape, k_dtype), b)


def test_marking_and_no_out_to_param():
    x, k, b = _args(1, False, seed=11)
    call = check_marking(lambda x, k, b: etprop.conv(x, k, b, strides=1, padding="SAME"), (x, k, b), "conv",
                         ("kernel", "bias"))
    assert call.config_dict["batched"] is False
    assert call.config_dict["dimension_numbers"] == DN1
    _, call, ops = single_call(lambda x, k, b: etprop.conv(x, k, b), x, k, b)
    x_m, tp, aux = per_sample(call, *ops)
    # a kernel element drives many output positions: no D-RTRL rule; neither is one declared for the bias
    check_not_diagonal(call, x_m, tp, aux, "kernel")
    check_not_diagonal(call, x_m, tp, aux, "bias")
