"""The step's outputs as a function of its *new* hidden state: the readout slice.

braintrace's convention takes the learning signal at the post-step state, ``dL^t/dh^t``, through
the readout only; etprop's default takes ``dL^t/dh^{t-1}`` through the whole step (which also
holds the last step's path through ETP inputs, e.g. recurrent weights, and every parameter's
exact current-step term). The post-step form needs the outputs written as

    outs = R(params, h^t, others^{t-1}, inputs)

with no other dependence on ``h^{t-1}``: `readout_slice` finds the equations of the step that
compute the outputs once the new hidden values are given (a backward walk from the outputs that
stops at the new hidden values) and says why not where the step does not have that form.
Two further conditions make the post-step gradient hold every current-step term the
pre-step one holds (where no hidden state feeds an ETP input, they are then equal): every
parameter that reaches the new hidden state does so as the parameter of a traced relation only,
and no ETP output feeds another ETP operator's input.
"""

from __future__ import annotations

import dataclasses

from jax.extend import core as jcore

from etprop.graph import _jaxpr
from etprop.graph.compiler import ETraceGraph

__all__ = ["ReadoutSlice", "readout_slice", "eval_readout"]


@dataclasses.dataclass(frozen=True)
class ReadoutSlice:
    """The equations (in order) computing the outputs from parameters, new hidden values, the
    pre-step other states and the inputs."""

    eqns: tuple[int, ...]


def _producers(jaxpr) -> dict:
    return {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars if not isinstance(v, jcore.DropVar)}


def readout_slice(graph: ETraceGraph) -> tuple[ReadoutSlice | None, str | None]:
    """``(slice, None)``, or ``(None, why)`` when the outputs are not a function of the new hidden
    state alone (plus parameters, other states and inputs) or a current-step term would be lost."""
    jaxpr = graph.closed.jaxpr
    n_p, n_h, n_out = graph.n_param_leaves, graph.n_hidden, graph.n_out
    old_h = {v: k for k, v in enumerate(jaxpr.invars[n_p:n_p + n_h])}
    new_h = {v for v in jaxpr.outvars[n_out:n_out + n_h] if not isinstance(v, jcore.Literal)}
    prod = _producers(jaxpr)
    needed, stack, seen = set(), [v for v in jaxpr.outvars[:n_out] if not isinstance(v, jcore.Literal)], set()
    while stack:
        v = stack.pop()
        if v in seen or v in new_h:
            continue
        seen.add(v)
        if v in old_h:
            return None, (f"an output depends on the pre-step value of hidden state '{graph.mf.hidden_names[old_h[v]]}' "
                          f"other than through its new value (e.g. the last step's spikes read out directly)")
        i = prod.get(v)
        if i is None:
            continue  # a parameter, other state, input or constant
        needed.add(i)
        stack.extend(u for u in jaxpr.eqns[i].invars if not isinstance(u, jcore.Literal))
    why = _lost_current_step_term(graph)
    if why is not None:
        return None, why
    return ReadoutSlice(tuple(sorted(needed))), None


def _lost_current_step_term(graph: ETraceGraph) -> str | None:
    jaxpr = graph.closed.jaxpr
    n_p, n_h, n_out = graph.n_param_leaves, graph.n_hidden, graph.n_out
    rel_leaf_pos = {}  # eqn index -> operand positions of its traced parameters
    for r in graph.relations:
        pos = r.call.operand_positions()[1][r.param]
        rel_leaf_pos.setdefault(r.eqn_index, set()).add(pos)
    # parameters reaching the new hidden state other than as a traced relation's parameter
    src = {v: {i} for i, v in enumerate(jaxpr.invars[:n_p])}
    dep = {v: frozenset(src.get(v, ())) for v in jaxpr.invars}
    for i, eqn in enumerate(jaxpr.eqns):
        acc = set()
        for j, v in enumerate(eqn.invars):
            if isinstance(v, jcore.Literal) or j in rel_leaf_pos.get(i, ()):
                continue
            acc |= dep.get(v, frozenset())
        for v in eqn.outvars:
            dep[v] = frozenset(acc)
    reach = set().union(*[dep.get(v, frozenset()) for v in jaxpr.outvars[n_out:n_out + n_h]
                          if not isinstance(v, jcore.Literal)])
    if reach:
        names = ", ".join(graph.param_leaf_names[i] for i in sorted(reach))
        return (f"parameter(s) {names} reach the new hidden state other than through a traced ETP relation, so "
                f"their current-step gradient would be lost")
    # an ETP output feeding another ETP operator's input (Df holds only the direct path)
    ydep = _jaxpr.dependencies(jaxpr, {i: {i} for i in graph.etp_eqns})
    for i, n_x in graph.etp_n_x.items():
        feeding = set().union(*[ydep.get(v, frozenset()) for v in jaxpr.eqns[i].invars[:n_x]
                                if not isinstance(v, jcore.Literal)])
        if feeding:
            return "an ETP operator's output feeds another ETP operator's input within the step"
    return None


def eval_readout(graph: ETraceGraph, sl: ReadoutSlice, p_leaves, h_new, tail) -> list:
    """The step's outputs from parameters, the new hidden values and ``tail`` (pre-step other
    states, then inputs): the slice's equations evaluated in order."""
    jaxpr = graph.closed.jaxpr
    n_h, n_out = graph.n_hidden, graph.n_out
    env = dict(zip(jaxpr.constvars, graph.closed.consts))
    env.update(zip(jaxpr.invars, list(p_leaves) + [None] * n_h + list(tail)))
    for v, val in zip(jaxpr.outvars[n_out:n_out + n_h], h_new):
        if not isinstance(v, jcore.Literal):
            env[v] = val
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    for i in sl.eqns:
        eqn = jaxpr.eqns[i]
        for v, o in zip(eqn.outvars, _jaxpr.bind_eqn(eqn, [read(u) for u in eqn.invars])):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars[:n_out]]
