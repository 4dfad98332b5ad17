"""The ``devices`` suite: per-device memory and time of data-parallel training on 1, 2, 4 devices.

For each device count a fresh process (the CPU device count is fixed when jax starts; on a GPU
machine the real devices are used) compiles the benchmark LIF network (`benchmarks.models`,
100 inputs, batch 16, T 100) with ``etprop.compile(..., mesh=Mesh(devices[:n], ("data",)))`` and
reports: eligibility-trace bytes per device (from the arrays' shards), the compiled driver's
argument and temporary bytes per device (XLA's memory analysis of ``sequence_fn``), the
collectives XLA inserted (kind, count and bytes, from the compiled HLO), and ms per sequence
(median).
Forced CPU devices share this machine's cores, so their times measure overhead, not speed-up.

    python -m benchmarks.devices [--hidden 512] [--algo d_rtrl] [--devices 1 2 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

_COLLECTIVE = re.compile(r"=\s*(\w+)\[([\d,]*)\]\S*\s+(all-reduce|all-gather|collective-permute|reduce-scatter|"
                         r"all-to-all)(?:-start)?\(")
_BYTES = {"f32": 4, "f64": 8, "bf16": 2, "f16": 2, "s32": 4, "pred": 1}


def collectives(hlo: str) -> dict:
    """``{kind: (count, bytes)}`` of the collective ops in an HLO module (each op once, whether it
    runs once or inside a loop)."""
    out = {}
    for dtype, dims, kind in _COLLECTIVE.findall(hlo):
        size = 1
        for d in filter(None, dims.split(",")):
            size *= int(d)
        n, b = out.get(kind, (0, 0))
        out[kind] = (n + 1, b + size * _BYTES.get(dtype, 4))
    return out


def measure_one(n_dev: int, hidden: int, algo: str, repeats: int, T: int = 100, batch: int = 16) -> dict:
    """In this process (jax not started yet): the figures for ``n_dev`` devices."""
    import jax
    if jax.devices()[0].platform == "cpu" and len(jax.devices()) < n_dev:
        raise SystemExit(f"only {len(jax.devices())} devices")
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    import etprop
    from benchmarks.models import make_model, mse
    from benchmarks.step_fn import median_time

    mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
    xs = (jax.random.uniform(jax.random.key(1), (T, batch, 100)) < 0.1).astype(jnp.float32)
    ys = jax.random.normal(jax.random.key(2), (T, batch, 10))
    learner = etprop.compile(make_model("lif", 100, hidden, 10, batch_size=batch), algo, xs[0], batch_size=batch,
                             mesh=mesh)
    _, hidden_v, others = learner.graph.mf.values()
    fn = jax.jit(learner.sequence_fn(mse))
    args = (learner.params(), hidden_v, others, learner.etrace.value, xs, ys, jnp.ones(T))
    compiled = fn.lower(*args).compile()
    mem = compiled.memory_analysis()
    coll = collectives(compiled.as_text())
    ms = median_time(lambda: fn(*args)[1], repeats) * 1e3
    shards = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(learner.etrace.value))
    return dict(devices=n_dev, platform=jax.devices()[0].platform, trace_bytes_per_device=int(shards),
                argument_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                collectives=coll, ms=ms)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--algo", default="d_rtrl")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results_devices.json")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the per-count subprocess
    a = p.parse_args(argv)
    if a.one is not None:
        import jax
        jax.config.update("jax_num_cpu_devices", a.one)
        print(json.dumps(measure_one(a.one, a.hidden, a.algo, a.repeats)))
        return 0
    rows = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    for n in a.devices:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.devices", "--one", str(n), "--hidden", str(a.hidden),
                               "--algo", a.algo, "--repeats", str(a.repeats)], capture_output=True, text=True,
                              env=env)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-2000:])
            return proc.returncode
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import jax

    import etprop
    print(f"# devices suite: lif network, hidden {a.hidden}, batch 16, T 100, {a.algo}; {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {rows[0]['platform']}, jax {jax.__version__}, etprop {etprop.__version__}\n")
    print("| devices | trace bytes / device | driver arguments / device | driver temporaries / device | "
          "collectives in the compiled driver: count (bytes each pass) | ms / sequence |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        coll = ", ".join(f"{k} {n} ({b:,})" for k, (n, b) in sorted(r["collectives"].items())) or "none"
        print(f"| {r['devices']} | {r['trace_bytes_per_device']:,} | {r['argument_bytes']:,} | {r['temp_bytes']:,} | "
              f"{coll} | {r['ms']:.1f} |")
    with open(a.out, "w") as f:
        json.dump(dict(rows=rows, hidden=a.hidden, algo=a.algo, date=time.strftime("%Y-%m-%d")), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
