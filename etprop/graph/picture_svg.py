"""The SVG drawing of `etprop.graph.picture`: the styles of boxes and edges, text, boxes, the
routes of the recurrences, edges with their labels, the legend, the notes and the document head.
Everything is placed already (`etprop.graph.picture_layout`); this only writes the XML."""

from __future__ import annotations

from xml.sax.saxutils import escape

from etprop.graph.picture_layout import CW, FONT, LH, MARGIN, PAD, Node, label_width, node_order, wrap

__all__ = ["CHANNEL", "HALO", "back_routes", "draw_edges", "draw_legend", "draw_node", "draw_notes", "svg_open",
           "svg_text"]

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


HALO = ' stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'  # legible over lines


def svg_text(x, y, s, *, bold=False, anchor=None, size=None, fill="#222222", halo=False) -> str:
    """One ``<text>`` element holding ``s`` (escaped) at ``(x, y)``."""
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


def draw_node(n: Node, dy: float) -> str:
    """Box ``n`` (shifted down by ``dy``): a ``<g>`` with its ``<title>``, its rectangle and lines."""
    fill, stroke = _STYLE[n.kind]
    rx = 10 if n.kind in ("input", "output") else 4 if n.kind != "group" else 8
    parts = [f"<g><title>{escape(n.title)}</title>",
             f'<rect x="{n.x:.1f}" y="{n.y + dy:.1f}" width="{n.w:.1f}" height="{n.h:.1f}" rx="{rx}" '
             f'fill="{fill}" stroke="{stroke}" stroke-width="{1.6 if n.kind == "group" else 1.1}"/>']
    y = n.y + dy + PAD + LH - 3.5
    for t, bold in n.lines:
        parts.append(svg_text(n.x + PAD, y, t, bold=bold))
        y += LH
    parts.append("</g>")
    return "".join(parts)


CHANNEL = 7  # spacing of the channels that carry the recurrences


def back_routes(nodes: dict, edges: list) -> tuple[dict, int, int]:
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


def _ports(nodes: dict, edges: list) -> tuple[dict, dict]:
    """``(src_y, dst_y)``: where each rightward edge (by ``id``) leaves its source and enters its
    target: outgoing on the right (labelled edges stacked from the top), incoming on the left
    (weights from above, data, weights from below)."""
    outgoing, incoming = {}, {}
    for e in edges:
        if e.kind == "back" or nodes[e.dst].x <= nodes[e.src].x:
            continue
        outgoing.setdefault(e.src, []).append(e)
        incoming.setdefault(e.dst, []).append(e)
    src_y, dst_y = {}, {}
    for k, es in outgoing.items():
        n = nodes[k]
        es.sort(key=lambda e: (nodes[e.dst].y, node_order(e.dst)))
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
        es.sort(key=lambda e: (band(e), src_y[id(e)], node_order(e.src)))
        for i, e in enumerate(es):
            dst_y[id(e)] = n.y + n.h * (i + 1) / (len(es) + 1)
    return src_y, dst_y


def _forward_path(e, s: Node, d: Node, y1: float, y2: float) -> tuple[str, list[str]]:
    """A rightward edge from ``s`` at ``y1`` to ``d`` at ``y2``: its path data and its labels (the
    label lines along it, the parameter slot at its source end)."""
    x1, x2 = s.x + s.w, d.x
    run = x1 + (label_width(e) + 12 if e.label else 0)
    bend = x2
    if d.lane_x is not None and e.kind != "weight" and d.lane_x - 6 > x1 + 40:
        bend = d.lane_x - 6  # straight in through the lane, between the weights
    run = min(run, bend - 20)
    c = max((bend - run) / 2, 20)
    path = (f"M{x1:.1f},{y1:.1f} H{run:.1f} C{run + c:.1f},{y1:.1f} {bend - c:.1f},{y2:.1f} {bend:.1f},{y2:.1f}"
            + (f" H{x2:.1f}" if bend < x2 else ""))
    lab = []
    if e.label:  # one <text>, a <tspan> per wrapped line, ending just above the line
        tsp = "".join(f'<tspan x="{x1 + 6:.1f}" dy="{0 if i == 0 else LH}">{escape(t)}</tspan>'
                      for i, t in enumerate(e.label))
        lab.append(f'<text x="{x1 + 6:.1f}" y="{y1 - 4 - (len(e.label) - 1) * LH:.1f}" font-size="11" '
                   f'fill="#1b5e20"{HALO}>{tsp}</text>')
    if e.end_label:
        lab.append(svg_text(x1 + 5, y1 - 4, e.end_label, size=11, fill="#555555", halo=True))
    return path, lab


def _back_path(s: Node, d: Node, side: str, i: int, top_all: float, bottom_all: float, dy: float) -> str:
    """The path data of an edge read a step later, or leftwards: along channel ``i`` above or
    below every box (``side`` from `back_routes`), or a curve under the boxes."""
    x1, x2 = s.x + s.w / 2 + 4 * (i % 3), d.x + d.w / 2 - 4 * (i % 3)
    if side == "above":
        ch = top_all - 12 - CHANNEL * i + dy
        y1, y2 = s.y + dy, d.y + dy
    else:
        ch = bottom_all + 14 + CHANNEL * i + dy
        y1, y2 = s.y + s.h + dy, d.y + d.h + dy
    if side == "curve":
        depth = 28 + 0.08 * abs(x2 - x1)
        return (f"M{x1:.1f},{y1:.1f} C{x1:.1f},{max(y1, y2) + depth:.1f} {x2:.1f},{max(y1, y2) + depth:.1f} "
                f"{x2:.1f},{y2 + 2:.1f}")
    return f"M{x1:.1f},{y1:.1f} V{ch:.1f} H{x2:.1f} V{y2:.1f}"


def draw_edges(nodes, edges, dy) -> tuple[list[str], list[str]]:
    """``(paths, labels)``: the labels go on top of every path (with a halo: legible where another
    edge passes), each in a ``<g>`` with its edge's ``<title>``."""
    out, labels = [], []
    routes, _, _ = back_routes(nodes, edges)
    top_all = min((n.y for n in nodes.values()), default=0)
    bottom_all = max((n.y + n.h for n in nodes.values()), default=0)
    src_y, dst_y = _ports(nodes, edges)
    for e in edges:
        s, d = nodes[e.src], nodes[e.dst]
        stroke, width, dash, mark = _EDGE[e.kind]
        style = f'fill="none" stroke="{stroke}" stroke-width="{width}"' + (f' stroke-dasharray="{dash}"' if dash else "")
        if id(e) in src_y:
            path, lab = _forward_path(e, s, d, src_y[id(e)] + dy, dst_y[id(e)] + dy)
        else:
            path, lab = _back_path(s, d, *routes[id(e)], top_all, bottom_all, dy), []
        out.append(f"<g><title>{escape(e.title)}</title>"
                   f'<path d="{path}" {style} marker-end="url(#etp-arrow-{mark})"/></g>')
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


def draw_legend(nodes: dict, edges: list, width: float, y: float) -> tuple[list[str], float]:
    """The legend from ``y`` down, two columns of swatches for the kinds of box and edge present:
    its elements and the ``y`` below it."""
    legend = ['<g><title>legend</title>', svg_text(MARGIN, y, "legend", bold=True)]
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
        legend.append(svg_text(lx + 30, ly, text[:int(col_w / CW) - 6], size=11))
    legend.append("</g>")
    y += ((len(entries) + 1) // 2) * (LH + 4) + 10
    return legend, y


def draw_notes(lines: list[str], wrap_chars: int, y: float) -> tuple[list[str], float]:
    """The notes from ``y`` down, each line wrapped to ``wrap_chars`` (less its indent) in one
    ``<text>`` with its ``<title>``: the elements and the ``y`` below them."""
    parts = []
    if lines:
        parts.append(svg_text(MARGIN, y, "notes (learner.report())", bold=True))
        y += LH + 4
        for line in lines:
            indent = len(line) - len(line.lstrip(" "))
            text = line.strip()
            wrapped = wrap(text, wrap_chars - indent)
            x0 = MARGIN + indent * CW
            tsp = "".join(f'<tspan x="{x0:.1f}" dy="{0 if i == 0 else LH}">{escape(t)}</tspan>'
                          for i, t in enumerate(wrapped))
            parts.append(f'<g><title>{escape(text)}</title><text x="{x0:.1f}" y="{y:.1f}">{tsp}</text></g>')
            y += len(wrapped) * LH + 3
    return parts, y


def svg_open(width: float, height: float, title: str) -> list[str]:
    """The document's first elements: the ``<svg>`` tag, its ``<title>``, the arrow markers and
    the white background."""
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
            f'font-size="{FONT}">',
            f"<title>{escape(title)}</title>",
            "<defs>" + "".join(
                f'<marker id="etp-arrow-{m}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
                for m, c in _MARK.items()) + "</defs>",
            f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>']
