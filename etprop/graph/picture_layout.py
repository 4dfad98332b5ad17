"""Where the boxes of `etprop.graph.picture` stand: the text metrics, the node and edge
containers, wrapping, the ranking of the step's data flow into columns, the order within a
column, the box sizes and the stacking of boxes and weights (see `etprop.graph.picture` for
the layout it draws)."""

from __future__ import annotations

import dataclasses
import textwrap

__all__ = ["CW", "FONT", "LH", "MARGIN", "PAD", "WRAP", "Edge", "Node", "label_width", "layout", "node_order",
           "rank_nodes", "wrap"]

# -- text metrics (a monospace font, so widths follow from character counts) -------------------
FONT = 12
CW = 7.25  # width of one character
LH = 15  # line height
PAD = 6
MARGIN = 20
WRAP = 46  # characters per line inside boxes and edge labels


@dataclasses.dataclass
class Node:
    """A box of the picture: what it says (``lines``, ``title``) and where it stands."""

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
class Edge:
    """An arrow of the picture between two node keys, with its label lines and ``<title>``."""

    src: tuple
    dst: tuple
    kind: str  # relation, untraced, plain, weight, data, back
    label: list = dataclasses.field(default_factory=list)  # lines written along the edge
    title: str = ""
    end_label: str = ""  # written at the source end (a weight's parameter slot)


def wrap(text: str, width: int = WRAP) -> list[str]:
    """``text`` in lines of at most ``width`` characters, words unbroken (at least one line)."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


# -- layout -------------------------------------------------------------------------------------------


def rank_nodes(nodes: dict, edges: list) -> None:
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
        ready = [k for k in sorted(left, key=node_order) if not (preds[k] & left)]
        if not ready:  # a cycle within the step (rare): cut the edges into its first node
            k = min(left, key=node_order)
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
            n.home = min(targets, key=lambda t: (nodes[t].rank, node_order(t))) if targets else None


def node_order(key) -> tuple:
    """The sort key of a node key: inputs, weights, operators, groups, outputs, then by index."""
    return ({"in": 0, "w": 1, "op": 2, "g": 3, "out": 4}[key[0]], key[1])


def _box_size(n: Node) -> None:
    """Set ``n``'s width and height from its lines."""
    n.w = max(len(t) for t, _ in n.lines) * CW + 2 * PAD
    n.h = len(n.lines) * LH + 2 * PAD


def label_width(e: Edge) -> float:
    """The width of ``e``'s longest label line."""
    return max((len(t) for t in e.label), default=0) * CW


def layout(nodes: dict, edges: list):
    """Size and place every box of ranked ``nodes`` (`rank_nodes`): columns left to right, weights
    in a lane left of the node they enter. Returns ``(width, height)``."""
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
    col_nodes = {c: sorted([k for k, n in nodes.items() if n.rank == c and k[0] != "w"], key=node_order) for c in cols}
    # barycentre ordering, a few sweeps, over the forward edges
    pos = {k: i for c in cols for i, k in enumerate(col_nodes[c])}
    for _ in range(4):
        for c in cols[1:]:
            def bary(k):
                ps = [pos[e.src] for e in edges if e.dst == k and e.kind != "back" and e.src[0] != "w"
                      and nodes[e.src].rank < c]
                return (sum(ps) / len(ps) if ps else pos[k], node_order(k))
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
        label_w = max((label_width(e) for k in col_nodes[c] for e in out_edges.get(k, [])), default=0)
        x = col_x[c][1] + node_w + max(70, label_w + 60)
    # a node fed from the left gets its weights above and below it: its data comes in
    # straight through the lane between them (`picture_svg.draw_edges`)
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

