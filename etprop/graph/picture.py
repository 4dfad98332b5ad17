"""A picture of the compiled graph: `learner.report()` drawn as an SVG image.

``learner_svg(learner)`` (or ``graph_svg(graph, algorithm_of, memory_of)``, which mirrors
`ETraceGraph.report`) returns the SVG text; ``etprop graph --model alif`` writes one for a
built-in model. No system binary is needed: the SVG is plain XML written here.

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

import dataclasses
import textwrap
from xml.sax.saxutils import escape

from etprop.graph.compiler import ETraceGraph

__all__ = ["graph_svg", "learner_svg", "relation_rule", "report_notes"]

# -- text metrics (a monospace font, so widths follow from character counts) -------------------
FONT = 12
CW = 7.25  # width of one character
LH = 15  # line height
PAD = 6
MARGIN = 20
WRAP = 46  # characters per line inside boxes and edge labels

_STYLE = {  # fill, stroke of each node kind
    "input": ("#ffffff", "#555555"), "output": ("#ffffff", "#555555"),
    "op": ("#fff9c4", "#a08c00"), "group": ("#dde9f8", "#1f5fa8"),
    "traced": ("#e3f4e1", "#2e7d32"), "exact": ("#f2f2f2", "#888888"), "truncated": ("#fff1dc", "#d9822b"),
}
_EDGE = {  # stroke, width, dash, marker
    "relation": ("#2e7d32", 1.8, None, "g"), "untraced": ("#c62828", 1.4, "6 3", "r"),
    "plain": ("#d9822b", 1.3, "6 3", "o"), "weight": ("#444444", 1.0, None, "k"),
    "data": ("#8a8a8a", 1.0, None, "k"), "back": ("#8a8a8a", 1.0, "4 3", "k"),
}
_MARK = {"g": "#2e7d32", "r": "#c62828", "o": "#d9822b", "k": "#666666"}


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


@dataclasses.dataclass
class _Node:
    key: tuple  # ("in", i) / ("op", eqn) / ("g", group) / ("out", k) / ("w", leaf)
    kind: str  # input, op, group, output, traced, exact, truncated
    lines: list  # [(text, bold)]
    title: str
    rank: int = 0
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    home: tuple | None = None  # a weight: the node it stands next to
    lane_x: float | None = None  # a node with weights above and below: where its lane begins


@dataclasses.dataclass
class _Edge:
    src: tuple
    dst: tuple
    kind: str  # relation, untraced, plain, weight, data, back
    label: list = dataclasses.field(default_factory=list)  # lines written along the edge
    title: str = ""
    end_label: str = ""  # written at the source end (a weight's parameter slot)


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


def _wrap(text: str, width: int = WRAP) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


# -- nodes and edges ----------------------------------------------------------------------------------


def _build(graph: ETraceGraph, algorithm_of, memory_of, leaf_text, relations=True):
    operands, pre, outs, in_avals = _flow(graph)
    nodes: dict = {}
    edges: list = []
    seen = set()

    def edge(src, dst, kind, **kw):
        key = (src, dst, kind, kw.get("end_label", ""))
        if src in nodes and dst in nodes and src != dst and key not in seen:
            seen.add(key)
            edges.append(_Edge(src, dst, kind, **kw))

    def source(label):
        kind, i = label
        if kind in ("h", "hn"):
            return ("g", graph.hidden_group[i])
        return {"y": ("op", i), "in": ("in", i), "p": ("w", i)}[kind]

    for i, av in enumerate(in_avals):
        nodes[("in", i)] = _Node(("in", i), "input", [(f"input {i}", True), (f"{_shape(av)}", False)],
                                 f"input {i} {_shape(av)} per sample")
    for g in graph.groups:
        head = f"[{g.index}] {', '.join(g.names)}  shape={g.shape}  states per position S={g.num_states}"
        lines = [(f"group [{g.index}]", True), (f"shape {g.shape}  S={g.num_states}", False)]
        lines += [(f"{s}: {n}", False) for s, n in enumerate(g.names)]
        nodes[("g", g.index)] = _Node(("g", g.index), "group", lines, head)
    jaxpr = graph.closed.jaxpr
    for idx in sorted(graph.etp_eqns):
        call = graph.etp_eqns[idx]
        y = _shape(graph.etp_out_avals[idx])
        xs, ps, aux = call.operand_positions()
        lines = [(f"{call.primitive.name}", True), (f"eqn {idx}  y {y}", False)]
        for pn, pos in sorted(ps.items()):  # the weights it carries (none: computed from states or inputs)
            names = ", ".join(graph.param_leaf_names[lbl[1]] for lbl in sorted(operands[idx][pos]) if lbl[0] == "p")
            lines.append((f"{pn}: {names or '(computed)'}", False))
        nodes[("op", idx)] = _Node(("op", idx), "op", lines, f"ETP operator {call.primitive.name} (equation {idx}), "
                                                            f"output {y}, parameters {', '.join(sorted(ps))}")
    for k, v in enumerate(jaxpr.outvars[:graph.n_out]):
        shp = _shape(v.aval)
        nodes[("out", k)] = _Node(("out", k), "output", [(f"output {k}", True), (shp, False)],
                                  f"output {k} {shp} per sample")
    rels_of = {}
    for r in graph.relations:
        rels_of.setdefault(r.leaf, []).append(r)
    for leaf, name in enumerate(graph.param_leaf_names):
        shape = tuple(graph.param_leaf_avals[leaf].shape)
        custom = leaf_text(leaf) if leaf_text else None
        lines = [(name, True)]
        if custom is not None:
            kind, text = custom
            lines.append((f"{shape}", False))
            lines += [(t, False) for t in _wrap(text)]
            title = f"{name} {shape}: {text}"
        elif leaf in rels_of:
            kind = "traced"
            mems = [memory_of(r) for r in rels_of[leaf]] if memory_of else []
            gs = ", ".join(f"[{r.group}]" for r in rels_of[leaf])
            lines.append((f"{shape}  traced -> group {gs}", False))
            if mems:
                lines.append((f"trace {sum(mems)} bytes/sample", False))
            title = "\n".join(_param_line(graph, r, algorithm_of, memory_of) for r in rels_of[leaf])
            if name in graph.untraced:  # traced into one group, refused for another
                lines += [(t, False) for t in _wrap(f"not traced elsewhere: {graph.untraced[name]}")]
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
            lines += [(t, False) for t in _wrap(why)]
            title = f"{name} {shape}: not traced ({why}); {tail}"
        nodes[("w", leaf)] = _Node(("w", leaf), kind, lines, title)

    # edges into and out of the operators
    for idx in sorted(graph.etp_eqns):
        call = graph.etp_eqns[idx]
        xs, ps, aux = call.operand_positions()
        slot = {pos: pn for pn, pos in ps.items()}
        for pos, labels in enumerate(operands[idx]):
            for lbl in sorted(labels):
                if pos in slot and lbl[0] == "p":
                    direct = jaxpr.eqns[idx].invars[pos] is jaxpr.invars[lbl[1]]
                    edge(("w", lbl[1]), ("op", idx), "weight", end_label=slot[pos] if direct else f"{slot[pos]}=f(.)",
                         title=f"{graph.param_leaf_names[lbl[1]]} is the '{slot[pos]}' of {call.primitive.name} "
                               f"(equation {idx})" + ("" if direct else ", transformed outside the operator"))
                else:
                    kind = "back" if lbl[0] == "h" else "data"
                    edge(source(lbl), ("op", idx), kind, title=_flow_title(graph, lbl, f"{call.primitive.name} "
                                                                                       f"(equation {idx})"))
    # what drives each hidden group
    rel_of_pair = {}
    for r in graph.relations:
        rel_of_pair.setdefault((r.eqn_index, r.group), []).append(r)
    for j, labels in pre.items():
        gj = graph.hidden_group[j]
        for lbl in sorted(labels):
            src = source(lbl)
            if lbl[0] == "y" and not relations:  # the learner does not use them: plain data flow
                edge(src, ("g", gj), "data", title=_flow_title(graph, lbl, f"hidden state "
                                                                           f"'{graph.mf.hidden_names[j]}'"))
            elif lbl[0] == "y":
                rels = rel_of_pair.get((lbl[1], gj), [])
                if rels:
                    label, titles = [], []
                    for r in rels:
                        rule = algorithm_of(r) if algorithm_of else ""
                        mem = memory_of(r) if memory_of else None
                        text = r.leaf_name + (f": {rule}" if rule else "") + (f", {mem} bytes/sample"
                                                                               if mem is not None else "")
                        label += _wrap(text)
                        titles.append(_param_line(graph, r, algorithm_of, memory_of))
                    edge(src, ("g", gj), "relation", label=label, title="\n".join(titles))
                else:
                    call = graph.etp_eqns[lbl[1]]
                    edge(src, ("g", gj), "untraced", title=f"{call.primitive.name} (equation {lbl[1]}) drives group "
                                                           f"[{gj}] without a relation: its weights are not traced "
                                                           f"into this group")
            elif lbl[0] == "p":
                edge(src, ("g", gj), "plain", title=f"a plain JAX op carries {graph.param_leaf_names[lbl[1]]} into "
                                                    f"hidden state '{graph.mf.hidden_names[j]}'")
            elif src != ("g", gj):
                edge(src, ("g", gj), "back" if lbl[0] == "h" else "data",
                     title=_flow_title(graph, lbl, f"hidden state '{graph.mf.hidden_names[j]}'"))
    for k, labels in enumerate(outs):
        for lbl in sorted(labels):
            kind = "plain" if lbl[0] == "p" else "data"
            edge(source(lbl), ("out", k), kind, title=_flow_title(graph, lbl, f"output {k}"))
    return nodes, edges


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


# -- layout -------------------------------------------------------------------------------------------


def _rank(nodes: dict, edges: list) -> None:
    """Longest-path columns over the forward edges; back edges (states read a step later) and
    a cycle's remaining edges are left out. Weights rank with the first node they enter."""
    flow = [e for e in edges if e.src[0] != "w"]
    fwd = [e for e in flow if e.kind != "back"]
    succ = {}
    for e in fwd:
        succ.setdefault(e.src, set()).add(e.dst)

    def reaches(a, b):
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(succ.get(n, ()))
        return False

    # a previous state read by a node that does not feed back into its group is forward data flow
    for e in flow:
        if e.kind == "back" and not reaches(e.dst, e.src):
            e.kind = "data"
    fwd = [e for e in flow if e.kind != "back"]
    keys = [k for k in nodes if k[0] != "w"]
    preds = {k: set() for k in keys}
    for e in fwd:
        preds[e.dst].add(e.src)
    rank, left = {}, set(keys)
    while left:
        ready = [k for k in sorted(left, key=_order) if not (preds[k] & left)]
        if not ready:  # a cycle within the step (rare): cut the edges into its first node
            k = min(left, key=_order)
            for e in fwd:
                if e.dst == k and e.src in left:
                    e.kind = "back"
            preds[k] -= left
            continue
        for k in ready:
            rank[k] = 0 if k[0] == "in" else max([rank[p] + 1 for p in preds[k]] + [1])
            left.discard(k)
    last = max(rank.values(), default=0) + 1
    # then as late as possible: a node stands just left of its first successor, so that the
    # operators driving one group share a column and their relations cross no other box
    succ = {}
    for e in fwd:
        if e.kind != "back":
            succ.setdefault(e.src, set()).add(e.dst)
    for k in sorted(keys, key=lambda k: -rank[k]):
        nxt = [last if s[0] == "out" else rank[s] for s in succ.get(k, ())]
        if k[0] not in ("in", "out") and nxt:
            rank[k] = max(rank[k], min(nxt) - 1)
    for k in keys:
        nodes[k].rank = last if k[0] == "out" else rank[k]
    for k, n in nodes.items():
        if k[0] == "w":
            targets = [e.dst for e in edges if e.src == k]
            n.rank = min((nodes[t].rank for t in targets), default=0)
            n.home = min(targets, key=lambda t: (nodes[t].rank, _order(t))) if targets else None


def _order(key) -> tuple:
    return ({"in": 0, "w": 1, "op": 2, "g": 3, "out": 4}[key[0]], key[1])


def _box_size(n: _Node) -> None:
    n.w = max(len(t) for t, _ in n.lines) * CW + 2 * PAD
    n.h = len(n.lines) * LH + 2 * PAD


def _label_width(e: _Edge) -> float:
    return max((len(t) for t in e.label), default=0) * CW


def _layout(nodes: dict, edges: list):
    for n in nodes.values():
        _box_size(n)
    out_edges = {}
    for e in edges:
        out_edges.setdefault(e.src, []).append(e)
    # operators hold the labels of their relations on their right: make room for them
    for k, n in nodes.items():
        rel = [e for e in out_edges.get(k, []) if e.label]
        need = sum(max(len(e.label), 1) * LH + 6 for e in rel) + 2 * PAD
        n.h = max(n.h, need)
    cols = sorted({n.rank for n in nodes.values()})
    col_nodes = {c: sorted([k for k, n in nodes.items() if n.rank == c and k[0] != "w"], key=_order) for c in cols}
    # barycentre ordering, a few sweeps, over the forward edges
    pos = {k: i for c in cols for i, k in enumerate(col_nodes[c])}
    for _ in range(4):
        for c in cols[1:]:
            def bary(k):
                ps = [pos[e.src] for e in edges if e.dst == k and e.kind != "back" and e.src[0] != "w"
                      and nodes[e.src].rank < c]
                return (sum(ps) / len(ps) if ps else pos[k], _order(k))
            col_nodes[c].sort(key=bary)
            pos.update({k: i for i, k in enumerate(col_nodes[c])})
    # each column: slots of (node, the weights whose home it is) stacked top to bottom
    weights_of = {}
    for k, n in nodes.items():
        if k[0] == "w":
            weights_of.setdefault(n.home, []).append(k)
    orphans = weights_of.pop(None, [])
    fed = {e.dst for e in edges if e.src[0] != "w" and nodes[e.src].rank < nodes[e.dst].rank}
    x = MARGIN
    col_x, lane = {}, {}
    for c in cols:
        ws = [w for k in col_nodes[c] for w in weights_of.get(k, [])] + (orphans if c == cols[0] else [])
        lane[c] = max((nodes[w].w for w in ws), default=0)
        ends = [e.end_label for w in ws for e in out_edges.get(w, []) if e.end_label]
        lane_gap = (max(len(t) for t in ends) * CW + 24 if ends else 36) if ws else 0
        node_w = max((nodes[k].w for k in col_nodes[c]), default=0)
        col_x[c] = (x, x + lane[c] + lane_gap)
        label_w = max((_label_width(e) for k in col_nodes[c] for e in out_edges.get(k, [])), default=0)
        x = col_x[c][1] + node_w + max(70, label_w + 60)
    # a node fed from the left gets its weights above and below it: its data comes in
    # straight through the lane between them (`_draw_edges`)
    total_h = _stack(nodes, cols, col_nodes, weights_of, orphans, col_x, lane, fed)
    for k in fed:
        if weights_of.get(k):
            nodes[k].lane_x = col_x[nodes[k].rank][0]
    width = max((n.x + n.w for n in nodes.values()), default=0) + MARGIN
    return width, total_h


def _stack(nodes, cols, col_nodes, weights_of, orphans, col_x, lane, split) -> float:
    """Place every box: per column, slots of (node, its weights) from the top, each column centred.
    The weights of a node in ``split`` stand half above it, half below; the others beside it.
    Returns the height."""
    gap_y = 14
    heights = {}
    for c in cols:
        y = 0.0
        slots = [(k, weights_of.get(k, [])) for k in col_nodes[c]]
        if c == cols[0] and orphans:
            slots.append((None, orphans))
        for k, wl in slots:
            nh = nodes[k].h if k is not None else 0
            wx = lambda w: col_x[c][0] + lane[c] - nodes[w].w
            if wl and k in split:
                cut = (len(wl) + 1) // 2
                wy = y
                for w in wl[:cut]:
                    nodes[w].x, nodes[w].y = wx(w), wy
                    wy += nodes[w].h + gap_y
                nodes[k].x, nodes[k].y = col_x[c][1], wy - gap_y / 2
                wy = nodes[k].y + nh + gap_y / 2
                for w in wl[cut:]:
                    nodes[w].x, nodes[w].y = wx(w), wy
                    wy += nodes[w].h + gap_y
                slot_h = max(wy - gap_y, nodes[k].y + nh) - y
            else:
                wh = sum(nodes[w].h for w in wl) + gap_y * max(len(wl) - 1, 0)
                slot_h = max(wh, nh)
                if k is not None:
                    nodes[k].x, nodes[k].y = col_x[c][1], y + (slot_h - nh) / 2
                wy = y + (slot_h - wh) / 2
                for w in wl:
                    nodes[w].x, nodes[w].y = wx(w), wy
                    wy += nodes[w].h + gap_y
            y += slot_h + gap_y * 2
        heights[c] = y - gap_y * 2
    total_h = max(heights.values(), default=0)
    for c in cols:  # centre each column
        shift = (total_h - heights[c]) / 2
        for n in nodes.values():
            if n.rank == c:
                n.y += shift
    return total_h


# -- drawing ------------------------------------------------------------------------------------------


HALO = ' stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'  # legible over lines


def _text(x, y, s, *, bold=False, anchor=None, size=None, fill="#222222", halo=False) -> str:
    attrs = f'x="{x:.1f}" y="{y:.1f}"' + (HALO if halo else "")
    if bold:
        attrs += ' font-weight="bold"'
    if anchor:
        attrs += f' text-anchor="{anchor}"'
    if size:
        attrs += f' font-size="{size}"'
    if fill != "#222222":
        attrs += f' fill="{fill}"'
    return f"<text {attrs}>{escape(s)}</text>"


def _draw_node(n: _Node, dy: float) -> str:
    fill, stroke = _STYLE[n.kind]
    rx = 10 if n.kind in ("input", "output") else 4 if n.kind != "group" else 8
    parts = [f"<g><title>{escape(n.title)}</title>",
             f'<rect x="{n.x:.1f}" y="{n.y + dy:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" rx="{rx}" '
             f'fill="{fill}" stroke="{stroke}" stroke-width="{1.6 if n.kind == "group" else 1.1}"/>']
    y = n.y + dy + PAD + LH - 3.5
    for t, bold in n.lines:
        parts.append(_text(n.x + PAD, y, t, bold=bold))
        y += LH
    parts.append("</g>")
    return "".join(parts)


CHANNEL = 7  # spacing of the channels that carry the recurrences


def _back_routes(nodes: dict, edges: list) -> tuple[dict, int, int]:
    """For each edge drawn leftwards (a state read at the next step): ``(side, channel)``, the
    side being ``'above'`` / ``'below'`` every box where the target has no box above / below
    it in its column (``'curve'`` under the boxes otherwise); and the number of channels used
    above and below."""
    routes, n = {}, {"above": 0, "below": 0, "curve": 0}
    for e in edges:
        s, d = nodes[e.src], nodes[e.dst]
        if not (e.kind == "back" or d.x <= s.x):
            continue
        column = [m for k, m in nodes.items() if k[0] != "w" and m.rank == d.rank and m is not d]
        if not any(m.y < d.y for m in column):
            side = "above"
        elif not any(m.y > d.y for m in column):
            side = "below"
        else:
            side = "curve"
        routes[id(e)] = (side, n[side])
        n[side] += 1
    return routes, n["above"], n["below"]


def _draw_edges(nodes, edges, dy) -> tuple[list[str], list[str]]:
    """``(paths, labels)``: the labels go on top of every path (with a halo: legible where another
    edge passes), each in a ``<g>`` with its edge's ``<title>``."""
    out, labels = [], []
    routes, _, _ = _back_routes(nodes, edges)
    top_all = min((n.y for n in nodes.values()), default=0)
    bottom_all = max((n.y + n.h for n in nodes.values()), default=0)
    # ports: outgoing on the right (labelled edges stacked from the top), incoming on the left
    outgoing, incoming = {}, {}
    for e in edges:
        if e.kind == "back" or nodes[e.dst].x <= nodes[e.src].x:
            continue
        outgoing.setdefault(e.src, []).append(e)
        incoming.setdefault(e.dst, []).append(e)
    src_y, dst_y = {}, {}
    for k, es in outgoing.items():
        n = nodes[k]
        es.sort(key=lambda e: (nodes[e.dst].y, _order(e.dst)))
        if any(e.label for e in es):
            y = n.y + PAD
            for e in es:
                room = max(len(e.label), 1) * LH + 6
                src_y[id(e)] = y + room - 2
                y += room
        else:
            for i, e in enumerate(es):
                src_y[id(e)] = n.y + n.h * (i + 1) / (len(es) + 1)
    for k, es in incoming.items():
        n = nodes[k]
        band = lambda e: (1 if e.kind != "weight" else 0 if nodes[e.src].y < n.y else 2)  # weights above, data, below
        es.sort(key=lambda e: (band(e), src_y[id(e)], _order(e.src)))
        for i, e in enumerate(es):
            dst_y[id(e)] = n.y + n.h * (i + 1) / (len(es) + 1)
    for e in edges:
        s, d = nodes[e.src], nodes[e.dst]
        stroke, width, dash, mark = _EDGE[e.kind]
        style = f'fill="none" stroke="{stroke}" stroke-width="{width}"' + (f' stroke-dasharray="{dash}"' if dash else "")
        parts = [f"<g><title>{escape(e.title)}</title>"]
        lab = []
        if id(e) in src_y:
            x1, y1 = s.x + s.w, src_y[id(e)] + dy
            x2, y2 = d.x, dst_y[id(e)] + dy
            run = x1 + (_label_width(e) + 12 if e.label else 0)
            bend = x2
            if d.lane_x is not None and e.kind != "weight" and d.lane_x - 6 > x1 + 40:
                bend = d.lane_x - 6  # straight in through the lane, between the weights
            run = min(run, bend - 20)
            c = max((bend - run) / 2, 20)
            path = (f"M{x1:.1f},{y1:.1f} H{run:.1f} C{run + c:.1f},{y1:.1f} {bend - c:.1f},{y2:.1f} {bend:.1f},{y2:.1f}"
                    + (f" H{x2:.1f}" if bend < x2 else ""))
            parts.append(f'<path d="{path}" {style} marker-end="url(#etp-arrow-{mark})"/>')
            if e.label:  # one <text>, a <tspan> per wrapped line, ending just above the line
                tsp = "".join(f'<tspan x="{x1 + 6:.1f}" dy="{0 if i == 0 else LH}">{escape(t)}</tspan>'
                              for i, t in enumerate(e.label))
                lab.append(f'<text x="{x1 + 6:.1f}" y="{y1 - 4 - (len(e.label) - 1) * LH:.1f}" font-size="11" '
                           f'fill="#1b5e20"{HALO}>{tsp}</text>')
            if e.end_label:
                lab.append(_text(x1 + 5, y1 - 4, e.end_label, size=11, fill="#555555", halo=True))
        else:  # read a step later, or leftwards: along a channel above or below every box
            side, i = routes[id(e)]
            x1, x2 = s.x + s.w / 2 + 4 * (i % 3), d.x + d.w / 2 - 4 * (i % 3)
            if side == "above":
                ch = top_all - 12 - CHANNEL * i + dy
                y1, y2 = s.y + dy, d.y + dy
            else:
                ch = bottom_all + 14 + CHANNEL * i + dy
                y1, y2 = s.y + s.h + dy, d.y + d.h + dy
            if side == "curve":
                depth = 28 + 0.08 * abs(x2 - x1)
                path = (f"M{x1:.1f},{y1:.1f} C{x1:.1f},{max(y1, y2) + depth:.1f} {x2:.1f},{max(y1, y2) + depth:.1f} "
                        f"{x2:.1f},{y2 + 2:.1f}")
            else:
                path = f"M{x1:.1f},{y1:.1f} V{ch:.1f} H{x2:.1f} V{y2:.1f}"
            parts.append(f'<path d="{path}" {style} marker-end="url(#etp-arrow-{mark})"/>')
        parts.append("</g>")
        out.append("".join(parts))
        if lab:
            labels.append(f"<g><title>{escape(e.title)}</title>" + "".join(lab) + "</g>")
    return out, labels


_LEGEND = [
    ("traced", "weight whose gradient reaches back in time: its trace, influence or rule in its box"),
    ("exact", "weight not traced: exact gradient through the current step"),
    ("truncated", "weight not traced but carried into a state by a plain op: current step only"),
    ("op", "ETP operator"), ("group", "hidden group: states of one shape, S per position"),
    ("relation", "relation: the operator drives the group; its weights' rule and trace bytes/sample"),
    ("untraced", "the operator drives the group, no relation (its weights are not traced there)"),
    ("plain", "a weight reaching a state or an output through a plain op"),
    ("data", "data flow within the step"), ("back", "a state read at the next step (recurrence)"),
]


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
    _rank(nodes, edges)
    width, height = _layout(nodes, edges)
    title = title or f"{type(graph.mf.model).__name__} step"
    head = [title, "shapes per sample; hover a box or an edge for its line of the report"]
    if memory_of and graph.relations:
        head.append(f"trace memory: {sum(memory_of(r) for r in graph.relations)} bytes per sample in all")
    _, n_above, n_below = _back_routes(nodes, edges)
    top = MARGIN + len(head) * (LH + 2) + 10 + (n_above * CHANNEL + 14 if n_above else 0)
    body_bottom = top + height + max(n_below * CHANNEL + 30, 50)  # room for the recurrences under the boxes
    all_notes = [f"note: {n}" for n in graph.notes]
    if graph.carried:
        all_notes.append("carried, not differentiated (not floating point): "
                         + ", ".join(f"{n} ({d})" for n, d in graph.carried))
    all_notes += [n for n in notes if n not in all_notes]
    width = max(width, 760.0)
    wrap_chars = max(int((width - 2 * MARGIN) / CW) - 4, 60)
    parts = []
    y = body_bottom + 10
    # legend: two columns of swatches
    legend = ['<g><title>legend</title>', _text(MARGIN, y, "legend", bold=True)]
    y += LH + 4
    col_w = (width - 2 * MARGIN) / 2
    present = {n.kind for n in nodes.values()} | {e.kind for e in edges}
    entries = [(k, t) for k, t in _LEGEND if k in present]
    for i, (kind, text) in enumerate(entries):
        lx = MARGIN + (i % 2) * col_w
        ly = y + (i // 2) * (LH + 4)
        if kind in _STYLE:
            fill, stroke = _STYLE[kind]
            legend.append(f'<rect x="{lx:.1f}" y="{ly - 10:.1f}" width="22" height="12" rx="2" fill="{fill}" '
                          f'stroke="{stroke}"/>')
        else:
            stroke, sw, dash, mark = _EDGE[kind]
            legend.append(f'<path d="M{lx:.1f},{ly - 4:.1f} H{lx + 22:.1f}" stroke="{stroke}" stroke-width="{sw}"'
                          + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        legend.append(_text(lx + 30, ly, text[:int(col_w / CW) - 6], size=11))
    legend.append("</g>")
    y += ((len(entries) + 1) // 2) * (LH + 4) + 10
    note_parts = []
    if all_notes:
        note_parts.append(_text(MARGIN, y, "notes (learner.report())", bold=True))
        y += LH + 4
        for line in all_notes:
            indent = len(line) - len(line.lstrip(" "))
            text = line.strip()
            wrapped = _wrap(text, wrap_chars - indent)
            x0 = MARGIN + indent * CW
            tsp = "".join(f'<tspan x="{x0:.1f}" dy="{0 if i == 0 else LH}">{escape(t)}</tspan>'
                          for i, t in enumerate(wrapped))
            note_parts.append(f'<g><title>{escape(text)}</title><text x="{x0:.1f}" y="{y:.1f}">{tsp}</text></g>')
            y += len(wrapped) * LH + 3
    total_h = y + MARGIN
    parts.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{total_h:.0f}" '
                 f'viewBox="0 0 {width:.0f} {total_h:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
                 f'font-size="{FONT}">')
    parts.append(f"<title>{escape(title)}</title>")
    parts.append("<defs>" + "".join(
        f'<marker id="etp-arrow-{m}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>' for m, c in _MARK.items())
        + "</defs>")
    parts.append(f'<rect x="0" y="0" width="{width:.0f}" height="{total_h:.0f}" fill="#ffffff"/>')
    for i, line in enumerate(head):
        parts.append(_text(MARGIN, MARGIN + 10 + i * (LH + 2), line, bold=(i == 0), size=(14 if i == 0 else 11)))
    paths, labels = _draw_edges(nodes, edges, top)
    parts.append('<g id="edges">' + "".join(paths) + "</g>")
    parts.append('<g id="edge-labels">' + "".join(labels) + "</g>")
    parts.append('<g id="nodes">' + "".join(_draw_node(n, top) for n in nodes.values()) + "</g>")
    parts += legend
    parts.append('<g id="notes">' + "".join(note_parts) + "</g>")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
