"""Speed and memory benchmarks of etprop's learners, side by side with BPTT and braintrace.

Usage::

    python -m benchmarks.run [--suite lif|memory|all] [--hidden 128 256] [--T 200] [--batch 16]
                             [--repeats 5] [--mem-T 100 200 400 800] [--mem-hidden 128]
                             [--no-braintrace] [--out FILE]

Suites:

``lif``
    A feed-forward LIF layer with an exponential synapse (100 inputs -> ``hidden`` LIF via
    ``etprop.matmul`` -> plain-matmul readout of 10), batch ``--batch``, ``--T`` steps.
    For each contender the first call (trace + XLA compile + one run) is timed separately;
    then steady-state full-sequence gradient computations are timed with
    ``block_until_ready``, interleaved across contenders (A B C ... A B C ...) for
    ``--repeats`` rounds. Reported: median seconds per sequence, ms per step, and the
    ratios to the forward-only floor and to BPTT.

``memory``
    XLA's compiled memory analysis of the full-sequence gradient function (the jitted
    scan each learner's ``etrace_grad`` runs) for BPTT, D-RTRL and ES-D-RTRL (plus the
    forward-only scan as a floor, and braintrace's learners if available) at
    ``--mem-hidden`` and ``--batch``, for each ``--mem-T``. Nothing is executed; only
    ``lower(...).compile().memory_analysis()``.

Contenders:

``forward-only``  jitted ``lax.scan`` of the plain model step plus the step loss, no gradient
``BPTT``          ``etprop.BPTT`` learner, ``etrace_grad`` (``jax.grad`` over the scan)
``D-RTRL``        ``etprop.D_RTRL`` learner, ``etrace_grad``
``ES-D-RTRL``     ``etprop.ES_D_RTRL(decay_or_rank=0.9)`` learner, ``etrace_grad``
``braintrace D-RTRL`` / ``braintrace ES-D-RTRL``
                  the same network on ``braintrace.matmul`` (if braintrace imports),
                  ``braintrace.compile(..., batch_size=B)`` and its ``etrace_grad`` driver
                  under ``brainstate.transform.jit``, ``reduction='sum'`` with the step loss
                  averaged over the batch (the objective etprop's learners use).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

import etprop
from benchmarks.models import LIFExpSynNet, lif_step, make_braintrace_model, mse

N_IN = 100
N_OUT = 10
ES_DECAY = 0.9

FORWARD = "forward-only"
BPTT = "BPTT"
DRTRL = "D-RTRL"
ESDRTRL = "ES-D-RTRL"
BT_DRTRL = "braintrace D-RTRL"
BT_ES = "braintrace ES-D-RTRL"


# ---------------------------------------------------------------------------------------------
# machine info


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return platform.processor() or "unknown"


def _version(mod_name: str) -> str:
    try:
        mod = __import__(mod_name)
        return getattr(mod, "__version__", "unknown")
    except Exception:  # noqa: BLE001
        return "not installed"


def _git_state() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, timeout=10).stdout
        diff = git("diff", "HEAD", "--", "etprop")
        import hashlib
        return {"commit": git("rev-parse", "--short", "HEAD").strip(),
                "etprop_dirty": bool(diff.strip()),
                "etprop_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff.strip() else None}
    except Exception:  # noqa: BLE001 - informational only
        return {}


def machine_info() -> dict:
    return {
        "git": _git_state(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {m: _version(m) for m in ("jax", "jaxlib", "etprop", "brainstate", "brainunit", "braintrace")},
    }


def braintrace_available() -> tuple[bool, str]:
    try:
        import braintrace  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"braintrace: not wired (import failed: {type(e).__name__}: {e})"
    return True, "wired"


# ---------------------------------------------------------------------------------------------
# workload


def lif_data(T: int, batch: int, seed: int = 1):
    """Poisson-like input spikes (rate 0.2, amplitude 2) and Gaussian targets."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    xs = (jax.random.uniform(k1, (T, batch, N_IN)) < 0.2).astype(jnp.float32) * 2.0
    ys = jax.random.normal(k2, (T, batch, N_OUT))
    return xs, ys


def _etprop_learner(algo, hidden: int, batch: int, x0, **opts):
    model = LIFExpSynNet(N_IN, hidden, N_OUT, batch_size=batch)
    return etprop.compile(model, algo, x0, batch_size=batch, **opts)


class Contender:
    """``setup()`` builds the learner (timed as ``graph_s``) and returns a zero-argument
    callable that runs one full-sequence computation and returns arrays to block on."""

    def __init__(self, name: str, setup: Callable[[], Callable[[], object]],
                 grads_of: Callable[[object], object] | None = None):
        self.name = name
        self.setup = setup
        self.grads_of = grads_of  # result of run() -> gradient pytree (None: computes no gradient)
        self.run: Callable[[], object] | None = None


def _forward_fn(hidden, batch, xs, ys):
    """The forward-only floor: ``(jitted f, args)``; ``f(*args)`` scans the plain model step
    (`benchmarks.models.lif_step` on the whole batch, ``etprop.matmul`` outside online learning
    is its plain matmul) and the batch-mean step loss over the sequence; no gradient."""
    model = LIFExpSynNet(N_IN, hidden, N_OUT, batch_size=batch)
    w, w_out = model.w.value, model.w_out.value
    g0, v0 = model.g.value, model.v.value

    def fwd(w, w_out, g, v, xs, ys):
        def body(carry, inp):
            g, v = carry
            x, y = inp
            out, g, v = lif_step(w, w_out, g, v, x, ds=model.ds, dm=model.dm)
            return (g, v), jnp.mean(jax.vmap(mse)(out, y))

        (g, v), losses = jax.lax.scan(body, (g, v), (xs, ys))
        return jnp.sum(losses), g, v

    return jax.jit(fwd), (w, w_out, g0, v0, xs, ys)


def _forward_only(hidden, batch, xs, ys):
    def setup():
        f, args = _forward_fn(hidden, batch, xs, ys)
        return lambda: f(*args)

    return Contender(FORWARD, setup)


def _etprop_contender(name, algo, hidden, batch, xs, ys, **opts):
    def setup():
        learner = _etprop_learner(algo, hidden, batch, xs[0], **opts)
        return lambda: learner.etrace_grad(xs, ys, mse)

    return Contender(name, setup, grads_of=lambda res: res[0])


def _braintrace_fn(algo_name, hidden, batch, xs, ys, **opts):
    """``(jitted f, args)`` for braintrace's learner on the same network; ``f(*args)`` runs its
    ``etrace_grad`` driver over the sequence (hidden states and traces advance in place)."""
    import brainstate
    import braintrace

    algo = getattr(braintrace, algo_name)
    model = make_braintrace_model(N_IN, hidden, N_OUT)
    learner = braintrace.compile(model, algo, xs[0], batch_size=batch, **opts)

    def step_loss(x, y):
        return jnp.mean(jax.vmap(mse)(learner(x), y))

    @brainstate.transform.jit
    def grad_seq(xs, ys):
        return learner.etrace_grad(xs, ys, step_fn=step_loss, reduction="sum", return_value=True,
                                   loss_output="scalar")

    return grad_seq, (xs, ys)


def _braintrace_contender(name, algo_name, hidden, batch, xs, ys, **opts):
    def setup():
        f, args = _braintrace_fn(algo_name, hidden, batch, xs, ys, **opts)
        return lambda: f(*args)

    return Contender(name, setup, grads_of=lambda res: res[0])


def lif_contenders(hidden, batch, xs, ys, with_braintrace: bool):
    cs = [
        _forward_only(hidden, batch, xs, ys),
        _etprop_contender(BPTT, etprop.BPTT, hidden, batch, xs, ys),
        _etprop_contender(DRTRL, etprop.D_RTRL, hidden, batch, xs, ys),
        _etprop_contender(ESDRTRL, etprop.ES_D_RTRL, hidden, batch, xs, ys, decay_or_rank=ES_DECAY),
    ]
    if with_braintrace:
        cs += [
            _braintrace_contender(BT_DRTRL, "D_RTRL", hidden, batch, xs, ys),
            _braintrace_contender(BT_ES, "ES_D_RTRL", hidden, batch, xs, ys, decay_or_rank=ES_DECAY),
        ]
    return cs


def _timed(fn, keep=False):
    t0 = time.perf_counter()
    res = jax.block_until_ready(fn())
    dt = time.perf_counter() - t0
    return (dt, res) if keep else dt


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _rel_err(a, b) -> float:
    """max over leaves of max|a - b| / max|b| (leaves in sorted-key order: both libraries'
    gradient dicts flatten to bias, weight, w_out)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        return float("nan")
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30)) for x, y in zip(la, lb))


def run_lif(hidden: int, T: int, batch: int, repeats: int, with_braintrace: bool, log=print) -> dict:
    xs, ys = lif_data(T, batch)
    load_before = _loadavg()
    contenders = lif_contenders(hidden, batch, xs, ys, with_braintrace)
    rows: dict[str, dict] = {}
    first_grads = {}
    for c in contenders:  # build + compile each first
        t0 = time.perf_counter()
        c.run = c.setup()
        graph_s = time.perf_counter() - t0
        first_s, res = _timed(c.run, keep=True)
        if c.grads_of is not None:
            first_grads[c.name] = c.grads_of(res)
        rows[c.name] = {"graph_s": graph_s, "first_call_s": first_s, "times_s": []}
        log(f"  [{c.name}] graph/setup {graph_s:.2f} s, first call (trace+compile+run) {first_s:.2f} s")
    # every learner's first call starts from zero state with the same weights and data:
    # compare its gradient with BPTT's (D-RTRL is exact on this feed-forward LIF layer)
    ref = first_grads[BPTT]
    leaf_names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(ref)]
    for name, g in first_grads.items():
        rows[name]["grad_rel_err_vs_bptt"] = _rel_err(g, ref)
        la = jax.tree.leaves(g)
        if len(la) == len(leaf_names):
            rows[name]["grad_rel_err_vs_bptt_per_leaf"] = {
                n: _rel_err(a, b) for n, a, b in zip(leaf_names, la, jax.tree.leaves(ref))}
    for _ in range(repeats):  # interleaved: A B C ... A B C ...
        for c in contenders:
            rows[c.name]["times_s"].append(_timed(c.run))
    for r in rows.values():
        r["median_s"] = statistics.median(r["times_s"])
        r["per_step_ms"] = r["median_s"] / T * 1e3
    fwd = rows[FORWARD]["median_s"]
    bptt = rows[BPTT]["median_s"]
    for r in rows.values():
        r["vs_forward"] = r["median_s"] / fwd
        r["vs_bptt"] = r["median_s"] / bptt
    return {"workload": "lif", "hidden": hidden, "n_in": N_IN, "n_out": N_OUT, "T": T, "batch": batch,
            "repeats": repeats, "loadavg_1min_before_after": [load_before, _loadavg()], "contenders": rows}


# ---------------------------------------------------------------------------------------------
# memory


_MEM_FIELDS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
               "generated_code_size_in_bytes")


def _mem(compiled) -> dict:
    ma = compiled.memory_analysis()
    if ma is None:
        return {"error": "memory_analysis() returned None on this backend"}
    d = {f: int(getattr(ma, f, 0) or 0) for f in _MEM_FIELDS}
    d["total_bytes"] = d["temp_size_in_bytes"] + d["argument_size_in_bytes"] + d["output_size_in_bytes"] \
        - d["alias_size_in_bytes"]
    return d


def _mem_etprop(algo, hidden, batch, xs, ys, **opts) -> dict:
    """The learner's public ``etrace_grad`` under `brainstate.transform.jit` (which turns its
    reads and writes of parameters, hidden states and traces into arguments and outputs),
    lowered and compiled; the same wrapping as braintrace's driver gets."""
    import brainstate

    learner = _etprop_learner(algo, hidden, batch, xs[0], **opts)
    f = brainstate.transform.jit(lambda xs, ys: learner.etrace_grad(xs, ys, mse))
    t0 = time.perf_counter()
    compiled = f.lower(xs, ys).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def _mem_forward(hidden, batch, xs, ys) -> dict:
    f, args = _forward_fn(hidden, batch, xs, ys)
    t0 = time.perf_counter()
    compiled = f.lower(*args).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def _mem_braintrace(algo_name, hidden, batch, xs, ys, **opts) -> dict:
    f, args = _braintrace_fn(algo_name, hidden, batch, xs, ys, **opts)
    t0 = time.perf_counter()
    compiled = f.lower(*args).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def run_memory(hidden: int, batch: int, Ts, with_braintrace: bool = False, log=print) -> dict:
    rows = []
    for T in Ts:
        xs, ys = lif_data(T, batch)
        c = {FORWARD: _mem_forward(hidden, batch, xs, ys),
             BPTT: _mem_etprop(etprop.BPTT, hidden, batch, xs, ys),
             DRTRL: _mem_etprop(etprop.D_RTRL, hidden, batch, xs, ys),
             ESDRTRL: _mem_etprop(etprop.ES_D_RTRL, hidden, batch, xs, ys, decay_or_rank=ES_DECAY)}
        if with_braintrace:
            c[BT_DRTRL] = _mem_braintrace("D_RTRL", hidden, batch, xs, ys)
            c[BT_ES] = _mem_braintrace("ES_D_RTRL", hidden, batch, xs, ys, decay_or_rank=ES_DECAY)
        log(f"  [memory] T={T}: " + ", ".join(f"{k} {v.get('total_bytes', 0) / 2**20:.2f} MiB" for k, v in c.items()))
        rows.append({"T": T, "contenders": c})
    return {"workload": "lif", "hidden": hidden, "n_in": N_IN, "n_out": N_OUT, "batch": batch, "rows": rows}


# ---------------------------------------------------------------------------------------------
# tables


def _table(header, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def lif_table(res: dict) -> str:
    head = (f"lif: hidden={res['hidden']}, T={res['T']}, batch={res['batch']}, repeats={res['repeats']} "
            f"(1-min load average before/after: {res['loadavg_1min_before_after']})")
    header = ["contender", "first call s", "median s/seq", "ms/step", "x forward", "x BPTT", "grad rel err vs BPTT"]
    err = lambda r: f"{r['grad_rel_err_vs_bptt']:.1e}" if "grad_rel_err_vs_bptt" in r else "-"
    rows = [[name, f"{r['first_call_s']:.2f}", f"{r['median_s']:.4f}", f"{r['per_step_ms']:.3f}",
             f"{r['vs_forward']:.2f}", f"{r['vs_bptt']:.2f}", err(r)] for name, r in res["contenders"].items()]
    return head + "\n" + _table(header, rows)


def memory_table(res: dict) -> str:
    """Two tables (rows T, columns contenders): XLA temp buffers, and the total
    temp + arguments + outputs - aliased (arguments include the inputs xs, ys, the
    parameters, the hidden states and, for the trace learners, the traces)."""
    names = list(res["rows"][0]["contenders"])
    mib = lambda b: f"{b / 2**20:.2f}"
    out = []
    for key, what in (("temp_size_in_bytes", "temp buffers"),
                      ("total_bytes", "total = temp + arguments + outputs - aliased")):
        head = (f"memory, {what} (MiB, XLA compiled memory_analysis): hidden={res['hidden']}, "
                f"batch={res['batch']}")
        rows = [[e["T"]] + [mib(e["contenders"][n].get(key, 0)) for n in names] for e in res["rows"]]
        out.append(head + "\n" + _table(["T"] + names, rows))
    return "\n\n".join(out)


def machine_text(m: dict) -> str:
    v = m["versions"]
    g = m.get("git") or {}
    tree = (f"\netprop tree: commit {g.get('commit')}" + (f", uncommitted etprop/ changes (diff sha1 "
            f"{g['etprop_diff_sha1']})" if g.get("etprop_dirty") else ", clean")) if g else ""
    return (f"date: {m['date']}\nmachine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, "
            f"jax backend {m['jax_backend']}\nversions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + tree)


# ---------------------------------------------------------------------------------------------
# entry point


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=("lif", "memory", "all"), default="lif")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 256])
    p.add_argument("--T", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mem-T", type=int, nargs="+", default=[100, 200, 400, 800], dest="mem_T")
    p.add_argument("--mem-hidden", type=int, default=128, dest="mem_hidden")
    p.add_argument("--no-braintrace", action="store_true", dest="no_braintrace")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    info = machine_info()
    log(machine_text(info))
    bt_ok, bt_msg = (False, "braintrace: not wired (--no-braintrace)") if args.no_braintrace else braintrace_available()
    if not bt_ok:
        log(bt_msg)
    result = {"machine": info, "args": vars(args), "braintrace": bt_msg, "lif": [], "memory": None}
    if args.suite in ("lif", "all"):
        for h in args.hidden:
            log(f"\n== lif hidden={h} T={args.T} batch={args.batch} ==")
            res = run_lif(h, args.T, args.batch, args.repeats, bt_ok, log=log)
            result["lif"].append(res)
            log(lif_table(res))
    if args.suite in ("memory", "all"):
        log(f"\n== memory hidden={args.mem_hidden} batch={args.batch} T={args.mem_T} ==")
        res = run_memory(args.mem_hidden, args.batch, args.mem_T, with_braintrace=bt_ok, log=log)
        result["memory"] = res
        log(memory_table(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        log(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
