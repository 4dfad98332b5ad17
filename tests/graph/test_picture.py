"""`etprop.graph.picture`: the compiled graph as an SVG image that holds everything the report says."""

import xml.etree.ElementTree as ET

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import pytest

import etprop
from etprop import cli
from etprop.experiment import build_model
from etprop.graph.picture import graph_svg, learner_svg, relation_rule, report_notes

SVG = "{http://www.w3.org/2000/svg}"
MODELS = ["gru", "lif", "alif", "lru"]
SKIP = ("hidden groups:", "parameters:")  # section heads the picture draws as columns, not as text


def _compile(model_name, algo, **options):
    with brainstate.environ.context(dt=1.0 * u.ms):  # as `etprop train` does
        net = build_model(model_name, 3, 4, 2)
        brainstate.nn.init_all_states(net, batch_size=2)
        return etprop.compile(net, algo, jnp.zeros((2, 3)), batch_size=2, **options)


@pytest.fixture(scope="module")
def d_rtrl():
    return {m: _compile(m, etprop.D_RTRL) for m in MODELS}


def _strings(svg: str) -> set:
    """Every text of the picture: each element's own text (a ``<title>`` holds its lines in
    full, one per line) and each ``<text>`` with its wrapped ``<tspan>`` lines joined."""
    root = ET.fromstring(svg)  # parses as XML
    assert root.tag == SVG + "svg" and float(root.get("width")) > 0 and float(root.get("height")) > 0
    out = set()
    for el in root.iter():
        if el.text and el.text.strip():
            out.add(el.text.strip())
            out.update(ln.strip() for ln in el.text.splitlines())
        if el.tag == SVG + "text":
            out.add(" ".join(t.strip() for t in el.itertext()))
    return out


def _boxes(svg: str) -> list:
    root = ET.fromstring(svg)
    nodes = next(g for g in root.iter(SVG + "g") if g.get("id") == "nodes")
    return [tuple(float(r.get(k)) for k in ("x", "y", "width", "height")) for r in nodes.iter(SVG + "rect")]


def _assert_report_in(svg: str, learner):
    strings = _strings(svg)
    text = "\n".join(strings)
    for line in learner.report().splitlines():
        if line.strip() and line.strip() not in SKIP:
            assert line.strip() in strings, f"report line missing from the picture: {line.strip()!r}"
    return strings, text


@pytest.mark.parametrize("model", MODELS)
def test_picture_holds_groups_weights_reasons_and_notes(d_rtrl, model):
    learner = d_rtrl[model]
    svg = learner_svg(learner)
    strings, text = _assert_report_in(svg, learner)  # every line verbatim (in a <title> or a <text>)
    g = learner.graph
    for grp in g.groups:
        for name in grp.names:
            assert name in text
        assert f"group [{grp.index}]" in strings and f"shape {grp.shape}  S={grp.num_states}" in strings
    for name in g.param_leaf_names:
        assert name in strings  # the box's first line
    for name, why in g.untraced.items():
        assert why in text, name
    for note in g.notes:
        assert f"note: {note}" in strings
    for note in report_notes(learner):
        assert note.strip() in strings
    for r in g.relations:  # each traced weight: its rule and its trace memory, along its relation
        assert f"{r.leaf_name}: {relation_rule(learner, r)}, {learner.trace_bytes(r)} bytes/sample" in text
    boxes = _boxes(svg)
    assert len(boxes) == len(g.groups) + len(g.param_leaf_names) + len(g.etp_eqns) + g.n_out + 1
    for i, (x, y, w, h) in enumerate(boxes):  # the layout never stacks one box on another
        for (x2, y2, w2, h2) in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y


def test_rule_text_is_the_reports(d_rtrl):
    learner = d_rtrl["lif"]
    for r in learner.graph.relations:
        assert relation_rule(learner, r) in learner.report()
    assert "[D_RTRL: per-parameter trace (D-RTRL)]" in learner_svg(learner)


@pytest.mark.parametrize("algo", [etprop.RTRL, etprop.UORO])
def test_influence_learners(algo):
    options = {"key": jax.random.key(0)} if algo is etprop.UORO else {}
    learner = _compile("alif", algo, **options)
    svg = learner_svg(learner)
    strings, text = _assert_report_in(svg, learner)  # their report: N, each weight's share, memory
    g = learner.graph
    for leaf in learner.layout.theta_leaves:  # each weight's share of the influence, in its box
        shape = tuple(g.param_leaf_avals[leaf].shape)
        assert f"{g.param_leaf_names[leaf]} {shape}: {learner.describe_leaf(leaf)}" in strings
    assert any(s.startswith("influence memory:") for s in strings)
    assert "bytes/sample" not in text  # no per-relation traces: the influence is one matrix


def test_bptt_draws_its_graph():
    learner = _compile("gru", etprop.BPTT)
    strings = _strings(learner_svg(learner))
    text = "\n".join(strings)
    for name in learner.graph.param_leaf_names:
        assert name in strings
    assert "[BPTT: exact (BPTT over the window)]" in text
    assert learner.report().splitlines()[0] in strings


class LeakyWithExtras(brainstate.nn.Module):
    """A traced weight, one carried into the state by a plain op (truncated), a plain readout
    and a leaky readout of another shape (a note), a step counter (carried, not float)."""

    def __init__(self):
        super().__init__()
        k = jax.random.split(jax.random.key(0), 3)
        self.w = brainstate.ParamState(jax.random.normal(k[0], (3, 4)) * 0.5)
        self.w_plain = brainstate.ParamState(jax.random.normal(k[1], (3, 4)) * 0.5)
        self.w_out = brainstate.ParamState(jax.random.normal(k[2], (4, 2)) * 0.5)
        self.h = brainstate.HiddenState(jnp.zeros((2, 4)))
        self.r = brainstate.HiddenState(jnp.zeros((2, 2)))
        self.count = brainstate.ShortTermState(jnp.zeros((2,), jnp.int32))

    def update(self, x):
        self.h.value = 0.9 * self.h.value + jnp.tanh(etprop.matmul(x, self.w.value) + x @ self.w_plain.value)
        self.r.value = 0.8 * self.r.value + self.h.value @ self.w_out.value
        self.count.value = self.count.value + 1
        return self.r.value


def test_truncated_weights_notes_and_graph_alone():
    learner = etprop.compile(LeakyWithExtras(), etprop.D_RTRL, jnp.zeros((2, 3)), batch_size=2)
    g = learner.graph
    assert "w_plain" in g.truncated and g.notes and g.carried
    svg = learner_svg(learner)
    strings, text = _assert_report_in(svg, learner)
    for name, why in g.untraced.items():
        assert why in text, name
    assert 'fill="#fff1dc"' in svg  # the truncated weight's colour
    # the graph alone, as ETraceGraph.report: the same lines without the learner's rules
    alone = _strings(graph_svg(g))
    for line in g.report().splitlines():
        if line.strip() not in SKIP:
            assert line.strip() in alone


def test_cli_graph_writes_an_svg(tmp_path, capsys):
    out = tmp_path / "alif.svg"
    assert cli.main(["graph", "--model", "alif", "--hidden", "4", "--out", str(out)]) == 0
    strings = _strings(out.read_text(encoding="utf-8"))
    assert "rec.w_in" in strings and any(s.startswith("D_RTRL on SpikingNet") for s in strings)
    assert str(out) in capsys.readouterr().out
    assert cli.main(["graph", "--model", "gru", "--algo", "rtrl", "--hidden", "4", "--out", "-"]) == 0
    assert any(s.startswith("RTRL on GRUNet") for s in _strings(capsys.readouterr().out))


def test_docs_show_the_current_picture_of_every_built_in_model(tmp_path):
    """docs/concepts.md shows ``docs/img/graph-NAME.svg`` for every model of `etprop train`, and each
    file is what ``etprop graph --model NAME`` draws today (regenerate them with that command)."""
    import pathlib

    from etprop.experiment.models import MODELS as BUILT_IN

    docs = pathlib.Path(__file__).resolve().parents[2] / "docs"
    page = (docs / "concepts.md").read_text(encoding="utf-8")
    for name in sorted(BUILT_IN):
        assert f"](img/graph-{name}.svg)" in page, name
        out = tmp_path / f"{name}.svg"
        assert cli.main(["graph", "--model", name, "--out", str(out)]) == 0
        assert out.read_text(encoding="utf-8") == (docs / "img" / f"graph-{name}.svg").read_text(encoding="utf-8"), (
            f"docs/img/graph-{name}.svg is out of date: etprop graph --model {name} --out docs/img/graph-{name}.svg")
