"""The benchmark runner (benchmarks/run.py) runs end to end at tiny sizes (``--quick``).

braintrace is optional (CI installs only the ``test`` extra): its rows and the equality check
are expected only where it imports.
"""

import importlib.util
import json
import math
import pathlib
import sys

import jax
import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # benchmarks/ is not an installed package; import it from the checkout
    sys.path.insert(0, _ROOT)

from benchmarks import run as bench  # noqa: E402

HAS_BT = importlib.util.find_spec("braintrace") is not None
ON_CPU = jax.default_backend() == "cpu"


def _check_timing(res, names):
    c = res["contenders"]
    assert set(c) == set(names), (res["workload"], sorted(c))
    fwd, bptt = c[bench.FORWARD]["median_s"], c[bench.BPTT]["median_s"]
    for name, r in c.items():
        assert r["times_s"] and all(t > 0 for t in r["times_s"]), name
        assert r["first_call_s"] > 0 and r["median_s"] > 0, name
        assert len(r["times_s"]) == r["repeats"] <= res["repeats"], name
        # the ratios are the measured medians' ratios
        assert math.isclose(r["vs_forward"], r["median_s"] / fwd), name
        assert math.isclose(r["vs_bptt"], r["median_s"] / bptt), name
        bt = bench.BT_OF.get(name)
        if bt in c:
            assert math.isclose(r["vs_braintrace"], r["median_s"] / c[bt]["median_s"]), name
        if r["lib"] != "-":  # learners return gradients, compared with BPTT's
            assert -1 - 1e-6 <= r["grad_cosine_vs_bptt"] <= 1 + 1e-6, name
    assert c[bench.FORWARD]["vs_forward"] == 1.0 and c[bench.BPTT]["vs_bptt"] == 1.0


def test_lif_quick(tmp_path):
    """All contenders, the equality check, goals, JSON (compile times and memory analysis: the
    memory test)."""
    out = tmp_path / "bench.json"
    lines = []
    res = bench.main(["--suite", "lif", "--quick", "--device", "cpu", "--no-mem", "--out", str(out)],
                     log=lines.append)
    (r,) = res["lif"]
    assert (r["hidden"], r["T"], r["batch"]) == (16, 16, 2)
    names = {bench.FORWARD, bench.FLOOR, bench.ES_FLOOR, bench.BPTT, bench.DRTRL, bench.DRTRL_STEP, bench.ESDRTRL,
             bench.DRTRL_POST, bench.ESDRTRL_POST}
    if HAS_BT:
        names |= {bench.BT_DRTRL, bench.BT_ES}
    _check_timing(r, names)
    c = r["contenders"]
    assert math.isclose(c[bench.DRTRL_STEP]["vs_floor"], c[bench.DRTRL_STEP]["median_s"] / c[bench.FLOOR]["median_s"])
    for es in (bench.ESDRTRL, bench.ESDRTRL_POST):  # ES-D-RTRL against its hand-written floor
        assert math.isclose(c[es]["vs_floor"], c[es]["median_s"] / c[bench.ES_FLOOR]["median_s"])
    # the post-step signal equals the default on this feed-forward layer
    assert c[bench.DRTRL_POST]["grad_rel_err_vs_bptt"] < 1e-4
    # D-RTRL is exact on the feed-forward LIF layer (float32, this size)
    assert c[bench.DRTRL]["grad_rel_err_vs_bptt"] < 1e-4 and c[bench.DRTRL_STEP]["grad_rel_err_vs_bptt"] < 1e-4
    eq = res["equality"]["lif"]
    if HAS_BT:
        d = eq["rules"][bench.DRTRL]
        assert d["same_shapes"] and d["names"] == ["layers.0.bias", "layers.0.weight", "w_out"]
        assert d["required"] and d["ok"]  # equal values (float64) on every leaf braintrace computes
        assert d["etprop_vs_bptt"]["max_rel_diff"] < 1e-10
        assert eq["rules"][bench.ESDRTRL]["same_shapes"]
    else:
        assert eq["skipped"]
    verdicts = {g["goal"]: g["verdict"] for g in res["goals"]}
    assert verdicts["ES-D-RTRL <= 1x BPTT"] in ("PASS", "MISS")
    assert verdicts["D-RTRL per-step <= 1.5x trace-update floor"] in ("PASS", "MISS")
    assert verdicts["ES-D-RTRL <= 1.3x ES-D-RTRL floor"] in ("PASS", "MISS")
    text = "\n".join(lines)
    assert "| contender" in text and "median s/seq" in text and "| goal" in text
    assert f"jax {jax.__version__}" in text and ("PASS" in text or "MISS" in text)
    saved = json.loads(out.read_text())
    assert saved["lif"][0]["T"] == 16 and saved["machine"]["versions"]["jax"] == jax.__version__


def test_gru_and_deep_quick():
    """The GRU and the multi-layer network (deep), fewer contenders, no equality check (the
    lif test runs it): gradient names and shapes still match braintrace's."""
    lines = []
    keep = [bench.DRTRL, bench.BT_DRTRL]
    res = bench.main(["--suite", "gru", "--quick", "--no-mem", "--no-equality", "--contenders", *keep],
                     log=lines.append)
    (r,) = res["gru"]
    assert (r["hidden"], r["T"], r["batch"]) == (8, 8, 2)
    _check_timing(r, {bench.FORWARD, bench.BPTT, bench.DRTRL} | ({bench.BT_DRTRL} if HAS_BT else set()))
    if HAS_BT:
        assert r["contenders"][bench.DRTRL]["vs_braintrace_grad"]["same_shapes"]
    res = bench.main(["--suite", "deep", "--quick", "--no-mem", "--no-equality", "--contenders", bench.ESDRTRL],
                     log=lines.append)
    (r,) = res["deep"]
    assert r["n_layers"] == 3
    _check_timing(r, {bench.FORWARD, bench.BPTT, bench.ESDRTRL})
    assert "**deep**: hidden=8 x 3 layers" in "\n".join(lines)


def test_memory_quick():
    """Online memory is flat in T at the quick sizes, BPTT's grows; crossover reported."""
    res = bench.main(["--suite", "memory", "--quick", "--T", "32", "128",
                      "--contenders", bench.DRTRL, bench.ESDRTRL, bench.BT_ES], log=lambda *a: None)
    mem = res["memory"]
    assert [e["T"] for e in mem["rows"]] == [32, 128]
    for e in mem["rows"]:
        for name, m in e["contenders"].items():
            assert m["total_bytes"] > 0 and m["compile_s"] > 0, name
    sc = mem["scaling"]["contenders"]
    for name in (bench.DRTRL, bench.ESDRTRL) + ((bench.BT_ES,) if HAS_BT else ()):
        v = sc[name]["bytes_beyond_inputs"]
        assert max(v) <= 1.05 * min(v) and sc[name]["flat"], (name, v)
        assert "first_measured_T" in sc[name] and "crossover_T_fit" in sc[name]
    v = sc[bench.BPTT]["bytes_beyond_inputs"]
    assert v[1] > 1.25 * v[0] and sc[bench.BPTT]["linear"], v
    goals = [g for g in res["goals"] if g["goal"].startswith(("BPTT memory", "D-RTRL memory", "crossover"))]
    assert len(goals) >= 3 and goals[0]["verdict"] == "PASS"


@pytest.mark.skipif(not ON_CPU, reason="checks the CPU refusals")
def test_cpu_refusals():
    with pytest.raises(SystemExit, match="GPU suite"):
        bench.main(["--suite", "deep"], log=lambda *a: None)
    with pytest.raises(SystemExit, match="no GPU backend"):
        bench.main(["--suite", "lif", "--quick", "--device", "gpu"], log=lambda *a: None)


def test_peak_probe_in_process():
    """The device-peak probe (run in a fresh process per contender on GPU) works; CPU has no
    allocator stats, so its peak is None there."""
    p = bench.probe_peak({"workload": "lif", "name": bench.ESDRTRL, "hidden": 4, "T": 4, "batch": 2})
    assert set(p) >= {"peak_bytes", "device"}
    if ON_CPU:
        assert p["peak_bytes"] is None


def test_chunk_option_reaches_the_learners(monkeypatch):
    assert bench.parse_args(["--chunk", "4"]).chunk == 4
    assert bench.parse_args([]).chunk is None
    seen = {}
    orig = bench.etprop.OnlineAlgorithm.etrace_grad

    def spy(self, *a, **kw):
        seen.setdefault(type(self).__name__, []).append(kw.get("closed_form_chunk"))
        return orig(self, *a, **kw)

    monkeypatch.setattr(bench.etprop.OnlineAlgorithm, "etrace_grad", spy)
    wl = bench.WORKLOADS["lif"]
    xs, ys = wl.data(3, 2)
    for c in bench.contenders(wl, 4, 2, xs, ys, with_braintrace=False, chunk=2):
        if c.name in (bench.DRTRL, bench.DRTRL_STEP, bench.ESDRTRL):
            f, args = c.build()
            f(*args)
    assert seen == {"D_RTRL": [2, 1], "ES_D_RTRL": [2]}


def test_ecosystem_comparison_runs(capsys, tmp_path):
    """benchmarks/ecosystem.py: one network of the matrix, etprop's error against BPTT printed."""
    from benchmarks import ecosystem
    prev = jax.config.jax_enable_x64
    try:
        assert ecosystem.main(["--only", "DeltaProj", "--out", str(tmp_path / "eco.json")]) == 0
    finally:
        import brainstate
        brainstate.environ.set(precision=32)
        jax.config.update("jax_enable_x64", prev)
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| DeltaProj |")]
    assert len(row) == 1
    rows = json.loads((tmp_path / "eco.json").read_text())
    assert rows[0]["model"] == "DeltaProj" and rows[0]["etprop_all"] <= 1e-6
    assert rows[0]["traced"] == ["proj.comm.weight"]


def test_scale_quick():
    """The scale suite (benchmarks/scale.py: sparse recurrent LIF, fan-in 76) at 128 neurons,
    one configuration; braintrace left out (its sparse kernel compiles slowly): its row is
    reported as skipped, not failed."""
    lines = []
    res = bench.main(["--suite", "scale", "--quick", "--device", "cpu", "--no-mem", "--no-braintrace",
                      "--batch", "2", "--contenders", bench.ESDRTRL, bench.BT_ES], log=lines.append)
    sc = res["scale"]
    (r,) = sc["rows"]
    assert (r["hidden"], r["T"], r["batch"], r["synapses"]) == (128, 8, 2, 128 * 76)
    _check_timing(r, {bench.FORWARD, bench.BPTT, bench.ESDRTRL})
    assert "--no-braintrace" in r["skipped"][bench.BT_ES]
    assert r["contenders"][bench.ESDRTRL]["grad_cosine_vs_bptt"] > 0.9
    assert [g["goal"] for g in sc["goals"]] == ["ES-D-RTRL <= 3x forward-only", "D-RTRL <= 4x forward-only"]
    text = "\n".join(lines)
    assert "**scale**" in text and "| neurons" in text


@pytest.mark.slow  # ~20 s; what it checks the quick suite checks in tests/algorithms
def test_gpu_smoke_runs_on_cpu(capsys):
    """benchmarks/gpu.sh's first step (import, compile, gradient checks) passes here on the CPU."""
    from benchmarks import gpu_smoke
    assert gpu_smoke.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("smoke: ok") == 4 and "FAIL" not in out and "smoke: passed" in out


def test_side_by_side_compares_the_rows_both_trees_measured():
    from benchmarks import side_by_side as sbs
    res = {"machine": {}, "lif": [{"hidden": 8, "T": 4, "batch": 2, "contenders": {
        "BPTT": {"median_s": 0.02}, "ES-D-RTRL": {"median_s": 0.01}, "ES-D-RTRL (braintrace)": {"median_s": 0.5},
        "D-RTRL": {"median_s": None}}}], "memory": None}
    assert sbs.medians(res) == {("lif", 8, 4, 2, "BPTT"): 0.02, ("lif", 8, 4, 2, "ES-D-RTRL"): 0.01}
    with pytest.raises(SystemExit):
        sbs.parse_args(["--rev", "HEAD", "--rounds", "0"])
