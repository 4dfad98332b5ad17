"""Accuracy reached on each built-in task by BPTT and the online rules at equal updates.

    python -m benchmarks.task_accuracy [--seeds 0 1 2] [--tasks evidence dms] [--algos bptt d_rtrl]
                                       [--scale 1.0] [--out FILE.json]

Each row trains the same network from the same initial weights on the same batches (same
seed) with each algorithm through `etprop.experiment.train` (what ``etprop train`` runs),
then reports the accuracy on held-out sequences (classification: fraction correct; regression:
1 - NMSE), the mean cosine of the online gradient to BPTT's over training, the firing rate of
the spiking networks after training (Hz, mean over neurons, steps and a batch) and the wall
time. The spiking tasks (evidence, dms, pattern) run with their own `etprop train` settings
(``Task.train_defaults``: the literature's network and budget, what ``etprop train --task T``
runs); ``--scale`` multiplies every update budget (0.02 for a smoke run). With several seeds
the table gives the accuracy's mean and, in brackets, its spread (min-max) over seeds, and the
means of the cosines, rates and seconds. ``--out`` is
rewritten after every run, so an interrupted benchmark keeps what it measured.
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
from etprop.experiment.config import task_train_defaults
from etprop.tasks import get_task

# task, model, updates (None: the task's train_defaults), extra settings
WORKLOADS = [
    ("copying", "gru", 1500, {}),
    ("adding", "lru", 1000, {}),
    ("evidence", "alif", None, {}),
    ("dms", "alif", None, {}),
    ("pattern", "lif", 300, {}),
]
ALGOS = ("bptt", "d_rtrl", "es_d_rtrl", "eprop")
NAMES = {"bptt": "BPTT", "d_rtrl": "D-RTRL", "es_d_rtrl": "ES-D-RTRL", "eprop": "e-prop"}


def _mean_cosines(run_dir: str) -> tuple[float, float]:
    """Mean over training of the cosine to BPTT (all parameters) and of the worst parameter's."""
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = [r for r in csv.DictReader(f) if r["grad_cos_bptt"]]
    if not rows:
        return float("nan"), float("nan")
    return (float(np.mean([float(r["grad_cos_bptt"]) for r in rows])),
            float(np.mean([float(r["grad_cos_bptt_min"]) for r in rows])))


def firing_rate(cfg: TrainConfig, run_dir: str) -> float:
    """Mean firing rate (Hz) of the trained spiking network of ``run_dir`` on one batch (NaN for
    a non-spiking model): the final checkpoint's parameters run forward, `observe()`'s spikes."""
    from etprop.experiment.checkpoint import load_checkpoint
    from etprop.experiment.models import SPIKING
    from etprop.experiment.runner import Run

    if cfg.model not in SPIKING:
        return float("nan")
    run = Run(TrainConfig(**{**cfg.__dict__, "eval_every": 0}))
    state, _ = load_checkpoint(run_dir, run.initial_state())
    batch = run.task.batch(jax.random.key(123), cfg.batch)
    obs, _ = run.record(state["params"], batch.inputs)
    return float(np.mean(obs["spikes"])) / (float(getattr(run.task, "dt", 1.0)) * 1e-3)


def run(seeds=(0,), scale: float = 1.0, tasks=None, algos=ALGOS, log=print, out=None) -> list[dict]:
    rows = []
    for task, model, steps, extra in WORKLOADS:
        if tasks and task not in tasks:
            continue
        own = task_train_defaults(task)
        steps = own["steps"] if steps is None else steps
        n = max(2, int(round(steps * scale)))
        for seed in seeds:
            for algo in algos:
                cfg = TrainConfig(task=task, model=model, algo=algo, steps=n, schedule_steps=n, seed=seed,
                                  eval_every=0 if algo == "bptt" else max(1, n // 10), ckpt_every=0, **extra)
                with tempfile.TemporaryDirectory() as d:
                    t0 = time.perf_counter()
                    res = train(cfg, out=d, plots_enabled=False, progress=False, log=lambda *_: None)
                    wall = time.perf_counter() - t0
                    cos, cos_min = _mean_cosines(d) if algo != "bptt" else (1.0, 1.0)
                    rate = firing_rate(cfg, d)
                row = {"task": task, "model": model, "algo": algo, "seed": seed, "updates": n, "hidden": cfg.hidden,
                       "batch": cfg.batch, "lr": cfg.lr, "T": get_task(task, **cfg.task_args).n_steps,
                       "accuracy": res["accuracy"], "chance": res["chance"],
                       "grad_cos_bptt": cos, "grad_cos_bptt_min": cos_min, "rate_hz": rate, "wall_s": wall}
                rows.append(row)
                log(f"{task:9s} {model:5s} {algo:10s} seed {seed}: accuracy {res['accuracy']:.3f} "
                    f"(chance {res['chance']:.2f}) cos {cos:.3f} worst {cos_min:.3f} rate {rate:.1f} Hz "
                    f"{wall:.0f} s", flush=True)
                if out:
                    with open(out, "w") as f:
                        json.dump(rows, f, indent=1)
    return rows


def _stat(values: list[float], fmt: str = "{:.3f}") -> str:
    """``mean`` for one value, ``mean (min-max)`` for several."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def markdown(rows: list[dict]) -> str:
    algos = [a for a in ALGOS if any(r["algo"] == a for r in rows)]
    head = " | ".join(NAMES[a] for a in algos)
    cos_head = " | ".join(f"cos {NAMES[a]} (worst param)" for a in algos if a != "bptt")
    header = (f"| task | model | hidden x batch | updates | seeds | chance | {head} | {cos_head} | "
              f"rate Hz ({', '.join(NAMES[a] for a in algos)}) | s / run ({', '.join(NAMES[a] for a in algos)}) |")
    lines = [header.replace("|  |", "|"), "|" + "---|" * (header.replace("|  |", "|").count("|") - 1)]
    order = [w[0] for w in WORKLOADS]
    keys = sorted({(r["task"], r["model"], r["updates"]) for r in rows}, key=lambda k: order.index(k[0]))
    for task, model, n in keys:
        sel = {a: [r for r in rows if (r["task"], r["model"], r["updates"], r["algo"]) == (task, model, n, a)]
               for a in algos}
        first = next(r for a in algos for r in sel[a])
        seeds = sorted({r["seed"] for a in algos for r in sel[a]})
        acc = " | ".join(_stat([r["accuracy"] for r in sel[a]]) for a in algos)
        mean = lambda a, key, fmt: fmt.format(np.mean([r.get(key, float("nan")) for r in sel[a]])) if sel[a] else "-"
        cos = " | ".join(f"{mean(a, 'grad_cos_bptt', '{:.2f}')} ({mean(a, 'grad_cos_bptt_min', '{:.2f}')})"
                         for a in algos if a != "bptt")
        rate = " / ".join(mean(a, "rate_hz", "{:.1f}") for a in algos)
        wall = " / ".join(mean(a, "wall_s", "{:.0f}") for a in algos)
        lines.append(f"| {task} | {model} | {first.get('hidden', 64)} x {first.get('batch', 32)} | {n} | "
                     f"{','.join(map(str, seeds))} | {first['chance']:.2f} | {acc} | {cos} | {rate} | {wall} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--tasks", nargs="+", default=None, choices=[w[0] for w in WORKLOADS])
    p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--out", default=None)
    p.add_argument("--table", default=None, metavar="FILE.json", help="only print the table of a saved run")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            print(markdown(json.load(f)))
        return
    t0 = time.perf_counter()
    rows = run(tuple(a.seeds), a.scale, a.tasks, tuple(a.algos), out=a.out)
    print(f"\nmeasured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}, etprop {etprop.__version__}, {time.perf_counter() - t0:.0f} s in all\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
