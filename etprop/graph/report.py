"""The text of `ETraceGraph.report`: what the compiler found, one line per group and parameter."""

from __future__ import annotations

__all__ = ["report_text"]


def report_text(graph, algorithm_of=None, memory_of=None) -> str:
    """`ETraceGraph.report`: groups, each parameter traced or not and why (one line each)."""
    lines = ["hidden groups:"]
    for g in graph.groups:
        lines.append(f"  [{g.index}] {', '.join(g.names)}  shape={g.shape}  states per position S={g.num_states}")
    lines.append("parameters:")
    for leaf, name in enumerate(graph.param_leaf_names):
        rels = [r for r in graph.relations if r.leaf == leaf]
        shape = tuple(graph.param_leaf_avals[leaf].shape)
        if rels:
            for r in rels:
                algo = algorithm_of(r) if algorithm_of else ""
                mem = memory_of(r) if memory_of else None
                mem_s = f"  trace {mem} bytes/sample" if mem is not None else ""
                lines.append(f"  {name} {shape}: traced via {r.call.primitive.name} -> group "
                             f"[{r.group}] {algo}{mem_s}")
            if name in graph.untraced:  # traced into some groups, refused for another
                lines.append(f"  {name} {shape}: not traced elsewhere: {graph.untraced[name]}")
        elif name in graph.truncated:
            lines.append(f"  {name} {shape}: not traced ({graph.untraced.get(name, 'no ETP relation')}); "
                         f"gradient of the current step only, the state's memory of it is dropped (route it "
                         f"through an ETP operator, e.g. etprop.matmul, to trace it)")
        else:
            lines.append(f"  {name} {shape}: not traced ({graph.untraced.get(name, 'no ETP relation')}); "
                         f"exact gradient through the current step")
    if graph.carried:
        lines.append("carried, not differentiated (not floating point): "
                     + ", ".join(f"{n} ({d})" for n, d in graph.carried))
    for n in graph.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
