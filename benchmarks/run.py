"""Speed and memory benchmarks of etprop's learners, side by side with BPTT and braintrace.

Usage::

    python -m benchmarks.run [--suite lif|gru|memory|all] [--hidden 128 256 512] [--T 200]
                             [--batch 16] [--repeats 5] [--chunk K]
                             [--mem-T 100 200 400 800] [--mem-hidden 128]
                             [--no-braintrace] [--out FILE]

Suites:

``lif``
    A feed-forward LIF layer with an exponential synapse (100 inputs -> ``hidden`` LIF via
    ``etprop.matmul`` -> plain-matmul readout of 10), squared-error step loss, batch
    ``--batch``, ``--T`` steps. For each contender the first call (trace + XLA compile + one
    run) is timed separately; then steady-state full-sequence gradient computations are timed
    with ``block_until_ready``, interleaved across contenders (A B C ... A B C ...) for
    ``--repeats`` rounds. Reported: median seconds per sequence, ms per step, the ratios to
    the forward-only floor and to BPTT, and each learner's full-sequence gradient (of its
    first call, from zero state) against BPTT's: the max relative error over parameter leaves
    and the cosine similarity of all parameters concatenated.

``gru``
    A GRU with dense recurrence (one-hot input of 10 symbols -> ``hidden`` GRU units, each
    gate's input and recurrent weights one ``etprop.matmul`` on ``[x, h]`` (plus bias), gates
    as in ``tests/algorithms/models.py`` ``DenseGRU`` -> plain-matmul readout to 10 classes),
    softmax cross-entropy step loss against the symbol shown 3 steps earlier. Timed and
    compared like ``lif``. D-RTRL is an approximation here (dense recurrence).

``memory``
    XLA's compiled memory analysis of the full-sequence gradient function (the jitted
    scan each learner's ``etrace_grad`` runs) for BPTT, D-RTRL and ES-D-RTRL (plus the
    forward-only scan as a floor, and braintrace's learners if available) on the ``lif``
    workload at ``--mem-hidden`` and ``--batch``, for each ``--mem-T``. Nothing is executed;
    only ``lower(...).compile().memory_analysis()``. Also reported: each contender's growth
    per step (least-squares slope over the ``--mem-T``) and the crossover T where BPTT's
    memory exceeds each online learner's.

Contenders:

``forward-only``  jitted ``lax.scan`` of the plain model step plus the step loss, no gradient
``BPTT``          ``etprop.BPTT`` learner, ``etrace_grad`` (``jax.grad`` over the scan)
``D-RTRL``        ``etprop.D_RTRL`` learner, ``etrace_grad(..., chunk_size=--chunk)``
``D-RTRL per-step``  the same with ``chunk_size=1`` (one step at a time; lif and gru only)
``ES-D-RTRL``     ``etprop.ES_D_RTRL(decay_or_rank=0.9)`` learner, ``etrace_grad(..., chunk_size=--chunk)``
``braintrace D-RTRL`` / ``braintrace ES-D-RTRL``
                  the same network on ``braintrace.matmul`` (if braintrace imports),
                  ``braintrace.compile(..., batch_size=B)`` and its ``etrace_grad`` driver
                  under ``brainstate.transform.jit``, ``reduction='sum'`` with the step loss
                  averaged over the batch (the objective etprop's learners use).

``--chunk`` defaults to None, i.e. etprop's own default chunk (``OnlineAlgorithm.default_chunk``).
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
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp

import numpy as np

import etprop
from benchmarks.models import (GRUNet, LIFExpSynNet, gru_step, lif_step, make_braintrace_gru,
                               make_braintrace_model, mse, xent)

N_IN = 100
N_OUT = 10
N_SYM = 10  # gru: one-hot input symbols = output classes
GRU_DELAY = 3  # gru: the target is the symbol shown this many steps earlier
ES_DECAY = 0.9

FORWARD = "forward-only"
BPTT = "BPTT"
DRTRL = "D-RTRL"
DRTRL_STEP = "D-RTRL per-step"
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
                "etprop_tree": git("rev-parse", "--short", "HEAD:etprop").strip(),  # etprop/ content at HEAD
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


def gru_data(T: int, batch: int, seed: int = 1):
    """One-hot random symbols ``(T, batch, 10)`` and integer labels ``(T, batch)``: the symbol
    shown ``GRU_DELAY`` steps earlier (the first symbol for the first steps)."""
    sym = jax.random.randint(jax.random.key(seed), (T, batch), 0, N_SYM)
    xs = jax.nn.one_hot(sym, N_SYM, dtype=jnp.float32)
    ys = sym[jnp.maximum(jnp.arange(T) - GRU_DELAY, 0)]
    return xs, ys


class Workload:
    """A network written for etprop and for braintrace, its data, step loss and forward floor."""

    def __init__(self, name, n_in, n_out, data, step_loss, etprop_model, braintrace_model, forward_fn):
        self.name, self.n_in, self.n_out = name, n_in, n_out
        self.data = data  # (T, batch) -> (xs, ys)
        self.step_loss = step_loss  # per-sample (out, target) -> scalar
        self.etprop_model = etprop_model  # (hidden, batch) -> module
        self.braintrace_model = braintrace_model  # hidden -> module (braintrace.matmul)
        self.forward_fn = forward_fn  # (hidden, batch, xs, ys) -> (jitted f, args)


def _lif_forward_fn(hidden, batch, xs, ys):
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


def _gru_forward_fn(hidden, batch, xs, ys):
    """The forward-only floor of the GRU (`benchmarks.models.gru_step` scanned on the batch)."""
    model = GRUNet(N_SYM, hidden, N_SYM, batch_size=batch)
    w = (model.wz.value, model.wr.value, model.wh.value, model.w_out.value)

    def fwd(w, h, xs, ys):
        def body(h, inp):
            x, y = inp
            out, h = gru_step(*w, h, x)
            return h, jnp.mean(jax.vmap(xent)(out, y))

        h, losses = jax.lax.scan(body, h, (xs, ys))
        return jnp.sum(losses), h

    return jax.jit(fwd), (w, model.h.value, xs, ys)


WORKLOADS = {
    "lif": Workload("lif", N_IN, N_OUT, lif_data, mse,
                    lambda hidden, batch: LIFExpSynNet(N_IN, hidden, N_OUT, batch_size=batch),
                    lambda hidden: make_braintrace_model(N_IN, hidden, N_OUT), _lif_forward_fn),
    "gru": Workload("gru", N_SYM, N_SYM, gru_data, xent,
                    lambda hidden, batch: GRUNet(N_SYM, hidden, N_SYM, batch_size=batch),
                    lambda hidden: make_braintrace_gru(N_SYM, hidden, N_SYM), _gru_forward_fn),
}


def _etprop_learner(wl: Workload, algo, hidden: int, batch: int, x0, **opts):
    return etprop.compile(wl.etprop_model(hidden, batch), algo, x0, batch_size=batch, **opts)


class Contender:
    """``setup()`` builds the learner (timed as ``graph_s``) and returns a zero-argument
    callable that runs one full-sequence computation and returns arrays to block on."""

    def __init__(self, name: str, setup: Callable[[], Callable[[], object]],
                 grads_of: Callable[[object], object] | None = None):
        self.name = name
        self.setup = setup
        self.grads_of = grads_of  # result of run() -> gradient pytree (None: computes no gradient)
        self.run: Callable[[], object] | None = None


def _forward_only(wl, hidden, batch, xs, ys):
    def setup():
        f, args = wl.forward_fn(hidden, batch, xs, ys)
        return lambda: f(*args)

    return Contender(FORWARD, setup)


def _etprop_contender(name, wl, algo, hidden, batch, xs, ys, chunk_size=None, **opts):
    """``chunk_size`` goes to ``etrace_grad`` (None: etprop's default; BPTT ignores it)."""
    def setup():
        learner = _etprop_learner(wl, algo, hidden, batch, xs[0], **opts)
        kw = {} if algo is etprop.BPTT else {"chunk_size": chunk_size}
        return lambda: learner.etrace_grad(xs, ys, wl.step_loss, **kw)

    return Contender(name, setup, grads_of=lambda res: res[0])


def _braintrace_fn(wl, algo_name, hidden, batch, xs, ys, **opts):
    """``(jitted f, args)`` for braintrace's learner on the same network; ``f(*args)`` runs its
    ``etrace_grad`` driver over the sequence (hidden states and traces advance in place)."""
    import brainstate
    import braintrace

    algo = getattr(braintrace, algo_name)
    model = wl.braintrace_model(hidden)
    learner = braintrace.compile(model, algo, xs[0], batch_size=batch, **opts)

    def step_loss(x, y):
        return jnp.mean(jax.vmap(wl.step_loss)(learner(x), y))

    @brainstate.transform.jit
    def grad_seq(xs, ys):
        return learner.etrace_grad(xs, ys, step_fn=step_loss, reduction="sum", return_value=True,
                                   loss_output="scalar")

    return grad_seq, (xs, ys)


def _braintrace_contender(name, wl, algo_name, hidden, batch, xs, ys, **opts):
    def setup():
        f, args = _braintrace_fn(wl, algo_name, hidden, batch, xs, ys, **opts)
        return lambda: f(*args)

    return Contender(name, setup, grads_of=lambda res: res[0])


def contenders(wl: Workload, hidden, batch, xs, ys, with_braintrace: bool, chunk=None):
    cs = [
        _forward_only(wl, hidden, batch, xs, ys),
        _etprop_contender(BPTT, wl, etprop.BPTT, hidden, batch, xs, ys),
        _etprop_contender(DRTRL, wl, etprop.D_RTRL, hidden, batch, xs, ys, chunk_size=chunk),
        _etprop_contender(DRTRL_STEP, wl, etprop.D_RTRL, hidden, batch, xs, ys, chunk_size=1),
        _etprop_contender(ESDRTRL, wl, etprop.ES_D_RTRL, hidden, batch, xs, ys, chunk_size=chunk,
                          decay_or_rank=ES_DECAY),
    ]
    if with_braintrace:
        cs += [
            _braintrace_contender(BT_DRTRL, wl, "D_RTRL", hidden, batch, xs, ys),
            _braintrace_contender(BT_ES, wl, "ES_D_RTRL", hidden, batch, xs, ys, decay_or_rank=ES_DECAY),
        ]
    return cs


def lif_contenders(hidden, batch, xs, ys, with_braintrace: bool, chunk=None):
    return contenders(WORKLOADS["lif"], hidden, batch, xs, ys, with_braintrace, chunk)


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
    gradient dicts flatten to the same order, e.g. bias, weight, w_out)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        return float("nan")
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30)) for x, y in zip(la, lb))


def _cosine(a, b) -> float:
    """Cosine similarity of all leaves of ``a`` and ``b`` flattened and concatenated (float64);
    NaN if either is all zeros."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        return float("nan")
    va = np.concatenate([np.asarray(x, np.float64).ravel() for x in la])
    vb = np.concatenate([np.asarray(y, np.float64).ravel() for y in lb])
    den = np.linalg.norm(va) * np.linalg.norm(vb)
    return float(va @ vb / den) if den > 0 else float("nan")


def run_suite(wl: Workload, hidden: int, T: int, batch: int, repeats: int, with_braintrace: bool,
              chunk=None, log=print) -> dict:
    xs, ys = wl.data(T, batch)
    load_before = _loadavg()
    cs = contenders(wl, hidden, batch, xs, ys, with_braintrace, chunk)
    rows: dict[str, dict] = {}
    first_grads = {}
    for c in cs:  # build + compile each first
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            c.run = c.setup()
            graph_s = time.perf_counter() - t0
            first_s, res = _timed(c.run, keep=True)
        if c.grads_of is not None:
            first_grads[c.name] = c.grads_of(res)
        rows[c.name] = {"graph_s": graph_s, "first_call_s": first_s, "times_s": []}
        msgs = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if msgs:
            rows[c.name]["warnings"] = msgs
        log(f"  [{c.name}] graph/setup {graph_s:.2f} s, first call (trace+compile+run) {first_s:.2f} s"
            + "".join(f"\n    warning: {m}" for m in msgs))
    # every learner's first call starts from zero state with the same weights and data:
    # compare its gradient with BPTT's
    ref = first_grads[BPTT]
    leaf_names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(ref)]
    for name, g in first_grads.items():
        rows[name]["grad_rel_err_vs_bptt"] = _rel_err(g, ref)
        rows[name]["grad_cosine_vs_bptt"] = _cosine(g, ref)
        la = jax.tree.leaves(g)
        if len(la) == len(leaf_names):
            lb = jax.tree.leaves(ref)
            rows[name]["grad_rel_err_vs_bptt_per_leaf"] = {n: _rel_err(a, b) for n, a, b in zip(leaf_names, la, lb)}
            rows[name]["grad_cosine_vs_bptt_per_leaf"] = {n: _cosine(a, b) for n, a, b in zip(leaf_names, la, lb)}
            rows[name]["grad_norm_ratio_vs_bptt_per_leaf"] = {  # |g| / |g_BPTT|: 0 for a leaf left at zero
                n: float(jnp.linalg.norm(jnp.ravel(a)) / (jnp.linalg.norm(jnp.ravel(b)) + 1e-30))
                for n, a, b in zip(leaf_names, la, lb)}
    for _ in range(repeats):  # interleaved: A B C ... A B C ...
        for c in cs:
            rows[c.name]["times_s"].append(_timed(c.run))
    for r in rows.values():
        r["median_s"] = statistics.median(r["times_s"])
        r["per_step_ms"] = r["median_s"] / T * 1e3
    fwd = rows[FORWARD]["median_s"]
    bptt = rows[BPTT]["median_s"]
    for r in rows.values():
        r["vs_forward"] = r["median_s"] / fwd
        r["vs_bptt"] = r["median_s"] / bptt
    return {"workload": wl.name, "hidden": hidden, "n_in": wl.n_in, "n_out": wl.n_out, "T": T, "batch": batch,
            "repeats": repeats, "chunk": chunk, "loadavg_1min_before_after": [load_before, _loadavg()],
            "contenders": rows}


def run_lif(hidden: int, T: int, batch: int, repeats: int, with_braintrace: bool, chunk=None, log=print) -> dict:
    return run_suite(WORKLOADS["lif"], hidden, T, batch, repeats, with_braintrace, chunk, log)


def run_gru(hidden: int, T: int, batch: int, repeats: int, with_braintrace: bool, chunk=None, log=print) -> dict:
    return run_suite(WORKLOADS["gru"], hidden, T, batch, repeats, with_braintrace, chunk, log)


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


def _mem_etprop(wl, algo, hidden, batch, xs, ys, chunk_size=None, **opts) -> dict:
    """The learner's public ``etrace_grad`` under `brainstate.transform.jit` (which turns its
    reads and writes of parameters, hidden states and traces into arguments and outputs),
    lowered and compiled; the same wrapping as braintrace's driver gets."""
    import brainstate

    learner = _etprop_learner(wl, algo, hidden, batch, xs[0], **opts)
    kw = {} if algo is etprop.BPTT else {"chunk_size": chunk_size}
    f = brainstate.transform.jit(lambda xs, ys: learner.etrace_grad(xs, ys, wl.step_loss, **kw))
    t0 = time.perf_counter()
    compiled = f.lower(xs, ys).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def _mem_forward(wl, hidden, batch, xs, ys) -> dict:
    f, args = wl.forward_fn(hidden, batch, xs, ys)
    t0 = time.perf_counter()
    compiled = f.lower(*args).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def _mem_braintrace(wl, algo_name, hidden, batch, xs, ys, **opts) -> dict:
    f, args = _braintrace_fn(wl, algo_name, hidden, batch, xs, ys, **opts)
    t0 = time.perf_counter()
    compiled = f.lower(*args).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def _linfit(Ts, ys):
    """Least-squares ``(intercept, slope)`` of ``ys`` against ``Ts`` (slope 0 for one point)."""
    if len(Ts) < 2:
        return float(ys[0]), 0.0
    slope, icpt = np.polyfit(np.asarray(Ts, np.float64), np.asarray(ys, np.float64), 1)
    return float(icpt), float(slope)


def memory_scaling(res: dict) -> dict:
    """Per contender and memory kind (``temp``, ``total``): the least-squares fit over T
    (``bytes_per_step``, ``intercept_bytes``) and, for each learner other than BPTT, where
    BPTT's memory exceeds it: ``first_measured_T`` (the smallest measured T with BPTT larger;
    None if none) and ``crossover_T_fit`` (intersection of the two fitted lines; None if
    BPTT's line never overtakes)."""
    Ts = [e["T"] for e in res["rows"]]
    names = list(res["rows"][0]["contenders"])
    out = {}
    for key, kind in (("temp_size_in_bytes", "temp"), ("total_bytes", "total")):
        vals = {n: [e["contenders"][n].get(key, 0) for e in res["rows"]] for n in names}
        fits = {n: _linfit(Ts, v) for n, v in vals.items()}
        d = {}
        for n in names:
            icpt, slope = fits[n]
            d[n] = {"bytes_per_step": slope, "intercept_bytes": icpt}
            if n in (BPTT, FORWARD) or BPTT not in vals:
                continue
            first = next((T for T, b, l in zip(Ts, vals[BPTT], vals[n]) if b > l), None)
            bi, bs_ = fits[BPTT]
            cross = None
            if bs_ > slope:
                cross = max((icpt - bi) / (bs_ - slope), 0.0)
            d[n]["bptt_exceeds_first_measured_T"] = first
            d[n]["crossover_T_fit"] = cross
        out[kind] = d
    return out


def run_memory(hidden: int, batch: int, Ts, with_braintrace: bool = False, chunk=None, log=print,
               workload: str = "lif") -> dict:
    wl = WORKLOADS[workload]
    rows = []
    for T in Ts:
        xs, ys = wl.data(T, batch)
        c = {FORWARD: _mem_forward(wl, hidden, batch, xs, ys),
             BPTT: _mem_etprop(wl, etprop.BPTT, hidden, batch, xs, ys),
             DRTRL: _mem_etprop(wl, etprop.D_RTRL, hidden, batch, xs, ys, chunk_size=chunk),
             ESDRTRL: _mem_etprop(wl, etprop.ES_D_RTRL, hidden, batch, xs, ys, chunk_size=chunk,
                                  decay_or_rank=ES_DECAY)}
        if with_braintrace:
            c[BT_DRTRL] = _mem_braintrace(wl, "D_RTRL", hidden, batch, xs, ys)
            c[BT_ES] = _mem_braintrace(wl, "ES_D_RTRL", hidden, batch, xs, ys, decay_or_rank=ES_DECAY)
        log(f"  [memory] T={T}: " + ", ".join(f"{k} {v.get('total_bytes', 0) / 2**20:.2f} MiB" for k, v in c.items()))
        rows.append({"T": T, "contenders": c})
    res = {"workload": wl.name, "hidden": hidden, "n_in": wl.n_in, "n_out": wl.n_out, "batch": batch,
           "chunk": chunk, "chunk_effective": chunk or etprop.OnlineAlgorithm.default_chunk, "rows": rows}
    res["scaling"] = memory_scaling(res)
    return res


# ---------------------------------------------------------------------------------------------
# tables


def _table(header, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def suite_table(res: dict) -> str:
    chunk = res.get("chunk")
    chunk_txt = f"{chunk}" if chunk is not None else f"default ({etprop.OnlineAlgorithm.default_chunk})"
    head = (f"{res['workload']}: hidden={res['hidden']}, T={res['T']}, batch={res['batch']}, "
            f"repeats={res['repeats']}, chunk={chunk_txt} "
            f"(1-min load average before/after: {res['loadavg_1min_before_after']})")
    header = ["contender", "first call s", "median s/seq", "ms/step", "x forward", "x BPTT",
              "grad rel err vs BPTT", "grad cosine vs BPTT"]
    err = lambda r: f"{r['grad_rel_err_vs_bptt']:.1e}" if "grad_rel_err_vs_bptt" in r else "-"
    cos = lambda r: f"{r['grad_cosine_vs_bptt']:.6f}" if "grad_cosine_vs_bptt" in r else "-"
    rows = [[name, f"{r['first_call_s']:.2f}", f"{r['median_s']:.4f}", f"{r['per_step_ms']:.3f}",
             f"{r['vs_forward']:.2f}", f"{r['vs_bptt']:.2f}", err(r), cos(r)] for name, r in res["contenders"].items()]
    return head + "\n" + _table(header, rows)


lif_table = suite_table


def memory_table(res: dict) -> str:
    """Two tables (rows T, columns contenders): XLA temp buffers, and the total
    temp + arguments + outputs - aliased (arguments include the inputs xs, ys, the
    parameters, the hidden states and, for the trace learners, the traces)."""
    names = list(res["rows"][0]["contenders"])
    mib = lambda b: f"{b / 2**20:.2f}"
    out = []
    for key, what in (("temp_size_in_bytes", "temp buffers"),
                      ("total_bytes", "total = temp + arguments + outputs - aliased")):
        head = (f"memory, {what} (MiB, XLA compiled memory_analysis): {res['workload']}, hidden={res['hidden']}, "
                f"batch={res['batch']}, etprop chunk={res.get('chunk_effective')}")
        rows = [[e["T"]] + [mib(e["contenders"][n].get(key, 0)) for n in names] for e in res["rows"]]
        out.append(head + "\n" + _table(["T"] + names, rows))
    sc = res.get("scaling")
    if sc:
        header = ["contender", "temp B/step", "total B/step", "BPTT temp > it from T", "BPTT total > it from T"]
        fmt_T = lambda d: ("-" if "crossover_T_fit" not in d else
                           f"{'never' if d['crossover_T_fit'] is None else round(d['crossover_T_fit'])} (fit); "
                           f"measured {d['bptt_exceeds_first_measured_T'] or 'none'}")
        rows = [[n, f"{round(sc['temp'][n]['bytes_per_step']):d}", f"{round(sc['total'][n]['bytes_per_step']):d}",
                 fmt_T(sc["temp"][n]), fmt_T(sc["total"][n])] for n in names]
        Ts = [e["T"] for e in res["rows"]]
        out.append(f"memory growth per step (least-squares slope over T={Ts}) and crossover T where BPTT's memory "
                   f"exceeds the learner's (intersection of the fitted lines; first measured T with BPTT larger)\n"
                   + _table(header, rows))
    return "\n\n".join(out)


def machine_text(m: dict) -> str:
    v = m["versions"]
    g = m.get("git") or {}
    tree = (f"\netprop tree: commit {g.get('commit')} (etprop/ tree {g.get('etprop_tree')})"
            + (f", uncommitted etprop/ changes (diff sha1 "
            f"{g['etprop_diff_sha1']})" if g.get("etprop_dirty") else ", clean")) if g else ""
    return (f"date: {m['date']}\nmachine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}, "
            f"jax backend {m['jax_backend']}\nversions: " + ", ".join(f"{k} {x}" for k, x in v.items()) + tree)


# ---------------------------------------------------------------------------------------------
# entry point


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=("lif", "gru", "memory", "all"), default="lif")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--T", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chunk", type=int, default=None,
                   help="chunk_size for etprop's D-RTRL / ES-D-RTRL (default: etprop's default, "
                        f"{etprop.OnlineAlgorithm.default_chunk})")
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
    result = {"machine": info, "args": vars(args), "braintrace": bt_msg, "lif": [], "gru": [], "memory": None}
    for suite in ("lif", "gru"):
        if args.suite not in (suite, "all"):
            continue
        for h in args.hidden:
            log(f"\n== {suite} hidden={h} T={args.T} batch={args.batch} chunk={args.chunk} ==")
            res = run_suite(WORKLOADS[suite], h, args.T, args.batch, args.repeats, bt_ok, chunk=args.chunk, log=log)
            result[suite].append(res)
            log(suite_table(res))
    if args.suite in ("memory", "all"):
        log(f"\n== memory hidden={args.mem_hidden} batch={args.batch} T={args.mem_T} chunk={args.chunk} ==")
        res = run_memory(args.mem_hidden, args.batch, args.mem_T, with_braintrace=bt_ok, chunk=args.chunk, log=log)
        result["memory"] = res
        log(memory_table(res))
    result["git_after"] = _git_state()  # to detect etprop/ changing during the run
    code = lambda g: {k: v for k, v in (g or {}).items() if k != "commit"}
    if code(result["git_after"]) != code(info.get("git")):
        log(f"\nnote: etprop tree changed during the run: {info.get('git')} -> {result['git_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        log(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
