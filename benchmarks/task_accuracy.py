"""Accuracy reached on each built-in task by BPTT, D-RTRL and ES-D-RTRL at equal updates.

    python -m benchmarks.task_accuracy [--seeds 0 1] [--scale 1.0] [--out FILE.json]

Each row trains the same network from the same initial weights on the same batches (same
seed) with each algorithm through `etprop.experiment.train` (what ``etprop train`` runs),
then reports the accuracy on a held-out batch (classification: fraction correct; regression:
1 - NMSE), the mean cosine of the online gradient to BPTT's over training, and the wall time.
``--scale`` multiplies every update budget (0.02 for a smoke run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

import etprop
from etprop.experiment import TrainConfig, train

# task, model, updates, extra settings: budgets a 2-core CPU runs in about a minute each
WORKLOADS = [
    ("copying", "gru", 1500, {}),
    ("adding", "lru", 1000, {}),
    ("evidence", "alif", 300, {}),
    ("dms", "alif", 300, {}),
    ("pattern", "lif", 300, {}),
]
ALGOS = ("bptt", "d_rtrl", "es_d_rtrl")


def _mean_cosines(run_dir: str) -> tuple[float, float]:
    """Mean over training of the cosine to BPTT (all parameters) and of the worst parameter's."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["grad_cos_bptt"]]
    if not rows:
        return float("nan"), float("nan")
    return (float(np.mean([float(r["grad_cos_bptt"]) for r in rows])),
            float(np.mean([float(r["grad_cos_bptt_min"]) for r in rows])))


def run(seeds=(0,), scale: float = 1.0, hidden: int = 64, batch: int = 32, log=print) -> list[dict]:
    rows = []
    for task, model, steps, extra in WORKLOADS:
        n = max(2, int(round(steps * scale)))
        for seed in seeds:
            for algo in ALGOS:
                cfg = TrainConfig(task=task, model=model, algo=algo, steps=n, hidden=hidden, batch=batch, seed=seed,
                                  eval_every=0 if algo == "bptt" else max(1, n // 10), ckpt_every=0, **extra)
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    res = train(cfg, out=d, plots_enabled=False, progress=False, log=lambda *_: None)
                    wall = time.perf_counter() - t0
                    cos, cos_min = _mean_cosines(d) if algo != "bptt" else (1.0, 1.0)
                row = {"task": task, "model": model, "algo": algo, "seed": seed, "updates": n,
                       "accuracy": res["accuracy"], "chance": res["chance"], "grad_cos_bptt": cos,
                       "grad_cos_bptt_min": cos_min, "wall_s": wall}
                rows.append(row)
                log(f"{task:9s} {model:5s} {algo:10s} seed {seed}: accuracy {res['accuracy']:.3f} "
                    f"(chance {res['chance']:.2f}) cos {cos:.3f} worst {cos_min:.3f} {wall:.0f} s")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| task | model | updates | chance | BPTT | D-RTRL | ES-D-RTRL | cos D-RTRL (worst param) | "
             "cos ES-D-RTRL (worst param) |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["task"], r["model"], r["updates"]) for r in rows}, key=lambda k: [w[0] for w in WORKLOADS].index(k[0]))
    for task, model, n in keys:
        sel = {a: [r for r in rows if r["task"] == task and r["algo"] == a] for a in ALGOS}
        acc = {a: " / ".join(f"{r['accuracy']:.3f}" for r in sel[a]) for a in ALGOS}
        cos = {a: " / ".join(f"{r['grad_cos_bptt']:.2f} ({r['grad_cos_bptt_min']:.2f})" for r in sel[a])
               for a in ALGOS}
        chance = sel["bptt"][0]["chance"]
        lines.append(f"| {task} | {model} | {n} | {chance:.2f} | {acc['bptt']} | {acc['d_rtrl']} | "
                     f"{acc['es_d_rtrl']} | {cos['d_rtrl']} | {cos['es_d_rtrl']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = run(tuple(a.seeds), a.scale)
    print(f"\nmeasured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}, etprop {etprop.__version__}, {time.perf_counter() - t0:.0f} s in all\n")
    print(markdown(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
