"""Ten thousand online steps of ``etprop train --update step --carry-state`` (the small version of
``benchmarks/soak.py``'s million): an optimiser update at every step of one continuing stream,
through the command's own training loop, with checkpoints every 100 updates."""

import math
import pathlib
import sys

_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # benchmarks/ is not an installed package; import it from the checkout
    sys.path.insert(0, _ROOT)

from benchmarks import soak  # noqa: E402


def test_ten_thousand_online_steps_stay_finite_and_flat():
    lines = []
    res = soak.soak(10_000, segments=5, hidden=16, batch=4, log=lines.append)
    s, samples = res["summary"], res["samples"]
    assert res["steps"] == 10_000 and res["updates"] == 500 and res["config"]["carry_state"]
    assert [x["update"] for x in samples] == [1, 100, 200, 300, 400, 500]
    assert s["no_nan"] and all(x["nonfinite"] == 0 and math.isfinite(x["loss"]) for x in samples)
    assert math.isfinite(res["train"]["loss"]) and 0.0 <= res["train"]["accuracy"] <= 1.0
    # the live JAX arrays after the first segment (compiled, state and optimiser state in place) do not grow
    first, last = samples[1]["live_bytes"], samples[-1]["live_bytes"]
    assert last <= first * 1.01 + 4096, (first, last)
    assert samples[-1]["live_arrays"] <= samples[1]["live_arrays"] + 2
    assert s["rss_end_mib"] - s["rss_start_mib"] < 50, s
    assert all(x["steps_per_s"] > 0 for x in samples[1:])
