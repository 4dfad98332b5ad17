"""The benchmark runner (benchmarks/run.py) runs end to end on a tiny configuration."""

import importlib.util
import json
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
                      "--mem-T", "5", "--mem-hidden", "8", "--out", str(out)], log=lines.append)

    expected = {bench.FORWARD, bench.BPTT, bench.DRTRL, bench.ESDRTRL}
    if importlib.util.find_spec("braintrace") is not None:
        expected |= {bench.BT_DRTRL, bench.BT_ES}

    assert len(res["lif"]) == 1
    lif = res["lif"][0]
    assert (lif["hidden"], lif["T"], lif["batch"], lif["repeats"]) == (8, 5, 2, 1)
    assert set(lif["contenders"]) == expected
    for name, r in lif["contenders"].items():
        assert len(r["times_s"]) == 1, name
        assert r["median_s"] > 0 and r["first_call_s"] > 0 and r["per_step_ms"] > 0, name
        assert r["vs_forward"] > 0 and r["vs_bptt"] > 0, name
    assert lif["contenders"][bench.FORWARD]["vs_forward"] == 1.0
    assert lif["contenders"][bench.BPTT]["vs_bptt"] == 1.0

    mem = res["memory"]
    assert [row["T"] for row in mem["rows"]] == [5]
    row = mem["rows"][0]["contenders"]
    assert {bench.FORWARD, bench.BPTT, bench.DRTRL, bench.ESDRTRL} <= set(row)
    for name, m in row.items():
        assert m["total_bytes"] > 0, name

    assert json.loads(out.read_text())["lif"][0]["T"] == 5
    text = "\n".join(lines)
    assert "median s/seq" in text and "versions:" in text
