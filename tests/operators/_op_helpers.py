"""Shared checks for the ETP operator tests (not collected: no ``test_`` prefix)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import etprop
from etprop.primitive import split_unit

RTOL = 1e-5
ATOL = 1e-5


def rand(seed: int, shape, scale: float = 1.0):
    """A float32 standard-normal array (numpy RNG: no per-shape compilation)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def close(a, b, rtol=RTOL, atol=ATOL):
    """Assert two arrays (or pytrees of arrays) are equal to float tolerance; shapes must match."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb, f"tree mismatch: {ta} vs {tb}"
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, f"shape {x.shape} != {y.shape}"
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def grads_match(op_fn, plain_fn, args, argnums, seed=123, eager=False):
    """jax.grad of a random projection of op_fn(*args) == that of plain_fn(*args), for each argnum.

    Both gradients are computed inside one `jax.jit` (fast: one compilation) unless ``eager``.
    """
    y = plain_fn(*args)
    ct = rand(seed, np.shape(y))

    def loss(f):
        return lambda *a: jnp.sum(f(*a) * ct)

    def both(*a):
        return jax.grad(loss(op_fn), argnums=argnums)(*a), jax.grad(loss(plain_fn), argnums=argnums)(*a)

    g_op, g_plain = both(*args) if eager else jax.jit(both)(*args)
    close(g_op, g_plain)
    # the gradient is not trivially zero (makes the comparison meaningful)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_plain))


def jvp_match(op_fn, plain_fn, args, seed=7):
    tangents = tuple(rand(seed + i, np.shape(a)) for i, a in enumerate(args))

    @jax.jit
    def both(args, tangents):
        return jax.jvp(op_fn, args, tangents), jax.jvp(plain_fn, args, tangents)

    (y1, t1), (y2, t2) = both(args, tangents)
    close(y1, y2)
    close(t1, t2)
    assert float(jnp.abs(t2).max()) > 0


def marked_calls(fn, *args):
    """``(closed_jaxpr, [(eqn, call)])`` for every ETP call in ``make_jaxpr(fn)(*args)``."""
    closed = jax.make_jaxpr(fn)(*args)
    found = []
    for eqn in closed.jaxpr.eqns:
        call = etprop.lookup_call(eqn)
        if call is not None:
            found.append((eqn, call))
    return closed, found


def single_call(fn, *args):
    """The one ETP call in ``fn``'s jaxpr and its operands ``(x, params, aux)`` with concrete values."""
    closed, found = marked_calls(fn, *args)
    assert len(found) == 1, f"expected exactly one ETP call, found {len(found)}"
    eqn, call = found[0]
    env = dict(zip(closed.jaxpr.invars, jax.tree.leaves(args)))
    env.update(zip(closed.jaxpr.constvars, closed.consts))
    leaves = [v.val if hasattr(v, "val") else env[v] for v in eqn.invars]
    return eqn, call, call.unflatten(leaves)


def check_marking(fn, args, op_name, param_names, aux_names=()):
    """Exactly one marked eqn, named after the operator, whose operands rebuild into the right names."""
    eqn, call, (x, params, aux) = single_call(fn, *args)
    assert eqn.primitive.name in ("jit", "pjit")
    assert call.primitive.name == op_name
    assert call.primitive is etprop.get_primitive(op_name)
    assert eqn.params["name"] == call.name
    assert call.param_paths() == tuple(sorted(param_names))
    xs, ps, aus = call.unflatten(eqn.invars)
    assert sorted(ps) == sorted(param_names)
    assert sorted(aus) == sorted(aux_names)
    # the rebuilt operands reproduce the call's output
    out = fn(*args)
    close(split_unit(call.apply(x, params, aux))[0], split_unit(out)[0])
    return call


def per_sample(call, x, params, aux):
    """Unit-free x mantissa and transformed parameter mantissas, as the compiler sees them."""
    x_m = None if x is None else split_unit(x)[0]
    return x_m, call.transformed_params(params), aux


def check_apply_mantissa(fn, args):
    """`apply_mantissa` on `transformed_params` reproduces the call's output mantissa."""
    _, call, (x, params, aux) = single_call(fn, *args)
    x_m, tp, aux = per_sample(call, x, params, aux)
    close(call.apply_mantissa(x_m, tp, aux), split_unit(fn(*args))[0])


def check_out_to_param(call, x_m, tparams, aux, name, seed=0):
    """The out_to_param rule of ``name`` is correct for one (unbatched) sample.

    1. Structure: with ``J = d y / d param`` (jax.jacobian), each parameter element is
       mapped by ``out_to_param`` (applied to one-hot output cotangents) to exactly one
       output position, and its Jacobian is zero at every other output position.
    2. Identity: for a random per-output cotangent ``v``,
       ``vjp(v) == out_to_param(v) * vjp(ones)``; leading axes of ``v`` are carried.
    """
    p_shape = np.shape(tparams[name])
    y_shape = jax.eval_shape(lambda: call.apply_mantissa(x_m, tparams, aux)).shape
    assert call.out_to_param(name, jnp.zeros(y_shape), tparams, aux) is not None, \
        f"{call.primitive.name}: no out_to_param rule for {name!r}"
    n_out = int(np.prod(y_shape))
    v = rand(seed + 99, y_shape)

    @jax.jit
    def compute(x_m, tparams, aux, v):
        def f(p):
            return call.apply_mantissa(x_m, {**tparams, name: p}, aux)

        p = tparams[name]
        J = jax.jacobian(f)(p).reshape(n_out, *p_shape)
        onehots = jnp.eye(n_out, dtype=J.dtype).reshape(n_out, *y_shape)
        M = jnp.broadcast_to(call.out_to_param(name, onehots, tparams, aux), (n_out, *p_shape))
        _, pull = jax.vjp(f, p)
        g_v, g_1 = pull(v)[0], pull(jnp.ones(y_shape, v.dtype))[0]
        r_v = jnp.broadcast_to(call.out_to_param(name, v, tparams, aux), p_shape)
        r_2v = jnp.broadcast_to(call.out_to_param(name, jnp.stack([v, 2 * v]), tparams, aux), (2, *p_shape))
        return J, M, g_v, g_1, r_v, r_2v

    J, M, g_v, g_1, r_v, r_2v = compute(x_m, tparams, aux, v)
    # each parameter element picks exactly one output position ...
    np.testing.assert_array_equal(np.asarray(M.sum(0)), np.ones(p_shape))
    # ... and drives no other
    drives = np.asarray(J != 0)
    bad = drives & ~np.asarray(M != 0)
    assert not bad.any(), f"{name}: {int(bad.sum())} (output, param) pairs driven but not selected"
    assert drives.any(), "degenerate test: the parameter drives nothing"
    close(g_v, r_v * g_1)
    close(r_2v[0], r_v)
    close(r_2v[1], 2 * r_v)


def check_not_diagonal(call, x_m, tparams, aux, name):
    """``out_to_param`` declares no rule for ``name``, and indeed some element drives several outputs."""
    def f(p):
        return call.apply_mantissa(x_m, {**tparams, name: p}, aux)

    y_shape = jax.eval_shape(f, tparams[name]).shape
    assert call.out_to_param(name, jnp.ones(y_shape), tparams, aux) is None
    J = jax.jit(jax.jacobian(f))(tparams[name]).reshape(int(np.prod(y_shape)), -1)
    assert int(jnp.max(jnp.sum(J != 0, axis=0))) > 1

