"""Tests for the custom-primitive API: ETPPrimitive, register_primitive, lookup_call, ETPCall."""

from __future__ import annotations

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop import primitive as P

from _op_helpers import check_out_to_param, close, grads_match, marked_calls, per_sample, rand, single_call

I, O, B = 3, 2, 4
SCALE = 2.0


def _scaled_tanh_forward(x, params, aux, *, scale):
    y = scale * jnp.tanh(x @ params["weight"])
    return y if "bias" not in params else y + params["bias"]


def _validate(x, params, aux, config):
    w = params["weight"]
    if np.ndim(w) != 2:
        raise etprop.OperandError(f"scaled_tanh: 'weight' must be rank 2, got shape {np.shape(w)}")


SCALED_TANH = etprop.register_primitive(etprop.ETPPrimitive(
    "test_scaled_tanh_matmul", _scaled_tanh_forward, param_names=("weight", "bias"), validate=_validate,
    out_to_param={"weight": lambda v, p, a, c: v[..., None, :], "bias": lambda v, p, a, c: v},
    doc="scale * tanh(x @ w) + b",
))


def _plain(x, w, b=None, scale=SCALE):
    y = scale * jnp.tanh(x @ w)
    return y if b is None else y + b


def _op(x, w, b=None, **fns):
    return SCALED_TANH.bind(x, {"weight": w, "bias": b}, fns=fns, scale=SCALE)


def _args(batched=True, seed=0):
    return rand(seed, (B, I) if batched else (I,)), rand(seed + 1, (I, O)), rand(seed + 2, (O,))


# ----------------------------------------------------------------------------- a custom operator

@pytest.mark.parametrize("batched", [False, True])
def test_custom_value_grad_jvp(batched):
    x, w, b = _args(batched)
    close(_op(x, w, b), _plain(x, w, b))
    close(_op(x, w), _plain(x, w))
    grads_match(_op, _plain, (x, w, b), (0, 1, 2))
    t = (rand(5, x.shape), rand(6, w.shape), rand(7, b.shape))
    y1, t1 = jax.jvp(_op, (x, w, b), t)
    y2, t2 = jax.jvp(_plain, (x, w, b), t)
    close(y1, y2)
    close(t1, t2)


def test_custom_jit_vmap():
    x, w, b = _args()
    close(jax.jit(_op)(x, w, b), _plain(x, w, b))
    close(jax.vmap(lambda xi: _op(xi, w, b))(x), _op(x, w, b))
    # vmap over the weight as well
    ws = jnp.stack([w, 2 * w])
    close(jax.vmap(lambda wi: _op(x, wi, b))(ws), jnp.stack([_plain(x, w, b), _plain(x, 2 * w, b)]))


def test_custom_transforms_grad_wrt_raw():
    x, w, b = _args()
    op = lambda x, w, b: _op(x, w, b, weight=jnp.abs, bias=jnp.exp)  # noqa: E731
    plain = lambda x, w, b: _plain(x, jnp.abs(w), jnp.exp(b))  # noqa: E731
    close(op(x, w, b), plain(x, w, b))
    grads_match(op, plain, (x, w, b), (0, 1, 2))


def test_custom_units():
    x, w, b = _args()
    y = _op(x * u.mV, w * u.nS)
    assert u.get_unit(y) == u.pA
    close(y.mantissa, _plain(x, w))
    y = _op(x * u.mV, w, b * u.volt)
    assert u.get_unit(y) == u.mV
    close(y.mantissa, _plain(x, w, 1000.0 * b), atol=1e-3)
    with pytest.raises(etprop.OperandError, match="'bias'"):
        _op(x * u.mV, w, b * u.nS)


def test_custom_out_unit_rule():
    prim = etprop.ETPPrimitive("test_gain", lambda x, p, a: x * p["weight"], param_names=("weight",),
                               out_unit=lambda xu, units: u.mV)
    y = prim.bind(jnp.ones(3), {"weight": rand(0, (3,))})
    assert u.get_unit(y) == u.mV
    close(y.mantissa, rand(0, (3,)))


def test_custom_found_by_lookup_call():
    x, w, b = _args()
    closed, found = marked_calls(lambda x, w, b: jnp.sin(_op(x, w, b)) + 1.0, x, w, b)
    assert len(found) == 1
    eqn, call = found[0]
    assert call.primitive is SCALED_TANH
    assert call.primitive.name == "test_scaled_tanh_matmul"
    assert call.config_dict == {"scale": SCALE}
    assert call.param_paths() == ("bias", "weight")
    xv, pv, av = call.unflatten(eqn.invars)
    assert xv is eqn.invars[0] and set(pv) == {"weight", "bias"} and av == {}
    # non-ETP equations are not matched
    others = [e for e in closed.jaxpr.eqns if e is not eqn]
    assert others and all(etprop.lookup_call(e) is None for e in others)
    # a plain jit, or a jit whose name only looks like a mark, is not matched
    closed = jax.make_jaxpr(jax.jit(lambda x: x * 2))(x)
    assert etprop.lookup_call(closed.jaxpr.eqns[0]) is None

    # a jit whose name looks like a mark with a real call id but another primitive name, or no prefix
    for fake in (f"{P.MARK_PREFIX}fake__{call.call_id}", f"{P.MARK_PREFIX}fake__999999",
                 f"fake__{call.call_id}", f"{P.MARK_PREFIX}{call.primitive.name}__x"):
        def f(x):
            return x + 1

        f.__name__ = f.__qualname__ = fake
        closed = jax.make_jaxpr(jax.jit(f))(x)
        assert closed.jaxpr.eqns[0].params["name"] == fake
        assert etprop.lookup_call(closed.jaxpr.eqns[0]) is None


def test_custom_out_to_param_rule_and_default_param_grad():
    x, w, b = _args(False, seed=3)
    _, call, ops = single_call(lambda x, w, b: _op(x, w, b), x, w, b)
    x_m, tp, aux = per_sample(call, *ops)
    check_out_to_param(call, x_m, tp, aux, "weight")
    check_out_to_param(call, x_m, tp, aux, "bias")
    # default param_grad (jax.vjp) equals the hand-written pullback
    dy = rand(4, (O,))
    g = call.primitive.param_grad(call, x_m, dy, tp, aux)
    dpre = dy * SCALE * (1 - jnp.tanh(x @ w) ** 2)
    close(g["weight"], jnp.outer(x, dpre))
    close(g["bias"], dy)


def test_default_param_grad_is_outer_product_for_linear_op():
    lin = etprop.ETPPrimitive("test_linear_default_grad", lambda x, p, a: x @ p["weight"],
                              param_names=("weight",))
    x, w = rand(0, (I,)), rand(1, (I, O))
    _, call, ops = single_call(lambda x, w: lin.bind(x, {"weight": w}), x, w)
    x_m, tp, aux = per_sample(call, *ops)
    dy = rand(2, (O,))
    g = call.primitive.param_grad(call, x_m, dy, tp, aux)
    assert set(g) == {"weight"}
    close(g["weight"], x[:, None] * dy[None, :])
    # an overriding param_grad is used instead of the vjp
    seen = []
    over = etprop.ETPPrimitive("test_linear_custom_grad", lambda x, p, a: x @ p["weight"],
                               param_names=("weight",),
                               param_grad=lambda x, dy, p, a, c: seen.append(1) or {"weight": jnp.outer(x, dy)})
    _, call2, ops2 = single_call(lambda x, w: over.bind(x, {"weight": w}), x, w)
    close(call2.primitive.param_grad(call2, x_m, dy, tp, aux), g)
    assert seen == [1]


# ----------------------------------------------------------------------------- registration and errors

def test_register_and_get():
    assert etprop.get_primitive("test_scaled_tanh_matmul") is SCALED_TANH
    assert etprop.register_primitive(SCALED_TANH) is SCALED_TANH  # re-registering the same object is fine
    with pytest.raises(KeyError, match="no ETP primitive"):
        etprop.get_primitive("test_never_registered")
    for name in ["matmul", "grouped_matmul", "einsum", "element_wise", "embedding", "conv", "sparse_matmul",
                 "lora_matmul"]:
        assert etprop.get_primitive(name).name == name


def test_register_duplicate_name_raises():
    other = etprop.ETPPrimitive("test_scaled_tanh_matmul", _scaled_tanh_forward)
    with pytest.raises(ValueError, match="already registered"):
        etprop.register_primitive(other)
    assert etprop.get_primitive("test_scaled_tanh_matmul") is SCALED_TANH
    with pytest.raises(ValueError, match="already registered"):
        etprop.register_primitive(etprop.ETPPrimitive("matmul", lambda x, p, a: x))


def test_register_overwrite():
    first = etprop.register_primitive(etprop.ETPPrimitive("test_overwritten", lambda x, p, a: x @ p["weight"],
                                                          param_names=("weight",)))
    second = etprop.ETPPrimitive("test_overwritten", lambda x, p, a: 2.0 * (x @ p["weight"]),
                                 param_names=("weight",))
    assert etprop.register_primitive(second, overwrite=True) is second
    assert etprop.get_primitive("test_overwritten") is second
    assert first is not second


def test_same_name_primitives_do_not_share_calls():
    """Two primitive objects with one name must each run their own forward (the call cache is per object)."""
    x, w = rand(0, (I,)), rand(1, (I, O))
    p1 = etprop.ETPPrimitive("test_shared_name", lambda x, p, a: x @ p["weight"], param_names=("weight",))
    p2 = etprop.ETPPrimitive("test_shared_name", lambda x, p, a: 2.0 * (x @ p["weight"]),
                             param_names=("weight",))
    close(p1.bind(x, {"weight": w}), x @ w)
    close(p2.bind(x, {"weight": w}), 2.0 * (x @ w))
    _, c1, _ = single_call(lambda x, w: p1.bind(x, {"weight": w}), x, w)
    _, c2, _ = single_call(lambda x, w: p2.bind(x, {"weight": w}), x, w)
    assert c1.primitive is p1 and c2.primitive is p2 and c1.call_id != c2.call_id


def test_bad_definitions():
    with pytest.raises(ValueError, match="identifier"):
        etprop.ETPPrimitive("not a name", lambda x, p, a: x)
    with pytest.raises(ValueError, match="unknown parameters"):
        etprop.ETPPrimitive("test_bad_rule", lambda x, p, a: x, param_names=("weight",),
                            out_to_param={"kernel": lambda v, p, a, c: v})


def test_unknown_param_raises():
    x, w, _ = _args()
    with pytest.raises(etprop.OperandError, match="unknown parameter.*'kernel'"):
        SCALED_TANH.bind(x, {"weight": w, "kernel": w}, scale=SCALE)
    with pytest.raises(etprop.OperandError, match="unknown parameter"):
        etprop.get_primitive("element_wise").bind(None, {"weight": w, "bias": w})


def test_non_callable_transform_raises():
    x, w, b = _args()
    with pytest.raises(etprop.OperandError, match="'weight'.*callable"):
        _op(x, w, b, weight=1.0)
    with pytest.raises(etprop.OperandError, match="'bias'.*callable"):
        _op(x, w, b, bias="exp")


def test_validate_runs_and_bad_leaf_type():
    x, w, b = _args()
    with pytest.raises(etprop.OperandError, match="'weight'"):
        _op(x, w[0], b)
    with pytest.raises(etprop.OperandError, match="arrays or quantities"):
        SCALED_TANH.bind(x, {"weight": w}, aux={"table": "abc"}, scale=SCALE)


# ----------------------------------------------------------------------------- caching

def test_eager_calls_reuse_compiled_function():
    x, w, b = _args(seed=11)
    _op(x, w, b)  # warm
    n_jitted, n_calls = len(P._JITTED), len(P._CALLS)
    y1 = _op(x, w, b)
    y2 = _op(2 * x, w, b)  # same shapes, other values
    assert len(P._JITTED) == n_jitted and len(P._CALLS) == n_calls
    close(y2, _plain(2 * x, w, b))
    assert not np.allclose(y1, y2)
    # the same ETPCall (and jitted function) behind both calls
    c1 = single_call(lambda x, w, b: _op(x, w, b), x, w, b)[1]
    c2 = single_call(lambda x, w, b: _op(x, w, b), 2 * x, w, b)[1]
    assert c1 is c2 and P._jitted(c1) is P._jitted(c2)
    # a different specialisation (no bias) is a different call
    c3 = single_call(lambda x, w: _op(x, w), x, w)[1]
    assert c3 is not c1 and c3.param_paths() == ("weight",)


def test_builtin_eager_calls_reuse_compiled_function():
    x, w = rand(0, (B, I)), rand(1, (I, O))
    etprop.matmul(x, w)
    n = len(P._JITTED)
    etprop.matmul(x + 1, w)
    etprop.matmul(x, w * 3)
    assert len(P._JITTED) == n


def test_fresh_equal_lambdas_share_one_specialisation():
    """A weight_fn lambda written inside a step is a new object each trace; no new compile."""
    from etprop import primitive as P
    x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
    sign = 2.0
    before = len(P._JITTED)
    for _ in range(4):
        y = etprop.matmul(x, w, weight_fn=lambda a: a * sign)  # a new lambda object each time
    assert len(P._JITTED) == before + 1
    np.testing.assert_allclose(y, x @ (w * 2.0))
    other = etprop.matmul(x, w, weight_fn=lambda a: a * 3.0)  # different code: its own call
    np.testing.assert_allclose(other, x @ (w * 3.0))
    arr = jnp.full((3, 4), 5.0)  # an array in the closure: keyed by identity, still correct
    np.testing.assert_allclose(etprop.matmul(x, w, weight_fn=lambda a: a * arr), x @ (w * 5.0))


def test_bound_methods_of_different_instances_do_not_share_a_call():
    """A method used as weight_fn reads its instance's attributes: two instances with
    different masks must not share one compiled transform."""

    class Masked:
        def __init__(self, n):
            self.mask = jnp.eye(n)

        def weight_fn(self, w):
            return w * self.mask

    a, b = Masked(3), Masked(4)
    np.testing.assert_allclose(etprop.matmul(jnp.ones(3), jnp.ones((3, 3)), weight_fn=a.weight_fn), jnp.ones(3))
    np.testing.assert_allclose(etprop.matmul(jnp.ones(4), jnp.ones((4, 4)) * 2, weight_fn=b.weight_fn),
                               jnp.full(4, 2.0))
