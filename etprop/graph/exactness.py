r"""When a per-position (diagonal) trace gives a parameter's exact gradient, and why not otherwise.

D-RTRL carries, for each traced weight, ``e^t = D^t e^{t-1} + u^t Df^t`` within the hidden group
the weight's operator drives, and reads the gradient as ``sum_t delta^t e^t`` with the single-step
learning signal ``delta^t = dl^t / dh^t``. That sum is the exact gradient (= BPTT) exactly when
every path by which the weight reaches a later loss runs through its own group's states, position
by position (``../shared/design/algorithms.md``). Structurally, for a weight traced into group
``g`` that fails when

1. **operator recurrence**: ``g``'s next state depends on its previous one through the input of an
   ETP operator (a dense recurrent weight): the trace drops the off-diagonal influence;
2. **memory downstream**: a hidden state outside ``g`` depends on ``g``'s states (a second layer
   with memory, a leaky readout): credit that reaches the loss through that state's *later*
   values is missed (the learning signal holds only the current step);
3. **an output outside the groups**: the operator's output also reaches a hidden state of a group
   it is not traced into (e.g. one of another shape);

and an untraced weight (a plain op) is exact only if it reaches no hidden state (its gradient is
the current step's). `gaps` returns these reasons by parameter name; a name absent is exact by
construction, which the tests check against BPTT (``tests/graph/test_fuzz.py`` on random models).
"""

from __future__ import annotations

from etprop.graph import _jaxpr
from etprop.graph.compiler import ETraceGraph, deps_of_in
from etprop.graph.executor import groups_with_operator_recurrence

__all__ = ["gaps"]


def _downstream_memory(graph: ETraceGraph) -> dict[int, list[str]]:
    """``group -> [names of hidden states outside it whose new value depends on its states]``."""
    jaxpr = graph.closed.jaxpr
    n_p, n_h, n_out = graph.n_param_leaves, graph.n_hidden, graph.n_out
    dep = _jaxpr.dependencies(jaxpr, {v: {k} for k, v in enumerate(jaxpr.invars[n_p:n_p + n_h])})
    names = graph.mf.hidden_names
    out: dict[int, list[str]] = {}
    for j in range(n_h):
        for k in deps_of_in(dep, jaxpr.outvars[n_out + j]):
            g = graph.hidden_group[k]
            if graph.hidden_group[j] != g and names[j] not in out.setdefault(g, []):
                out[g].append(names[j])
    return out


def _reached_groups(graph: ETraceGraph) -> dict[int, set]:
    """``ETP equation -> groups whose new states its output reaches``."""
    jaxpr = graph.closed.jaxpr
    n_h, n_out = graph.n_hidden, graph.n_out
    dep = _jaxpr.dependencies(jaxpr, {idx: {idx} for idx in graph.etp_eqns})
    out = {idx: set() for idx in graph.etp_eqns}
    for j in range(n_h):
        for idx in deps_of_in(dep, jaxpr.outvars[n_out + j]):
            out[idx].add(graph.hidden_group[j])
    return out


def gaps(graph: ETraceGraph) -> dict[str, str]:
    """``{parameter name: why a diagonal trace misses part of its gradient}``; absent = exact."""
    recurrent = set(groups_with_operator_recurrence(graph))
    downstream = _downstream_memory(graph)
    reached = _reached_groups(graph)
    traced_groups: dict[str, set] = {}
    for r in graph.relations:
        traced_groups.setdefault(r.leaf_name, set()).add(r.group)
    out: dict[str, str] = {}
    for r in graph.relations:
        g, grp = r.group, graph.groups[r.group]
        if g in recurrent:
            out.setdefault(r.leaf_name, f"group [{g}] ({', '.join(grp.names)}) depends on its previous state through "
                                        f"an ETP operator's input (dense recurrence): the trace keeps the diagonal of "
                                        f"that influence only")
        elif downstream.get(g):
            out.setdefault(r.leaf_name, f"hidden state {', '.join(repr(n) for n in downstream[g])} outside group [{g}] "
                                        f"({', '.join(grp.names)}) depends on it: the credit reaching the loss through "
                                        f"its later values is missed")
        extra = reached[r.eqn_index] - traced_groups[r.leaf_name]
        if extra:
            names = ", ".join(n for e in sorted(extra) for n in graph.groups[e].names)
            out.setdefault(r.leaf_name, f"{r.call.primitive.name}'s output also reaches {names}, where it is not "
                                        f"traced")
    for name in graph.truncated:
        out.setdefault(name, graph.untraced.get(name, "a plain op carries it into a hidden state") +
                       ": only the current step's gradient")
    return out
