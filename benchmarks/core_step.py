"""What one step of the online learners costs, on the GRU workload: the rows the core rebuild's
side-by-side run needed explained (issue 13).

* ``--what rules``: BPTT, D-RTRL (16-step closed-form chunks), ES-D-RTRL per step and in chunks,
  on ``gru`` hidden 256, batch 16, T 100 (the step_fn workload); run it from another tree's
  root with ``--tree PATH`` to time that tree's etprop (it is put first on ``sys.path``);
* ``--what finite``: D-RTRL with ``check_finite`` on and off, per step (``closed_form_chunk=1``)
  and in 16-step chunks, on ``benchmarks.run``'s gru workload (hidden 256, batch 32, T 100).

Interleaved rounds of medians (`benchmarks.step_fn.median_time`), ms per sequence.

    python -m benchmarks.core_step --what rules [--tree /tmp/wt_head] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys


def _rules(rounds: int) -> dict:
    import etprop
    from benchmarks.models import make_model, mse
    from benchmarks.step_fn import median_time, sequences

    H, B, T = 256, 16, 100
    xs, ys = sequences(T, B, 16, 4)
    mk = lambda algo: etprop.compile(make_model("gru", 16, H, 4, batch_size=B), algo, xs[0], batch_size=B)
    bptt, es, d = mk(etprop.BPTT), mk(etprop.ES_D_RTRL), mk(etprop.D_RTRL)
    calls = {"BPTT": (lambda: bptt.etrace_grad(xs, ys, mse)[1], 7),
             "D-RTRL (16-step chunks)": (lambda: d.etrace_grad(xs, ys, mse)[1], 5),
             "ES-D-RTRL per-step": (lambda: es.etrace_grad(xs, ys, mse, closed_form_chunk=1)[1], 3),
             "ES-D-RTRL (16-step chunks)": (lambda: es.etrace_grad(xs, ys, mse)[1], 7)}
    rows = {}
    for _ in range(rounds):
        for name, (call, reps) in calls.items():
            rows.setdefault(name, []).append(median_time(call, reps))
    return rows


def _finite(rounds: int) -> dict:
    import etprop
    from benchmarks import run as bench
    from benchmarks.step_fn import median_time

    wl, H, B, T = bench.WORKLOADS["gru"], 256, 32, 100
    xs, ys = wl.data(T, B)
    learners = {cf: bench._etprop_learner(wl, etprop.D_RTRL, H, B, xs, check_finite=cf) for cf in (True, False)}
    rows = {}
    for _ in range(rounds):
        for cf, lr in learners.items():
            for K in (1, None):
                rows.setdefault(f"D-RTRL check_finite={cf} closed_form_chunk={K}", []).append(
                    median_time(lambda: lr.etrace_grad(xs, ys, wl.step_loss, closed_form_chunk=K)[1], 5))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", choices=("rules", "finite"), default="rules")
    p.add_argument("--tree", default=None, help="import etprop (and benchmarks) from this tree's root")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if a.tree:
        sys.path.insert(0, a.tree)
        for mod in [m for m in sys.modules if m == "etprop" or m.startswith(("etprop.", "benchmarks"))]:
            del sys.modules[mod]
    import etprop
    rows = (_rules if a.what == "rules" else _finite)(a.rounds)
    print(f"# core step ({a.what}); etprop from {etprop.__file__}")
    print("| contender | ms / sequence | rounds |")
    print("|---|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {statistics.median(v) * 1e3:.1f} | {', '.join(f'{x * 1e3:.1f}' for x in v)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
