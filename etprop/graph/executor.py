"""What the learners ask of a compiled step, answered from its jaxpr: the only place besides
`etprop.graph.compiler` that reads jaxpr structure (through `etprop.graph._jaxpr`).

The learners see ETP equations by index, their operands' abstract values, a way to re-bind one
equation on new operands (for parameter pullbacks), and a few structural facts about the step
(which parameters reach the outputs or the hidden states, which groups recur through an
operator's input, whether a parameter enters the outputs linearly).
"""

from __future__ import annotations

import jax.numpy as jnp

from etprop.graph import _jaxpr
from etprop.graph.compiler import ETraceGraph, deps_of_in

__all__ = ["operand_avals", "output_aval", "step_out_avals", "bind_etp", "zero_operands", "params_reaching", "hidden_avals",
           "groups_with_operator_recurrence", "param_enters_nonlinearly"]


def _eqn(graph: ETraceGraph, idx: int):
    return graph.closed.jaxpr.eqns[idx]


def operand_avals(graph: ETraceGraph, idx: int) -> list:
    """Abstract values (shape, dtype) of ETP equation ``idx``'s flat operands."""
    return [v.aval for v in _eqn(graph, idx).invars]


def output_aval(graph: ETraceGraph, idx: int):
    """Abstract value of ETP equation ``idx``'s output ``y``."""
    return _eqn(graph, idx).outvars[0].aval


def step_out_avals(graph: ETraceGraph) -> list:
    """Abstract values of the model's outputs for one step and one sample (flat leaves, in the
    order `ETraceGraph.unflatten_out` takes them)."""
    return [v.aval for v in graph.closed.jaxpr.outvars[:graph.n_out]]


def bind_etp(graph: ETraceGraph, idx: int, operands):
    """ETP equation ``idx`` evaluated on ``operands`` (flat, in the equation's order): its ``y``."""
    return _jaxpr.bind_eqn(_eqn(graph, idx), list(operands))[0]


def zero_operands(graph: ETraceGraph, idx: int, keep) -> list:
    """Zeros of the operands ``j`` of equation ``idx`` where ``keep[j]``, None elsewhere."""
    return [jnp.zeros(a.shape, a.dtype) if k else None for a, k in zip(operand_avals(graph, idx), keep)]


def params_reaching(graph: ETraceGraph) -> tuple[set, set, set]:
    """``(outputs, hidden, written)``: the parameter leaves that the step's outputs, its new
    hidden states, and every state it writes (hidden and others) structurally depend on (a
    dependency walk: conservative, a parameter is never missed)."""
    jaxpr = graph.closed.jaxpr
    n_p, n_out, n_h = graph.n_param_leaves, graph.n_out, graph.n_hidden
    pdep = _jaxpr.dependencies(jaxpr, {v: {i} for i, v in enumerate(jaxpr.invars[:n_p])})
    reach = lambda vs: set().union(*[deps_of_in(pdep, v) for v in vs])
    return (reach(jaxpr.outvars[:n_out]), reach(jaxpr.outvars[n_out:n_out + n_h]), reach(jaxpr.outvars[n_out:]))


def hidden_avals(graph: ETraceGraph) -> list:
    """Abstract values of the hidden states (per sample), in the model's hidden order."""
    jaxpr = graph.closed.jaxpr
    n_p, n_h = graph.n_param_leaves, graph.n_hidden
    return [v.aval for v in jaxpr.invars[n_p:n_p + n_h]]


def groups_with_operator_recurrence(graph: ETraceGraph) -> tuple[int, ...]:
    """Traced groups whose next state depends on their own previous state through an
    operator input (a path D-RTRL's cut removes): some operator's ``x`` depends on a member
    (all paths) and that operator's output reaches a member (operator inputs cut)."""
    jaxpr = graph.closed.jaxpr
    n_p, n_h, n_out = graph.n_param_leaves, graph.n_hidden, graph.n_out
    src = {v: {("h", k)} for k, v in enumerate(jaxpr.invars[n_p:n_p + n_h])}
    full = _jaxpr.dependencies(jaxpr, src)
    src_y = dict(src)
    src_y.update({idx: {("y", idx)} for idx in graph.etp_eqns})
    cut = _jaxpr.dependencies(jaxpr, src_y, cut_x=graph.etp_n_x)
    x_deps = {idx: set().union(*[deps_of_in(full, v) for v in jaxpr.eqns[idx].invars[:n_x]])
              for idx, n_x in graph.etp_n_x.items()}
    out = []
    for grp in graph.groups:
        if not any(r.group == grp.index for r in graph.relations):
            continue
        members = {("h", k) for k in grp.members}
        reached = set().union(*[deps_of_in(cut, jaxpr.outvars[n_out + j]) for j in grp.members])
        if any(("y", idx) in reached and x_deps[idx] & members for idx in graph.etp_eqns):
            out.append(grp.index)
    return tuple(out)


def param_enters_nonlinearly(graph: ETraceGraph, leaf: int) -> str | None:
    """The first primitive through which parameter leaf ``leaf`` reaches an output non-linearly,
    or None if the step is linear in it."""
    jaxpr = graph.closed.jaxpr
    return _jaxpr.nonlinear_use(jaxpr, {jaxpr.invars[leaf]})
