"""The one module that reads jaxpr internals: a hooked evaluator and a dependency walk.

Everything here uses `jax.extend.core` objects (equations, vars, literals) and
``Primitive.bind``, as in JAX's documented custom-interpreter pattern. No jaxpr is
rewritten; the evaluator re-binds each equation, adding two hooks:

* ``etp_pert``: a perturbation added to the output of chosen ETP equations
  (gives ``dh/dy`` by a JVP);
* ``cut``: ``stop_gradient`` on the ``x`` operand of every ETP equation, which
  removes the recurrent-weight paths from hidden-to-hidden Jacobians.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from jax import lax
from jax.extend import core as jcore

from etprop.primitive import lookup_call

__all__ = ["bind_eqn", "eval_hooked", "etp_equations", "nested_etp_primitives", "dependencies",
           "differentiable_while_loops", "nonlinear_use"]


def bind_eqn(eqn, invals):
    """Evaluate one equation on concrete or traced values; always returns a list."""
    bp = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(bp, tuple):  # older JAX: (subfuns, params)
        subfuns, params = bp
        outs = eqn.primitive.bind(*subfuns, *invals, **params)
    else:
        outs = eqn.primitive.bind(*invals, **bp)
    return list(outs) if eqn.primitive.multiple_results else [outs]


def _read(env, v):
    return v.val if isinstance(v, jcore.Literal) else env[v]


def eval_hooked(closed: jcore.ClosedJaxpr, args: Sequence, *,
                etp_pert: Mapping[int, jax.Array] | None = None,
                etp_n_x: Mapping[int, int] | None = None,
                cut: bool = False,
                record: Sequence[int] = ()):
    """Evaluate ``closed`` on ``args`` with hooks.

    Args:
      etp_pert: ``{equation index: perturbation of its single output}``.
      etp_n_x: ``{equation index: number of leading operands that form x}``; used by ``cut``.
      cut: stop gradients through the ``x`` operands of the equations in ``etp_n_x``.
      record: equation indices whose operand values are returned.

    Returns:
      ``(outputs, {equation index: operand values})``.
    """
    jaxpr = closed.jaxpr
    env = {}
    for v, c in zip(jaxpr.constvars, closed.consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    etp_pert = etp_pert or {}
    etp_n_x = etp_n_x or {}
    record = set(record)
    recorded = {}
    for idx, eqn in enumerate(jaxpr.eqns):
        invals = [_read(env, v) for v in eqn.invars]
        if idx in record:
            recorded[idx] = list(invals)
        if cut and idx in etp_n_x:
            n_x = etp_n_x[idx]
            invals = [lax.stop_gradient(a) if j < n_x else a for j, a in enumerate(invals)]
        outs = bind_eqn(eqn, invals)
        if idx in etp_pert:
            outs[0] = outs[0] + etp_pert[idx]
        for v, o in zip(eqn.outvars, outs):
            if isinstance(v, jcore.DropVar):
                continue
            env[v] = o
    return [_read(env, v) for v in jaxpr.outvars], recorded


def etp_equations(jaxpr: jcore.Jaxpr):
    """``[(equation index, ETPCall)]`` for the ETP calls at the top level of ``jaxpr``."""
    found = []
    for idx, eqn in enumerate(jaxpr.eqns):
        call = lookup_call(eqn)
        if call is not None:
            found.append((idx, call))
    return found


def _subjaxprs(eqn):
    for j in jcore.jaxprs_in_params(eqn.params):
        yield j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def nested_etp_primitives(jaxpr: jcore.Jaxpr) -> list[tuple[str, str]]:
    """``[(enclosing primitive, ETP primitive name)]`` for ETP calls hidden inside
    control flow or other higher-order primitives (which online learning cannot see)."""
    found = []

    def walk(j, outer):
        for eqn in j.eqns:
            call = lookup_call(eqn)
            if call is not None:
                if outer is not None:
                    found.append((outer, call.primitive.name))
                continue
            for sub in _subjaxprs(eqn):
                walk(sub, outer or eqn.primitive.name)

    walk(jaxpr, None)
    return found


def dependencies(jaxpr: jcore.Jaxpr, sources: Mapping[object, frozenset], *,
                 cut_x: Mapping[int, int] | None = None) -> dict:
    """Structural dependence: for every var, the set of source labels it depends on.

    ``sources`` maps invars (or equation indices, for ETP outputs) to labels. An
    equation's outputs depend on the union of its inputs (conservative for
    higher-order primitives). ``cut_x`` drops the ``x`` operands of ETP equations.
    Returns ``{var: frozenset(labels)}`` covering invars and equation outputs.
    """
    dep = {}
    for v in jaxpr.invars:
        dep[v] = frozenset(sources.get(v, ()))
    for v in jaxpr.constvars:
        dep[v] = frozenset()
    cut_x = cut_x or {}
    for idx, eqn in enumerate(jaxpr.eqns):
        acc = set(sources.get(idx, ()))
        n_skip = cut_x.get(idx, 0)
        for j, v in enumerate(eqn.invars):
            if j < n_skip or isinstance(v, jcore.Literal):
                continue
            acc |= dep.get(v, frozenset())
        fs = frozenset(acc)
        for v in eqn.outvars:
            dep[v] = fs
    return dep


def _has_float_operand(eqn) -> bool:
    return any(not isinstance(v, jcore.Literal) and hasattr(v.aval, "dtype")
               and jax.numpy.issubdtype(v.aval.dtype, jax.numpy.inexact) for v in eqn.invars)


def differentiable_while_loops(jaxpr: jcore.Jaxpr, sources) -> list[str]:
    """Names of the ``while`` loops (``lax.while_loop``, ``fori_loop`` with traced bounds) that
    carry values depending on ``sources`` (invars): JAX has no reverse mode for them, and every
    online learner needs the step's VJP. Loops nested in other primitives count when they carry
    any floating-point value (their dependence is not tracked inside)."""
    dep = dependencies(jaxpr, {v: frozenset({0}) for v in sources})
    found = []

    def nested(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "while" and _has_float_operand(eqn):
                found.append(eqn.primitive.name)
            for sub in _subjaxprs(eqn):
                nested(sub)

    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            if any(dep.get(v) for v in eqn.invars if not isinstance(v, jcore.Literal)):
                found.append(eqn.primitive.name)
            continue
        for sub in _subjaxprs(eqn):
            nested(sub)
    return found


# primitives that are linear in an operand carrying the readout weight (with the other
# operands independent of it): random feedback is exact through these
_LINEAR = {"add", "add_any", "sub", "neg", "mul", "dot_general", "reshape", "broadcast_in_dim", "transpose",
           "squeeze", "expand_dims", "reduce_sum", "convert_element_type", "copy", "copy_p", "concatenate",
           "slice", "dynamic_slice", "pad", "rev", "select_n", "div"}
_BILINEAR = {"mul", "dot_general"}  # at most one operand may carry the weight


def nonlinear_use(jaxpr, carrying: set) -> str | None:
    """The first primitive through which vars in ``carrying`` reach an output non-linearly
    (None if every use is linear in them)."""
    carrying = set(carrying)
    for eqn in jaxpr.eqns:
        hits = [j for j, v in enumerate(eqn.invars) if not isinstance(v, jcore.Literal) and v in carrying]
        if not hits:
            continue
        name = eqn.primitive.name
        if name in ("jit", "pjit", "closed_call"):
            inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
            inner = getattr(inner, "jaxpr", inner)
            bad = nonlinear_use(inner, {inner.invars[j] for j in hits})
            if bad:
                return bad
        elif name not in _LINEAR:
            return name
        elif name in _BILINEAR and len(hits) > 1:
            return f"{name} (weight times weight)"
        elif name == "div" and hits != [0]:
            return "div (weight in the denominator)"
        elif name == "select_n" and 0 in hits:
            return "select_n (weight in the predicate)"
        carrying.update(eqn.outvars)
    return None
