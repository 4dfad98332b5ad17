"""Soak test of true online learning: ``etprop train --update step --carry-state`` for a million steps.

One *online step* is one time step of the stream with one Adam update from that step's online
gradient; an update of ``etprop train`` (one batch) is ``T`` of them, and with ``--carry-state``
the hidden states and eligibility traces run on from one batch to the next, so the run is one
continuing stream. The run is ``etprop.experiment.runner.train`` itself -- the code path of the
command, checkpoints every ``--ckpt-every`` updates and ``metrics.csv`` included -- with an
``on_update`` callback that samples, at the end of each of ``--segments`` equal segments (and
after the first update, once compiled):

* the process's resident memory (``VmRSS`` of ``/proc/self/status``; ``ru_maxrss`` elsewhere);
* the bytes of every live JAX array (``jax.live_arrays()``);
* online steps per second over the segment, and the process CPU time per step (all threads;
  steadier than wall time on a shared machine);
* the segment's mean loss and accuracy, and how many entries of the run state are NaN/inf
  (the runner itself stops at the first NaN/inf loss).

It prints a table per segment and a summary: RSS at the start, middle and end and its largest
drift from the start, whether the live JAX bytes stay constant, throughput of the last segment
over the first, and whether anything was NaN; ``--out`` writes all of it as JSON.

    python -m benchmarks.soak [--steps-total 1000000] [--segments 20] [--task copying] [--model gru]
                              [--algo d_rtrl] [--hidden 16] [--batch 4] [--lr 1e-3] [--schedule constant]
                              [--task-arg KEY=VALUE ...] [--ckpt-every 100] [--out benchmarks/results_soak.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc

import brainstate
import jax
import numpy as np

import etprop
from etprop.experiment.metrics import FIELDS
from etprop.experiment.runner import TrainConfig, train
from etprop.tasks import get_task

MIB = 2 ** 20


def rss_bytes() -> int:
    """The process's resident set size now (``/proc/self/status``), or its peak where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def live_bytes() -> tuple[int, int]:
    """``(bytes, count)`` of every live JAX array."""
    arrays = jax.live_arrays()
    return sum(int(a.nbytes) for a in arrays), len(arrays)


def _nonfinite(state) -> int:
    """How many floating entries of ``state`` are NaN or inf."""
    bad = 0
    for leaf in jax.tree.leaves(state):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            continue
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact):
            bad += int(a.size - np.count_nonzero(np.isfinite(a)))
    return bad


def metrics_row_bytes(n: int = 2000) -> float:
    """Python heap bytes of one row of ``metrics.csv`` as the runner keeps it in memory (a dict
    per update, for the file and the figures), list slot included."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        rows = [{f: ("" if f.startswith("grad_cos") else (10 ** 6 + k if f == "step" else k * 1e-3 + 0.1))
                 for f in FIELDS} for k in range(n)]
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del rows
    return used / n


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def soak(steps_total: int = 1_000_000, segments: int = 20, *, task: str = "copying", model: str = "gru",
         algo: str = "d_rtrl", hidden: int = 16, batch: int = 4, lr: float = 1e-3, schedule: str = "constant",
         task_args: dict | None = None, ckpt_every: int = 100, seed: int = 0, run_dir: str | None = None,
         log=print) -> dict:
    """Run ``etprop train --update step --carry-state`` for ``steps_total`` online steps (rounded
    down to whole updates of ``T`` steps, at least one per segment) and sample along the way.

    Returns ``{"config", "T", "updates", "steps", "samples": [...], "summary": {...}, "train": {...}}``.
    """
    task_args = dict(task_args or {})
    T = get_task(task, **task_args).n_steps
    updates = max(steps_total // T, segments)
    seg = updates // segments
    marks = {1} | {seg * i for i in range(1, segments)} | {updates}
    cfg = TrainConfig(task=task, model=model, algo=algo, steps=updates, batch=batch, hidden=hidden, seed=seed,
                      lr=lr, schedule=schedule, eval_every=0, ckpt_every=ckpt_every, carry_state=True,
                      update="step", task_args=task_args)
    samples = []
    acc = {"loss": 0.0, "accuracy": 0.0, "n": 0, "t": None, "cpu": None, "k": 0}

    def on_update(k, state, metrics):
        acc["loss"] += metrics["loss"]
        acc["accuracy"] += metrics["accuracy"]
        acc["n"] += 1
        if k not in marks:
            return
        now, cpu = time.perf_counter(), time.process_time()
        lb, n_arrays = live_bytes()
        s = {"update": k, "step": k * T, "rss_mib": rss_bytes() / MIB, "live_bytes": lb, "live_arrays": n_arrays,
             "loss": acc["loss"] / acc["n"], "accuracy": acc["accuracy"] / acc["n"], "nonfinite": _nonfinite(state),
             "steps_per_s": (k - acc["k"]) * T / (now - acc["t"]) if acc["t"] is not None else None,
             "cpu_us_per_step": (cpu - acc["cpu"]) * 1e6 / ((k - acc["k"]) * T) if acc["t"] is not None else None,
             "elapsed_s": now - t0}
        samples.append(s)
        log(_row(s))
        acc.update(loss=0.0, accuracy=0.0, n=0, t=now, cpu=time.process_time(), k=k)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="etprop-soak-") as tmp:
        res = train(cfg, out=run_dir or tmp, plots_enabled=False, progress=False, log=log, on_update=on_update)
    wall = time.perf_counter() - t0
    summary = summarise(samples)
    summary["wall_s"] = wall
    row = metrics_row_bytes()
    grown = samples[-1]["update"] - samples[0]["update"]
    summary.update(metrics_row_bytes=row, metrics_rows_mib=grown * row / MIB,
                   rss_drift_per_update_bytes=(samples[-1]["rss_mib"] - samples[0]["rss_mib"]) * MIB / max(grown, 1))
    return {"config": dataclasses.asdict(cfg), "T": T, "updates": updates, "steps": updates * T,
            "segments": segments, "samples": samples, "summary": summary,
            "train": {"accuracy": res["accuracy"], "eval_batch": res["eval_batch"], "loss": res["loss"]}}


def summarise(samples: list[dict]) -> dict:
    """RSS start / middle / end and drift, live bytes constant, throughput ratio, NaN."""
    rss = [s["rss_mib"] for s in samples]
    live = [s["live_bytes"] for s in samples[1:]] or [samples[0]["live_bytes"]]
    rate = [s["steps_per_s"] for s in samples if s["steps_per_s"] is not None]
    cpu = [s["cpu_us_per_step"] for s in samples if s["cpu_us_per_step"] is not None]
    mid = samples[len(samples) // 2]
    return {"rss_start_mib": rss[0], "rss_mid_mib": mid["rss_mib"], "rss_end_mib": rss[-1],
            "rss_max_drift_mib": max(rss) - rss[0], "rss_drift_second_half_mib": rss[-1] - mid["rss_mib"],
            "live_bytes_first": live[0], "live_bytes_last": live[-1], "live_bytes_min": min(live),
            "live_bytes_max": max(live), "live_bytes_constant": min(live) == max(live),
            "steps_per_s_first": rate[0], "steps_per_s_last": rate[-1], "steps_per_s_min": min(rate),
            "steps_per_s_max": max(rate), "throughput_last_over_first": rate[-1] / rate[0],
            "cpu_us_per_step_first": cpu[0], "cpu_us_per_step_last": cpu[-1], "cpu_us_per_step_min": min(cpu),
            "cpu_us_per_step_max": max(cpu), "cpu_per_step_last_over_first": cpu[-1] / cpu[0],
            "loss_first": samples[0]["loss"], "loss_last": samples[-1]["loss"],
            "no_nan": all(s["nonfinite"] == 0 and math.isfinite(s["loss"]) for s in samples)}


_HEADER = ("| update | online step | RSS MiB | live JAX bytes | arrays | steps/s | CPU us/step | loss | accuracy "
           "| NaN/inf | elapsed s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _row(s: dict) -> str:
    rate = f"{s['steps_per_s']:.0f}" if s["steps_per_s"] is not None else "(compile)"
    cpu = f"{s['cpu_us_per_step']:.0f}" if s["cpu_us_per_step"] is not None else ""
    return (f"| {s['update']} | {s['step']} | {s['rss_mib']:.1f} | {s['live_bytes']} | {s['live_arrays']} | {rate} | "
            f"{cpu} | "
            f"{s['loss']:.4f} | {s['accuracy']:.3f} | {s['nonfinite']} | {s['elapsed_s']:.0f} |")


def _task_arg(text: str):
    key, value = text.split("=", 1)
    num = float(value)
    return key, int(num) if num.is_integer() and "." not in value else num


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps-total", type=int, default=1_000_000, help="online steps (time steps with an update)")
    p.add_argument("--segments", type=int, default=20)
    p.add_argument("--task", default="copying")
    p.add_argument("--model", default="gru")
    p.add_argument("--algo", default="d_rtrl")
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--task-arg", type=_task_arg, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results_soak.json")
    a = p.parse_args(argv)
    print(f"# soak: etprop train --update step --carry-state --task {a.task} --model {a.model} --algo {a.algo} "
          f"--hidden {a.hidden} --batch {a.batch} --lr {a.lr} --schedule {a.schedule}"
          f"{''.join(f' --task-arg {k}={v}' for k, v in a.task_arg)}, {a.steps_total} online steps; "
          f"{_dt.date.today()}, {machine()}, jax {jax.__version__}, brainstate {brainstate.__version__}, "
          f"etprop {etprop.__version__}\n", flush=True)
    log = lambda text: print(text, flush=True)
    header = [True]

    def table(text):  # the runner's first line, then the table
        log(text)
        if header:
            log("\n" + _HEADER)
            header.clear()

    res = soak(a.steps_total, a.segments, task=a.task, model=a.model, algo=a.algo, hidden=a.hidden, batch=a.batch,
               lr=a.lr, schedule=a.schedule, task_args=dict(a.task_arg), ckpt_every=a.ckpt_every, seed=a.seed,
               log=table)
    s = res["summary"]
    print(f"\n{res['steps']} online steps ({res['updates']} updates of T={res['T']}) in {s['wall_s']:.0f} s")
    print(f"RSS MiB: start {s['rss_start_mib']:.1f}, middle {s['rss_mid_mib']:.1f}, end {s['rss_end_mib']:.1f}; "
          f"largest drift from start {s['rss_max_drift_mib']:+.1f}, second half {s['rss_drift_second_half_mib']:+.1f}; "
          f"{s['rss_drift_per_update_bytes']:.0f} B per update, of which the runner's metrics rows (one dict per "
          f"update, {s['metrics_row_bytes']:.0f} B) {s['metrics_rows_mib']:.1f} MiB in all")
    print(f"live JAX bytes: {'constant' if s['live_bytes_constant'] else 'NOT constant'} "
          f"({s['live_bytes_min']} .. {s['live_bytes_max']})")
    print(f"throughput: first segment {s['steps_per_s_first']:.0f} steps/s, last {s['steps_per_s_last']:.0f} "
          f"(last / first {s['throughput_last_over_first']:.2f}; range {s['steps_per_s_min']:.0f} .. "
          f"{s['steps_per_s_max']:.0f}); CPU time per step first {s['cpu_us_per_step_first']:.0f} us, last "
          f"{s['cpu_us_per_step_last']:.0f} us (last / first {s['cpu_per_step_last_over_first']:.2f})")
    print(f"NaN/inf: {'none' if s['no_nan'] else 'YES'}; loss {s['loss_first']:.4f} (first update) -> "
          f"{s['loss_last']:.4f} (last segment); held-out accuracy {res['train']['accuracy']:.3f}")
    res["meta"] = {"date": str(_dt.date.today()), "machine": machine(), "jax": jax.__version__,
                   "brainstate": brainstate.__version__, "etprop": etprop.__version__, "argv": sys.argv[1:]}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"-> {a.out}")
    return 0 if s["no_nan"] else 1


if __name__ == "__main__":
    sys.exit(main())
