"""Chunk-size sweep of D-RTRL and the bandwidth floor of one per-step trace update.

    python -m benchmarks.chunk_sweep [--hidden 128 256 512] [--T 192] [--batch 16]

Workload: the `lif` test model (100 inputs -> hidden LIF with exponential synapse, S = 2).
Prints, per hidden size: BPTT ms/step; the floor (a bare jitted scan doing only the
per-step S = 2 trace update ``e_a = D_a0 e_0 + D_a1 e_1 + u (x) Df_a`` on (B, I, H) arrays,
`benchmarks.run.trace_floor_fn`);
D-RTRL per step (chunk 1) as a ratio to that floor; and D-RTRL over the sequence at each
chunk size as a ratio to BPTT. Medians of 5 runs after one compile run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import etprop  # noqa: E402
from benchmarks.run import trace_floor_fn  # noqa: E402
from tests.algorithms.models import LIFExpSyn, mse  # noqa: E402

CHUNKS = (1, 4, 8, 16, 32, 64)


def _median_time(f, repeats=5):
    jax.block_until_ready(f())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def sweep(hidden, T=192, B=16, I=100):
    rows = []
    for H in hidden:
        xs = (jax.random.uniform(jax.random.key(0), (T, B, I)) < 0.1).astype(jnp.float32)
        ys = jnp.zeros((T, B, 2))

        def model():
            m = LIFExpSyn(I, H, 2)
            for s in (m.g, m.v):
                s.value = jnp.zeros((B, H))
            return m

        bptt = etprop.compile(model(), etprop.BPTT, xs[0], batch_size=B)
        drtrl = etprop.compile(model(), etprop.D_RTRL, xs[0], batch_size=B)
        floor, floor_args = trace_floor_fn([(I, H)], B, T, S=2)  # the test model's group has S = 2
        tb = _median_time(lambda: bptt.etrace_grad(xs, ys, mse)[0])
        tf = _median_time(lambda: floor(*floor_args))
        per_chunk = {c: _median_time(lambda: drtrl.etrace_grad(xs, ys, mse, closed_form_chunk=c)[0]) for c in CHUNKS}
        rows.append({"hidden": H, "bptt_ms_step": tb / T * 1e3, "floor_ms_step": tf / T * 1e3,
                     "per_step_over_floor": per_chunk[1] / tf,
                     "chunk_over_bptt": {c: t / tb for c, t in per_chunk.items()}})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--T", type=int, default=192)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args(argv)
    rows = sweep(a.hidden, a.T, a.batch)
    head = "| hidden | BPTT ms/step | floor ms/step | D-RTRL per-step / floor | " + \
        " | ".join(f"chunk {c} / BPTT" for c in CHUNKS) + " |"
    print(head)
    print("|" + "---|" * (4 + len(CHUNKS)))
    for r in rows:
        print(f"| {r['hidden']} | {r['bptt_ms_step']:.3f} | {r['floor_ms_step']:.3f} | "
              f"{r['per_step_over_floor']:.2f} | "
              + " | ".join(f"{r['chunk_over_bptt'][c]:.2f}" for c in CHUNKS) + " |")
    return rows


if __name__ == "__main__":
    main()
