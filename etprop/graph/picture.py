"""A picture of the compiled graph: `learner.report()` drawn as an SVG image.

``learner_svg(learner)`` (or ``graph_svg(graph, algorithm_of, memory_of)``, which mirrors
`ETraceGraph.report`) returns the SVG text; ``etprop graph --model alif`` writes one for a
built-in model. No system binary is needed: the SVG is plain XML written here. The boxes are placed by
`etprop.graph.picture_layout` and drawn by `etprop.graph.picture_svg`.

Layout: columns from left to right, one per rank of the step's data flow (a longest-path
layering from the inputs, then each box moved right up to the column before its first
successor): the step's inputs first, then the ETP operators, the hidden groups they drive, the
operators downstream of them (readouts) and the outputs last. The weights stand in a lane just
left of the operator (or state) they enter, above and below it where data comes in from the
left, so that the data passes straight between them. Boxes never overlap. Boxes:

* **weight** (green: traced; grey: not traced, exact gradient through the current step; orange:
  not traced and carried into a hidden state by a plain op, so only the current step's gradient):
  name, shape, trace memory per sample, or why it is not traced (`ETraceGraph.untraced`);
* **ETP operator** (yellow): primitive, equation index, output shape, the weights it carries;
* **hidden group** (blue): index, shape, ``S`` states per position and their names;
* **input / output**: the step's arguments and outputs, per sample.

Edges: weight -> operator (labelled with the operator's parameter slot); operator -> group
where the operator drives the group, labelled per traced weight with the learner's rule (the
report's ``[Learner: describe_kind]`` text) and the trace's bytes per sample (red, dashed: a
drive that no relation holds); grey: the rest of the data flow (inputs, operators feeding
operators, new states read downstream, outputs); grey dashed: a state read one step later (a
recurrence, drawn back along a channel above or below all boxes). Below: a legend and the report's notes -- the graph's
notes, non-float carried states and every other line of `learner.report()` (the exactness
summary, an influence learner's memory), wrapped. Nothing is abbreviated: each box and edge has a
``<title>`` (a tooltip) holding its line of the report verbatim, and a wrapped text is one
``<text>`` of ``<tspan>`` lines (or one box's lines), so ``xml.etree`` finds every group name,
weight name, exclusion reason and note in the file.
"""

from __future__ import annotations

from etprop.graph.compiler import ETraceGraph
from etprop.graph.picture_layout import CW, LH, MARGIN, Edge, Node, layout, rank_nodes, wrap
from etprop.graph.picture_svg import (CHANNEL, back_routes, draw_edges, draw_legend, draw_node, draw_notes,
                                      svg_open, svg_text)

__all__ = ["graph_svg", "learner_svg", "relation_rule", "report_notes"]

# -- what the learners say (public methods only) ------------------------------------------------


def relation_rule(learner, rel) -> str:
    """The rule text `learner.report()` gives relation ``rel``: ``'[Learner: describe_kind]'``."""
    return f"[{type(learner).__name__}: {learner.describe_kind(rel, learner.relation_kind(rel))}]"


def _structural(line: str, graph: ETraceGraph) -> bool:
    """A line `graph_svg` draws as a box or an edge (groups, parameters) rather than a note."""
    if line in ("hidden groups:", "parameters:"):
        return True
    s = line.strip()
    if line.startswith("  [") and any(s.startswith(f"[{g.index}] ") for g in graph.groups):
        return True
    return line.startswith("  ") and any(
        s.startswith(f"{n} {tuple(graph.param_leaf_avals[i].shape)}:") for i, n in enumerate(graph.param_leaf_names))


def report_notes(learner) -> list[str]:
    """The lines of ``learner.report()`` other than its head, groups and parameters: the graph's
    notes, carried states, and what the learner adds (exactness, learning signal, memory)."""
    return _notes(learner.report().splitlines(), learner.graph)


def _notes(lines: list[str], graph: ETraceGraph) -> list[str]:
    return [ln for ln in lines[1:] if ln.strip() and not _structural(ln, graph)]


def learner_svg(learner) -> str:
    """The SVG picture of a compiled learner's graph (`graph_svg` with the learner's rules).

    Trace learners: each traced weight's rule (`relation_rule`) and `trace_bytes`. Influence
    learners (RTRL, SnAp, UORO: a ``describe_leaf`` and a ``layout``): each weight's share of the
    influence. Learners without relations (BPTT): its rule for every weight. The head and the
    notes are those of ``learner.report()``.
    """
    report = learner.report().splitlines()  # before a compile: the learner's own error
    g = learner.graph
    head, notes = report[0], _notes(report, g)
    if hasattr(learner, "describe_leaf") and hasattr(learner, "layout"):  # an influence learner
        theta = set(learner.layout.theta_leaves)

        def leaf_text(leaf):
            if leaf in theta:
                return "traced", learner.describe_leaf(leaf)
            return "exact", "does not reach the hidden state; exact gradient through the current step"

        return graph_svg(g, title=head, leaf_text=leaf_text, notes=notes, relations=False)
    if not g.relations and getattr(learner, "exact_across_groups", False):  # BPTT: no traces at all
        rule = f"[{type(learner).__name__}: {learner.describe_kind(None, learner.relation_kind(None))}]"
        return graph_svg(g, title=head, leaf_text=lambda leaf: ("traced", rule), notes=notes, relations=False)
    return graph_svg(g, lambda r: relation_rule(learner, r), learner.trace_bytes, title=head, notes=notes)


# -- the step's data flow, nearest sources only ---------------------------------------------------


def _flow(graph: ETraceGraph):
    """Nearest sources of every value of the step: ETP outputs stop the walk (``("y", eqn)``) and so do
    the new hidden states (``("hn", j)``); the rest are parameters ``("p", leaf)``, previous hidden
    states ``("h", j)`` and inputs ``("in", i)``. Returns ``(operand sources per ETP equation,
    sources of each new hidden state, sources of each output, input avals)``."""
    jaxpr = graph.closed.jaxpr
    n_p, n_h, n_out = graph.n_param_leaves, graph.n_hidden, graph.n_out
    n_leaves = len(jaxpr.invars)
    n_args = graph.in_tree.children()[3].num_leaves  # the step's operands: (params, hidden, others, args)
    a = range(n_leaves - n_args, n_leaves)
    dep = {}
    for i, v in enumerate(jaxpr.invars[:n_p]):
        dep[v] = frozenset({("p", i)})
    for k, v in enumerate(jaxpr.invars[n_p:n_p + n_h]):
        dep[v] = frozenset({("h", k)})
    for i, pos in enumerate(a):
        dep[jaxpr.invars[pos]] = frozenset({("in", i)})
    literal = lambda v: type(v).__name__ == "Literal"
    read = lambda v: frozenset() if literal(v) else dep.get(v, frozenset())
    h_out = jaxpr.outvars[n_out:n_out + n_h]
    new_state = {v: j for j, v in enumerate(h_out) if not literal(v)}
    pre = {j: read(v) for j, v in enumerate(h_out)}  # an unchanged state reads its own input
    operands = {}
    for idx, eqn in enumerate(jaxpr.eqns):
        ins = [read(v) for v in eqn.invars]
        if idx in graph.etp_eqns:
            operands[idx] = ins
            acc = frozenset({("y", idx)})
        else:
            acc = frozenset().union(*ins)
        for v in eqn.outvars:
            if v in new_state:
                pre[new_state[v]] = acc
                dep[v] = frozenset({("hn", new_state[v])})
            else:
                dep[v] = acc
    outs = [read(v) for v in jaxpr.outvars[:n_out]]
    in_avals = [jaxpr.invars[pos].aval for pos in a]
    return operands, pre, outs, in_avals


def _shape(aval) -> str:
    return str(tuple(int(d) for d in aval.shape))


# -- nodes and edges ----------------------------------------------------------------------------------


class _Edges:
    """The edges being built over the finished ``nodes``: each (source, target, kind, end label)
    once, only between two different boxes that exist."""

    def __init__(self, graph: ETraceGraph, nodes: dict):
        self.graph, self.nodes, self.edges, self.seen = graph, nodes, [], set()

    def add(self, src, dst, kind, **kw) -> None:
        key = (src, dst, kind, kw.get("end_label", ""))
        if src in self.nodes and dst in self.nodes and src != dst and key not in self.seen:
            self.seen.add(key)
            self.edges.append(Edge(src, dst, kind, **kw))

    def source(self, label) -> tuple:
        """The node key of a `_flow` source label."""
        kind, i = label
        if kind in ("h", "hn"):
            return ("g", self.graph.hidden_group[i])
        return {"y": ("op", i), "in": ("in", i), "p": ("w", i)}[kind]


def _build(graph: ETraceGraph, algorithm_of, memory_of, leaf_text, relations=True):
    """The boxes (``{key: Node}``: inputs, groups, operators, outputs, weights) and the edges
    (``[Edge]``) of ``graph``'s step, with what each says (see `graph_svg` for the arguments)."""
    operands, pre, outs, in_avals = _flow(graph)
    nodes: dict = {}
    for i, av in enumerate(in_avals):
        nodes[("in", i)] = Node(("in", i), "input", [(f"input {i}", True), (f"{_shape(av)}", False)],
                                f"input {i} {_shape(av)} per sample")
    for g in graph.groups:
        head = f"[{g.index}] {', '.join(g.names)}  shape={g.shape}  states per position S={g.num_states}"
        lines = [(f"group [{g.index}]", True), (f"shape {g.shape}  S={g.num_states}", False)]
        lines += [(f"{s}: {n}", False) for s, n in enumerate(g.names)]
        nodes[("g", g.index)] = Node(("g", g.index), "group", lines, head)
    for idx in sorted(graph.etp_eqns):
        nodes[("op", idx)] = _op_node(graph, idx, operands[idx])
    for k, v in enumerate(graph.closed.jaxpr.outvars[:graph.n_out]):
        shp = _shape(v.aval)
        nodes[("out", k)] = Node(("out", k), "output", [(f"output {k}", True), (shp, False)],
                                 f"output {k} {shp} per sample")
    rels_of = {}
    for r in graph.relations:
        rels_of.setdefault(r.leaf, []).append(r)
    for leaf in range(len(graph.param_leaf_names)):
        nodes[("w", leaf)] = _weight_node(graph, leaf, rels_of.get(leaf), algorithm_of, memory_of, leaf_text)
    edges = _Edges(graph, nodes)
    _operator_edges(graph, operands, edges)
    _group_edges(graph, pre, edges, algorithm_of, memory_of, relations)
    for k, labels in enumerate(outs):
        for lbl in sorted(labels):
            kind = "plain" if lbl[0] == "p" else "data"
            edges.add(edges.source(lbl), ("out", k), kind, title=_flow_title(graph, lbl, f"output {k}"))
    return nodes, edges.edges


def _op_node(graph: ETraceGraph, idx: int, operands: list) -> Node:
    """The box of ETP equation ``idx``: primitive, equation, output shape, the weights it carries."""
    call = graph.etp_eqns[idx]
    y = _shape(graph.etp_out_avals[idx])
    xs, ps, aux = call.operand_positions()
    lines = [(f"{call.primitive.name}", True), (f"eqn {idx}  y {y}", False)]
    for pn, pos in sorted(ps.items()):  # the weights it carries (none: computed from states or inputs)
        names = ", ".join(graph.param_leaf_names[lbl[1]] for lbl in sorted(operands[pos]) if lbl[0] == "p")
        lines.append((f"{pn}: {names or '(computed)'}", False))
    return Node(("op", idx), "op", lines, f"ETP operator {call.primitive.name} (equation {idx}), "
                                          f"output {y}, parameters {', '.join(sorted(ps))}")


def _weight_node(graph: ETraceGraph, leaf: int, rels, algorithm_of, memory_of, leaf_text) -> Node:
    """The box of parameter leaf ``leaf`` (``rels``: its relations, or None): name, shape, and its
    trace memory, the learner's text (``leaf_text``) or why it is not traced."""
    name = graph.param_leaf_names[leaf]
    shape = tuple(graph.param_leaf_avals[leaf].shape)
    custom = leaf_text(leaf) if leaf_text else None
    lines = [(name, True)]
    if custom is not None:
        kind, text = custom
        lines.append((f"{shape}", False))
        lines += [(t, False) for t in wrap(text)]
        title = f"{name} {shape}: {text}"
    elif rels:
        kind = "traced"
        mems = [memory_of(r) for r in rels] if memory_of else []
        gs = ", ".join(f"[{r.group}]" for r in rels)
        lines.append((f"{shape}  traced -> group {gs}", False))
        if mems:
            lines.append((f"trace {sum(mems)} bytes/sample", False))
        title = "\n".join(_param_line(graph, r, algorithm_of, memory_of) for r in rels)
        if name in graph.untraced:  # traced into one group, refused for another
            lines += [(t, False) for t in wrap(f"not traced elsewhere: {graph.untraced[name]}")]
            title += f"\n{name} {shape}: not traced elsewhere: {graph.untraced[name]}"
    else:
        why = graph.untraced.get(name, "no ETP relation")
        if name in graph.truncated:
            kind = "truncated"
            tail = ("gradient of the current step only, the state's memory of it is dropped (route it through "
                    "an ETP operator, e.g. etprop.matmul, to trace it)")
            lines.append((f"{shape}  not traced: current step only", False))
        else:
            kind = "exact"
            tail = "exact gradient through the current step"
            lines.append((f"{shape}  not traced", False))
        lines += [(t, False) for t in wrap(why)]
        title = f"{name} {shape}: not traced ({why}); {tail}"
    return Node(("w", leaf), kind, lines, title)


def _operator_edges(graph: ETraceGraph, operands: dict, edges: _Edges) -> None:
    """The edges into the operators: weights (labelled with their parameter slot) and data."""
    jaxpr = graph.closed.jaxpr
    for idx in sorted(graph.etp_eqns):
        call = graph.etp_eqns[idx]
        xs, ps, aux = call.operand_positions()
        slot = {pos: pn for pn, pos in ps.items()}
        for pos, labels in enumerate(operands[idx]):
            for lbl in sorted(labels):
                if pos in slot and lbl[0] == "p":
                    direct = jaxpr.eqns[idx].invars[pos] is jaxpr.invars[lbl[1]]
                    edges.add(("w", lbl[1]), ("op", idx), "weight",
                              end_label=slot[pos] if direct else f"{slot[pos]}=f(.)",
                              title=f"{graph.param_leaf_names[lbl[1]]} is the '{slot[pos]}' of {call.primitive.name} "
                                    f"(equation {idx})" + ("" if direct else ", transformed outside the operator"))
                else:
                    kind = "back" if lbl[0] == "h" else "data"
                    edges.add(edges.source(lbl), ("op", idx), kind,
                              title=_flow_title(graph, lbl, f"{call.primitive.name} (equation {idx})"))


def _group_edges(graph: ETraceGraph, pre: dict, edges: _Edges, algorithm_of, memory_of, relations) -> None:
    """What drives each hidden group: relations (labelled with their rules), drives without one,
    weights carried in by plain ops, and the rest of the data flow."""
    rel_of_pair = {}
    for r in graph.relations:
        rel_of_pair.setdefault((r.eqn_index, r.group), []).append(r)
    for j, labels in pre.items():
        gj = graph.hidden_group[j]
        for lbl in sorted(labels):
            src = edges.source(lbl)
            if lbl[0] == "y" and not relations:  # the learner does not use them: plain data flow
                edges.add(src, ("g", gj), "data", title=_flow_title(graph, lbl, f"hidden state "
                                                                                f"'{graph.mf.hidden_names[j]}'"))
            elif lbl[0] == "y":
                rels = rel_of_pair.get((lbl[1], gj), [])
                if rels:
                    label = [t for r in rels for t in wrap(_relation_label(r, algorithm_of, memory_of))]
                    edges.add(src, ("g", gj), "relation", label=label,
                              title="\n".join(_param_line(graph, r, algorithm_of, memory_of) for r in rels))
                else:
                    call = graph.etp_eqns[lbl[1]]
                    edges.add(src, ("g", gj), "untraced",
                              title=f"{call.primitive.name} (equation {lbl[1]}) drives group [{gj}] without a "
                                    f"relation: its weights are not traced into this group")
            elif lbl[0] == "p":
                edges.add(src, ("g", gj), "plain", title=f"a plain JAX op carries {graph.param_leaf_names[lbl[1]]} "
                                                         f"into hidden state '{graph.mf.hidden_names[j]}'")
            elif src != ("g", gj):
                edges.add(src, ("g", gj), "back" if lbl[0] == "h" else "data",
                          title=_flow_title(graph, lbl, f"hidden state '{graph.mf.hidden_names[j]}'"))


def _relation_label(r, algorithm_of, memory_of) -> str:
    """What a relation's edge says of it: the weight, its rule, its trace's bytes per sample."""
    rule = algorithm_of(r) if algorithm_of else ""
    mem = memory_of(r) if memory_of else None
    return r.leaf_name + (f": {rule}" if rule else "") + (f", {mem} bytes/sample" if mem is not None else "")


def _param_line(graph, r, algorithm_of, memory_of) -> str:
    """The report's line of relation ``r`` (`ETraceGraph.report`)."""
    shape = tuple(graph.param_leaf_avals[r.leaf].shape)
    algo = algorithm_of(r) if algorithm_of else ""
    mem = memory_of(r) if memory_of else None
    mem_s = f"  trace {mem} bytes/sample" if mem is not None else ""
    return f"{r.leaf_name} {shape}: traced via {r.call.primitive.name} -> group [{r.group}] {algo}{mem_s}"


def _flow_title(graph, lbl, where: str) -> str:
    kind, i = lbl
    what = {"h": lambda: f"hidden state '{graph.mf.hidden_names[i]}' of the previous step",
            "hn": lambda: f"hidden state '{graph.mf.hidden_names[i]}' of this step",
            "y": lambda: f"the output of {graph.etp_eqns[i].primitive.name} (equation {i})",
            "in": lambda: f"input {i}",
            "p": lambda: graph.param_leaf_names[i]}[kind]()
    return f"{what} reaches {where}"


def graph_svg(graph: ETraceGraph, algorithm_of=None, memory_of=None, *, title: str | None = None,
              leaf_text=None, notes=(), relations: bool = True) -> str:
    """The SVG picture of ``graph`` (see the module docstring for the layout).

    Args:
      graph: a compiled `ETraceGraph` (``learner.graph``).
      algorithm_of: ``relation -> str``, the rule of a traced weight, as for `ETraceGraph.report`.
      memory_of: ``relation -> int``, its trace's bytes per sample, as for `ETraceGraph.report`.
      title: the first line (default: the model's class).
      leaf_text: ``leaf index -> (status, text) or None``: overrides what a weight's box says
        (status ``'traced'``, ``'exact'`` or ``'truncated'`` sets its colour); for learners whose
        unit is not the relation (an influence matrix, BPTT).
      notes: more lines for the notes below the picture (after the graph's notes and carried states).
      relations: draw the graph's relations (operator -> group, with their rules); False for
        learners that do not use them (an influence learner, BPTT): those drives are data flow.

    Returns:
      the SVG document as text.
    """
    nodes, edges = _build(graph, algorithm_of, memory_of, leaf_text, relations)
    rank_nodes(nodes, edges)
    width, height = layout(nodes, edges)
    title = title or f"{type(graph.mf.model).__name__} step"
    head = [title, "shapes per sample; hover a box or an edge for its line of the report"]
    if memory_of and graph.relations:
        head.append(f"trace memory: {sum(memory_of(r) for r in graph.relations)} bytes per sample in all")
    _, n_above, n_below = back_routes(nodes, edges)
    top = MARGIN + len(head) * (LH + 2) + 10 + (n_above * CHANNEL + 14 if n_above else 0)
    body_bottom = top + height + max(n_below * CHANNEL + 30, 50)  # room for the recurrences under the boxes
    width = max(width, 760.0)
    wrap_chars = max(int((width - 2 * MARGIN) / CW) - 4, 60)
    legend, y = draw_legend(nodes, edges, width, body_bottom + 10)
    note_parts, y = draw_notes(_all_notes(graph, notes), wrap_chars, y)
    total_h = y + MARGIN
    parts = svg_open(width, total_h, title)
    for i, line in enumerate(head):
        parts.append(svg_text(MARGIN, MARGIN + 10 + i * (LH + 2), line, bold=(i == 0), size=(14 if i == 0 else 11)))
    paths, labels = draw_edges(nodes, edges, top)
    parts.append('<g id="edges">' + "".join(paths) + "</g>")
    parts.append('<g id="edge-labels">' + "".join(labels) + "</g>")
    parts.append('<g id="nodes">' + "".join(draw_node(n, top) for n in nodes.values()) + "</g>")
    parts += legend
    parts.append('<g id="notes">' + "".join(note_parts) + "</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _all_notes(graph: ETraceGraph, notes) -> list[str]:
    """The lines below the picture: the graph's notes, its non-float carried states, then the
    other ``notes`` not already among them."""
    all_notes = [f"note: {n}" for n in graph.notes]
    if graph.carried:
        all_notes.append("carried, not differentiated (not floating point): "
                         + ", ".join(f"{n} ({d})" for n, d in graph.carried))
    all_notes += [n for n in notes if n not in all_notes]
    return all_notes
