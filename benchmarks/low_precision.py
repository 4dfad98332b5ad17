"""Eligibility traces stored in bfloat16 / float16 against float32, side by side in one run.

``etprop.compile(..., trace_dtype=...)`` stores the traces narrow between steps; every trace
update and gradient is computed in float32. For the benchmark networks (`benchmarks.models`) and
D-RTRL / ES-D-RTRL it prints, per storage dtype: trace bytes per sample-batch, ms per sequence
(median of ``--repeats`` after a warm-up), and the cosine of the gradient (all parameters) to
BPTT's and to the float32-trace gradient.

    python -m benchmarks.low_precision [--repeats 5] [--T 100]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import jax
import jax.numpy as jnp

import etprop
from benchmarks.models import make_model, mse
from benchmarks.step_fn import median_time

CONFIGS = {"gru": dict(n_in=16, hidden=256, n_out=4, batch=16), "lif": dict(n_in=100, hidden=512, n_out=10, batch=16)}
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _flat(g):
    return jnp.concatenate([jnp.ravel(a).astype(jnp.float32) for a in jax.tree.leaves(g)])


def _cos(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def measure(kind: str, T: int, repeats: int) -> list[dict]:
    c = CONFIGS[kind]
    k1, k2 = jax.random.split(jax.random.key(0))
    xs = jax.random.normal(k1, (T, c["batch"], c["n_in"]))
    if kind == "lif":
        xs = (jax.random.uniform(k1, (T, c["batch"], c["n_in"])) < 0.1).astype(jnp.float32)
    ys = jax.random.normal(k2, (T, c["batch"], c["n_out"]))
    build = lambda algo, **kw: etprop.compile(make_model(kind, c["n_in"], c["hidden"], c["n_out"],
                                                         batch_size=c["batch"]), algo, xs[0],
                                              batch_size=c["batch"], **kw)
    g_bptt, _ = build("bptt").etrace_grad(xs, ys, mse)
    rows = []
    for algo in ("d_rtrl", "es_d_rtrl"):
        ref = None
        for name, dt in DTYPES.items():
            learner = build(algo, trace_dtype=dt)
            g, _ = learner.etrace_grad(xs, ys, mse)
            ref = g if ref is None else ref
            learner.reset()
            ms = median_time(lambda: learner.etrace_grad(xs, ys, mse)[1], repeats) * 1e3
            rows.append(dict(net=kind, algo=algo, dtype=name, ms=ms,
                             trace_bytes=sum(a.nbytes for a in jax.tree.leaves(learner.etrace.value["rel"])),
                             cos_bptt=_cos(g, g_bptt), cos_f32=_cos(g, ref)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nets", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    a = p.parse_args(argv)
    print(f"# trace storage dtype, T {a.T}; {time.strftime('%Y-%m-%d')}, {platform.machine()}, jax {jax.__version__}, "
          f"etprop {etprop.__version__}\n")
    print("| network | rule | trace dtype | trace bytes | ms / sequence | cos to BPTT | cos to float32 traces |")
    print("|---|---|---|---|---|---|---|")
    for net in a.nets:
        for r in measure(net, a.T, a.repeats):
            print(f"| {r['net']} | {r['algo']} | {r['dtype']} | {r['trace_bytes']:,} | {r['ms']:.1f} | "
                  f"{r['cos_bptt']:.6f} | {r['cos_f32']:.6f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
