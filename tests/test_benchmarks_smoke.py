"""The benchmark runner (benchmarks/run.py) runs end to end on a tiny configuration."""

import importlib.util
import json
import math
import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # benchmarks/ is not an installed package; import it from the checkout
    sys.path.insert(0, _ROOT)

from benchmarks import run as bench  # noqa: E402


def test_runner_tiny_config(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    res = bench.main(["--suite", "all", "--hidden", "8", "--T", "5", "--batch", "2", "--repeats", "1",
                      "--mem-T", "5", "10", "--mem-hidden", "8", "--out", str(out)], log=lines.append)

    expected = {bench.FORWARD, bench.BPTT, bench.DRTRL, bench.DRTRL_STEP, bench.ESDRTRL}
    if importlib.util.find_spec("braintrace") is not None:
        expected |= {bench.BT_DRTRL, bench.BT_ES}

    for suite in ("lif", "gru"):
        assert len(res[suite]) == 1, suite
        r0 = res[suite][0]
        assert r0["workload"] == suite
        assert (r0["hidden"], r0["T"], r0["batch"], r0["repeats"]) == (8, 5, 2, 1)
        assert set(r0["contenders"]) == expected
        for name, r in r0["contenders"].items():
            assert len(r["times_s"]) == 1, (suite, name)
            assert r["median_s"] > 0 and r["first_call_s"] > 0 and r["per_step_ms"] > 0, (suite, name)
            assert r["vs_forward"] > 0 and r["vs_bptt"] > 0, (suite, name)
            if name != bench.FORWARD:
                assert -1.0 - 1e-6 <= r["grad_cosine_vs_bptt"] <= 1.0 + 1e-6, (suite, name)
        c = r0["contenders"]
        assert c[bench.FORWARD]["vs_forward"] == 1.0
        assert c[bench.BPTT]["vs_bptt"] == 1.0
        assert math.isclose(c[bench.BPTT]["grad_cosine_vs_bptt"], 1.0, rel_tol=1e-9)
        # the chunked and the per-step D-RTRL compute the same gradient
        assert math.isclose(c[bench.DRTRL]["grad_cosine_vs_bptt"], c[bench.DRTRL_STEP]["grad_cosine_vs_bptt"],
                            rel_tol=1e-5)
    # D-RTRL is exact on the feed-forward LIF layer
    assert res["lif"][0]["contenders"][bench.DRTRL]["grad_rel_err_vs_bptt"] < 1e-4

    mem = res["memory"]
    assert [row["T"] for row in mem["rows"]] == [5, 10]
    row = mem["rows"][0]["contenders"]
    assert {bench.FORWARD, bench.BPTT, bench.DRTRL, bench.ESDRTRL} <= set(row)
    for name, m in row.items():
        assert m["total_bytes"] > 0, name
    assert set(mem["scaling"]["total"][bench.DRTRL]) >= {"bytes_per_step", "crossover_T_fit"}

    saved = json.loads(out.read_text())
    assert saved["lif"][0]["T"] == 5 and saved["gru"][0]["T"] == 5
    text = "\n".join(lines)
    assert "median s/seq" in text and "versions:" in text and "grad cosine vs BPTT" in text
    assert "gru: hidden=8" in text


def test_chunk_option_reaches_the_learners(monkeypatch):
    assert bench.parse_args(["--chunk", "4"]).chunk == 4
    assert bench.parse_args([]).chunk is None
    seen = {}
    orig = bench.etprop.OnlineAlgorithm.etrace_grad

    def spy(self, *a, **kw):
        seen.setdefault(type(self).__name__, []).append(kw.get("chunk_size"))
        return orig(self, *a, **kw)

    monkeypatch.setattr(bench.etprop.OnlineAlgorithm, "etrace_grad", spy)
    wl = bench.WORKLOADS["gru"]
    xs, ys = wl.data(3, 2)
    for c in bench.contenders(wl, 4, 2, xs, ys, with_braintrace=False, chunk=2):
        if c.name in (bench.DRTRL, bench.DRTRL_STEP, bench.ESDRTRL):
            c.setup()()
    assert seen == {"D_RTRL": [2, 1], "ES_D_RTRL": [2]}
