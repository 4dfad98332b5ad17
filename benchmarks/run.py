"""Speed and memory benchmarks of etprop's learners, side by side with BPTT and braintrace.

Usage::

    python -m benchmarks.run [--suite lif|gru|memory|deep|scale|all ...] [--device cpu|gpu] [--out FILE] [--quick]
                             [--hidden N ...] [--T N ...] [--batch N] [--repeats N] [--chunk K]
                             [--contenders NAME ...] [--no-braintrace] [--no-equality] [--no-mem]
                             [--bt-drtrl-max-hidden N] [--max-seq-s S] [--budget-s S]

Suites (sizes as in issue 6; ``--hidden`` / ``--T`` / ``--batch`` override them, ``--quick``
shrinks everything for the smoke test):

``lif``     Linear + LIF (100 Bernoulli inputs -> ``hidden`` LIF neurons -> readout of 10),
            batch 16, T = 500, hidden 128 / 512 / 2048.
``gru``     GRU copying-task network (10 one-hot symbols -> GRU -> 10 classes, target: the
            symbol shown 3 steps earlier), hidden 256, batch 32, T = 100 / 400 / 1600.
``memory``  peak memory of the full-sequence gradient for T = 100 ... 3200 (lif network,
            hidden 128, batch 16): BPTT, both online learners, the forward scan and braintrace;
            growth per step, flatness and the crossover T where BPTT's memory exceeds each
            online learner's.
``deep``    3 feed-forward layers of 512 LIF units, batch 128, T = 1000. GPU only (refused on
            CPU unless ``--quick``).
``scale``   sparse recurrent LIF (fan-in 76), 8,192 / 32,768 / 131,072 neurons: see
            `benchmarks.scale` (not part of ``all``).

Contenders (per configuration): ``forward-only`` (the same model's plain step and loss scanned,
no gradient), ``trace-update floor`` (a bare jitted scan doing only the per-step D-RTRL trace
update ``e <- D e + u (x) Df`` on arrays of the traces' size: the bandwidth floor of per-step
D-RTRL), etprop's ``BPTT``, ``D-RTRL`` (chunked, accumulated over the sequence),
``D-RTRL per-step`` (``chunk_size=1``), ``ES-D-RTRL`` (``decay_or_rank=0.9``), and braintrace's
``D-RTRL`` / ``ES-D-RTRL`` on the same model class (`benchmarks.models`: only the library passed
in and the compile call differ).

Method: every contender is built and run once first (*first call* = trace + compile + run; the
XLA compile of the same function is also timed separately via ``lower().compile()``, which
gives the memory analysis), then run once more as a warm-up, then steady-state sequences are
timed with ``block_until_ready`` in interleaved rounds (A B C ... A B C ...) so that drift
cancels; reported: the median, the ratios to the forward-only floor, to BPTT and to
braintrace's same rule. Peak memory: XLA's compiled memory analysis (temp + arguments + outputs
- aliased) everywhere and, on GPU, the allocator's ``peak_bytes_in_use`` measured in a fresh
process per contender (the peak cannot be reset within a process). Before timing, an equality
check runs etprop and braintrace on a small float64 instance of the workload and compares
gradient names, shapes and values. Goals are printed with PASS / MISS next to the measured value.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

import etprop
from benchmarks.es_floor import es_floor_fn
from benchmarks.models import make_model, mse, xent

N_IN = 100  # lif / deep inputs
N_OUT = 10
N_SYM = 10  # gru: one-hot input symbols = output classes
GRU_DELAY = 3  # gru: the target is the symbol shown this many steps earlier
ES_DECAY = 0.9

FORWARD = "forward-only"
FLOOR = "trace-update floor"
ES_FLOOR = "ES-D-RTRL floor"  # benchmarks/es_floor.py: ES-D-RTRL's per-step work by hand
BPTT = "BPTT"
DRTRL = "D-RTRL"
DRTRL_STEP = "D-RTRL per-step"
ESDRTRL = "ES-D-RTRL"
BT_DRTRL = "braintrace D-RTRL"
BT_ES = "braintrace ES-D-RTRL"
DRTRL_POST = "D-RTRL post-signal"  # learning_signal='post' (braintrace's convention)
ESDRTRL_POST = "ES-D-RTRL post-signal"
BT_OF = {DRTRL: BT_DRTRL, DRTRL_STEP: BT_DRTRL, ESDRTRL: BT_ES, DRTRL_POST: BT_DRTRL, ESDRTRL_POST: BT_ES}  # etprop row -> braintrace's same rule
ONLINE = (DRTRL, ESDRTRL, BT_DRTRL, BT_ES)
MiB = 2 ** 20

SUITES = {  # issue 6 sizes
    "lif": {"workload": "lif", "hidden": [128, 512, 2048], "T": [500], "batch": 16},
    "gru": {"workload": "gru", "hidden": [256], "T": [100, 400, 1600], "batch": 32},
    "memory": {"workload": "lif", "hidden": [128], "T": [100, 200, 400, 800, 1600, 3200], "batch": 16},
    "deep": {"workload": "deep", "hidden": [512], "T": [1000], "batch": 128},
    "scale": {"workload": "scale", "hidden": [8192, 32768, 131072], "T": None, "batch": None},  # benchmarks/scale.py
}
QUICK = {  # the smoke test's sizes
    "lif": {"hidden": [16], "T": [16], "batch": 2},
    "gru": {"hidden": [8], "T": [8], "batch": 2},
    "memory": {"hidden": [8], "T": [32, 64, 128], "batch": 2},  # multiples of the chunk (16)
    "deep": {"hidden": [8], "T": [8], "batch": 2},
    "scale": {"hidden": [128], "T": [8]},
}
SUITE_ORDER = ("lif", "gru", "memory", "deep")


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
        git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True,
                                        timeout=10).stdout
        diff = git("diff", "HEAD", "--", "etprop")
        import hashlib
        return {"commit": git("rev-parse", "--short", "HEAD").strip(),
                "etprop_tree": git("rev-parse", "--short", "HEAD:etprop").strip(),
                "etprop_dirty": bool(diff.strip()),
                "etprop_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff.strip() else None}
    except Exception:  # noqa: BLE001 - informational only
        return {}


def machine_info(device) -> dict:
    return {
        "git": _git_state(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_platform": device.platform,
        "device_kind": getattr(device, "device_kind", "unknown"),
        "versions": {m: _version(m) for m in ("jax", "jaxlib", "etprop", "brainstate", "brainunit", "braintrace")},
    }


def header_line(m: dict) -> str:
    """One line naming date, machine and versions: printed above every table."""
    v = m["versions"]
    where = (f"{m['cpu_model']}, {m['cpu_count']} cores" if m["device_platform"] == "cpu"
             else f"{m['device_kind']} ({m['device_platform']}); host {m['cpu_model']}, {m['cpu_count']} cores")
    g = m.get("git") or {}
    code = f"; etprop commit {g.get('commit')}{' +uncommitted etprop/' if g.get('etprop_dirty') else ''}" if g else ""
    return (f"_{m['date']}; {where}; jax {v['jax']}, etprop {v['etprop']}, braintrace {v['braintrace']}"
            f"{code}_")


def braintrace_available() -> tuple[bool, str]:
    try:
        importlib.import_module("braintrace")
    except Exception as e:  # noqa: BLE001
        return False, f"braintrace not available (import failed: {type(e).__name__}: {e}); its rows are skipped"
    return True, "braintrace available"


# ---------------------------------------------------------------------------------------------
# workloads


def lif_data(T: int, batch: int, n_in: int = N_IN, seed: int = 1):
    """Bernoulli input spikes (rate 0.2, amplitude 2) and Gaussian targets (numpy's generator:
    no XLA compile per new shape)."""
    rng = np.random.default_rng(seed)
    xs = jnp.asarray((rng.random((T, batch, n_in)) < 0.2) * 2.0, jnp.float32)
    ys = jnp.asarray(rng.standard_normal((T, batch, N_OUT)), jnp.float32)
    return xs, ys


def gru_data(T: int, batch: int, seed: int = 1):
    """One-hot random symbols ``(T, batch, 10)`` and integer labels ``(T, batch)``: the symbol
    shown ``GRU_DELAY`` steps earlier (the first symbol for the first steps)."""
    sym = np.random.default_rng(seed).integers(0, N_SYM, (T, batch))
    xs = jnp.asarray(np.eye(N_SYM, dtype=np.float32)[sym])
    ys = jnp.asarray(sym[np.maximum(np.arange(T) - GRU_DELAY, 0)], jnp.int32)
    return xs, ys


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # model class: "lif" or "gru"
    n_in: int
    n_out: int
    n_layers: int
    step_loss: Callable  # per-sample (out, target) -> scalar
    diagonal: bool  # D-RTRL exact: etprop and braintrace must agree on values
    post_signal: bool = False  # learning_signal='post' applies: its rows run by default

    def data(self, T, batch):
        return gru_data(T, batch) if self.kind == "gru" else lif_data(T, batch, self.n_in)

    def model(self, lib, hidden, batch=None, dtype=jnp.float32):
        return make_model(self.kind, self.n_in, hidden, self.n_out, lib=lib, batch_size=batch, dtype=dtype,
                          n_layers=self.n_layers)

    def trace_shapes(self, hidden):
        """``(I, H)`` of every weight D-RTRL keeps a per-parameter trace for (S = 1 state per unit)."""
        if self.kind == "gru":
            return [(self.n_in + hidden, hidden)] * 3
        return [(self.n_in, hidden)] + [(hidden, hidden)] * (self.n_layers - 1)


WORKLOADS = {
    "lif": Workload("lif", "lif", N_IN, N_OUT, 1, mse, diagonal=True, post_signal=True),
    "gru": Workload("gru", "gru", N_SYM, N_SYM, 1, xent, diagonal=False),
    "deep": Workload("deep", "lif", N_IN, N_OUT, 3, mse, diagonal=False),
}


# ---------------------------------------------------------------------------------------------
# contenders


def _brainstate_jit(f):
    import brainstate
    return brainstate.transform.jit(f)


def _forward_fn(wl, hidden, batch, xs, ys):
    """``(jitted f, args)``: the model's plain step (``etprop.matmul`` outside online learning is
    its plain op) and the batch-mean step loss scanned over the sequence; no gradient."""
    import brainstate
    model = wl.model(etprop, hidden, batch)

    def fwd(xs, ys):
        def body(inp):
            x, y = inp
            return jnp.mean(jax.vmap(wl.step_loss)(model.update(x), y))

        return jnp.sum(brainstate.transform.for_loop(body, (xs, ys)))

    return _brainstate_jit(fwd), (xs, ys)


def trace_floor_fn(shapes, B: int, T: int, S: int = 1, seed: int = 0):
    """``(jitted f, args)``: a bare scan doing only the per-step D-RTRL trace update
    ``e_a <- sum_s D_as e_s + u (x) Df_a`` for one ``(B, I, H)`` trace per state and weight shape
    in ``shapes``; the per-step inputs ``u (T, B, I)``, ``D (T, S, S, B, 1, H)`` and
    ``Df (T, S, B, 1, H)`` are precomputed random arrays. The bandwidth floor of per-step D-RTRL."""
    rng = np.random.default_rng(seed)
    u = lambda *shape: jnp.asarray(rng.random(shape, np.float32))
    args = [(u(T, B, I), u(T, S, S, B, 1, H), u(T, S, B, 1, H)) for I, H in shapes]

    @jax.jit
    def floor(args):
        def body(es, inp):
            new = []
            for e, (u, d, df) in zip(es, inp):
                uu = u[:, :, None]
                new.append(tuple(sum(d[a, s] * e[s] for s in range(S)) + uu * df[a] for a in range(S)))
            return new, None

        e0 = [tuple(jnp.zeros((B, I, H)) for _ in range(S)) for I, H in shapes]
        return jax.lax.scan(body, e0, args)[0]

    return floor, (args,)


def _etprop_learner(wl, algo, hidden, batch, xs, **opts):
    return etprop.compile(wl.model(etprop, hidden, batch), algo, xs[0], batch_size=batch, **opts)


def _etprop_fn(wl, algo, hidden, batch, xs, ys, chunk_size=None, jit=False, **opts):
    """``(f, args)``: the learner's public ``etrace_grad`` over the sequence (``jit``: under
    `brainstate.transform.jit`, for ``lower().compile()``, the wrapping braintrace's driver gets)."""
    learner = _etprop_learner(wl, algo, hidden, batch, xs, **opts)
    kw = {} if algo is etprop.BPTT else {"closed_form_chunk": chunk_size}
    f = lambda xs, ys: learner.etrace_grad(xs, ys, wl.step_loss, **kw)
    return (_brainstate_jit(f) if jit else f), (xs, ys)


def _braintrace_fn(wl, algo_name, hidden, batch, xs, ys, dtype=jnp.float32, **opts):
    """``(jitted f, args)`` for braintrace's learner on the same model class; ``f(*args)`` runs
    its ``etrace_grad`` driver (step loss averaged over the batch, ``reduction='sum'``: the
    objective etprop's learners use)."""
    import braintrace

    learner = braintrace.compile(wl.model(braintrace, hidden, None, dtype), getattr(braintrace, algo_name), xs[0],
                                 batch_size=batch, **opts)

    def step_loss(x, y):
        return jnp.mean(jax.vmap(wl.step_loss)(learner(x), y))

    def grad_seq(xs, ys):
        return learner.etrace_grad(xs, ys, step_fn=step_loss, reduction="sum", return_value=True,
                                   loss_output="scalar")

    return _brainstate_jit(grad_seq), (xs, ys)


@dataclasses.dataclass
class Contender:
    """``build(jit)`` returns ``(f, args)``; ``f(*args)`` runs one full sequence (``jit=True``:
    ``f`` has ``lower``). ``grads`` says whether the result's first element is a gradient dict."""
    name: str
    build: Callable
    grads: bool = True
    lib: str = "etprop"


def contenders(wl: Workload, hidden, batch, xs, ys, *, with_braintrace=True, with_bt_drtrl=True, chunk=None,
               with_floor=True, names=None):
    T = xs.shape[0]
    cs = [Contender(FORWARD, lambda jit=False: _forward_fn(wl, hidden, batch, xs, ys), grads=False, lib="-")]
    if with_floor:
        cs.append(Contender(FLOOR, lambda jit=False: trace_floor_fn(wl.trace_shapes(hidden), batch, T), grads=False,
                            lib="-"))
    if with_floor and (wl.kind == "gru" or (wl.kind == "lif" and wl.n_layers == 1)):
        cs.append(Contender(ES_FLOOR, lambda jit=False: es_floor_fn(wl, hidden, batch, xs, ys), grads=False, lib="-"))
    cs += [
        Contender(BPTT, lambda jit=False: _etprop_fn(wl, etprop.BPTT, hidden, batch, xs, ys, jit=jit)),
        Contender(DRTRL, lambda jit=False: _etprop_fn(wl, etprop.D_RTRL, hidden, batch, xs, ys, chunk, jit=jit)),
        Contender(DRTRL_STEP, lambda jit=False: _etprop_fn(wl, etprop.D_RTRL, hidden, batch, xs, ys, 1, jit=jit)),
        Contender(ESDRTRL, lambda jit=False: _etprop_fn(wl, etprop.ES_D_RTRL, hidden, batch, xs, ys, chunk, jit=jit,
                                                        decay_or_rank=ES_DECAY)),
        Contender(DRTRL_POST, lambda jit=False: _etprop_fn(wl, etprop.D_RTRL, hidden, batch, xs, ys, jit=jit,
                                                           learning_signal="post")),
        Contender(ESDRTRL_POST, lambda jit=False: _etprop_fn(wl, etprop.ES_D_RTRL, hidden, batch, xs, ys, jit=jit,
                                                             decay_or_rank=ES_DECAY, learning_signal="post")),
    ]
    if with_braintrace and with_bt_drtrl:
        cs.append(Contender(BT_DRTRL, lambda jit=False: _braintrace_fn(wl, "D_RTRL", hidden, batch, xs, ys),
                            lib="braintrace"))
    if with_braintrace:
        cs.append(Contender(BT_ES, lambda jit=False: _braintrace_fn(wl, "ES_D_RTRL", hidden, batch, xs, ys,
                                                                    decay_or_rank=ES_DECAY), lib="braintrace"))
    if names is not None:
        cs = [c for c in cs if c.name in names]
    elif not getattr(wl, "post_signal", False):  # the post-signal rows where the workload allows them
        cs = [c for c in cs if c.name not in (DRTRL_POST, ESDRTRL_POST)]
    return cs


# ---------------------------------------------------------------------------------------------
# gradients: names, comparisons


def _leafname(path) -> str:
    """A gradient dict key path as a dotted name; braintrace keys are tuples (``('layers', 0)``),
    etprop's dotted strings (``'layers.0'``): both map to the same name."""
    parts = []
    for p in path:
        k = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        parts.extend(str(x) for x in (k if isinstance(k, tuple) else (k,)))
    return ".".join(parts)


def grad_leaves(g) -> dict:
    """``{dotted leaf name: float64 numpy array}`` of a gradient pytree."""
    return {_leafname(p): np.asarray(v, np.float64) for p, v in jax.tree_util.tree_leaves_with_path(g)}


def _rel(a, b) -> float:
    """``max|a - b| / max|b|`` (0 if both are zero)."""
    den = float(np.max(np.abs(b))) if b.size else 0.0
    num = float(np.max(np.abs(a - b))) if a.size else 0.0
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _cos(a: dict, b: dict) -> float:
    va = np.concatenate([a[k].ravel() for k in sorted(a)])
    vb = np.concatenate([b[k].ravel() for k in sorted(a)])
    den = np.linalg.norm(va) * np.linalg.norm(vb)
    return float(va @ vb / den) if den > 0 else float("nan")


def compare_grads(g: dict, ref: dict) -> dict:
    """Names, shapes and values of two leaf dicts (see `grad_leaves`)."""
    same_names = sorted(g) == sorted(ref)
    shapes = {k: (list(g[k].shape), list(ref[k].shape)) for k in ref if k in g}
    same_shapes = same_names and all(a == b for a, b in shapes.values())
    out = {"same_names": same_names, "same_shapes": same_shapes,
           "names": sorted(ref), "other_names": sorted(g)}
    if same_shapes:
        out["rel_diff"] = {k: _rel(g[k], ref[k]) for k in sorted(ref)}
        out["max_rel_diff"] = max(out["rel_diff"].values())
        out["cosine"] = _cos(g, ref)
        out["zero_leaves"] = [k for k in sorted(g) if not np.any(g[k]) and np.any(ref[k])]
    return out


# ---------------------------------------------------------------------------------------------
# equality check (before timing)


EQ_SIZES = {"lif": (16, 32, 2), "gru": (8, 16, 2), "deep": (8, 16, 2)}  # hidden, T, batch
EQ_TOL = 1e-6


def equality_check(wl: Workload, with_braintrace: bool, log=print) -> dict:
    """etprop vs braintrace on a small float64 instance of ``wl``: for each rule, the gradient
    names and shapes must be the same; values are compared leaf by leaf (max rel diff; ``equal``
    when every leaf is within ``EQ_TOL``). Values are *required* to match only for D-RTRL on a
    diagonal workload (``lif``), where D-RTRL is exact; BPTT's gradient is the reference shown."""
    hidden, T, batch = EQ_SIZES[wl.name]
    res = {"workload": wl.name, "dtype": "float64", "hidden": hidden, "T": T, "batch": batch, "tol": EQ_TOL,
           "values_required": wl.diagonal, "rules": {}}
    if not with_braintrace:
        res["skipped"] = "braintrace not available"
        log(f"  [equality] {wl.name}: skipped (braintrace not available)")
        return res
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xs, ys = wl.data(T, batch)
        xs = xs.astype(jnp.float64)
        ys = ys.astype(jnp.float64) if jnp.issubdtype(ys.dtype, jnp.floating) else ys

        def et(algo, **o):
            learner = etprop.compile(wl.model(etprop, hidden, batch, jnp.float64), algo, xs[0], batch_size=batch, **o)
            return grad_leaves(learner.etrace_grad(xs, ys, wl.step_loss)[0])

        bptt = et(etprop.BPTT)
        for rule, algo, bt_name, opts in ((DRTRL, etprop.D_RTRL, "D_RTRL", {}),
                                          (ESDRTRL, etprop.ES_D_RTRL, "ES_D_RTRL", {"decay_or_rank": ES_DECAY})):
            g_et = et(algo, **opts)
            f, args = _braintrace_fn(wl, bt_name, hidden, batch, xs, ys, dtype=jnp.float64, **opts)
            g_bt = grad_leaves(f(*args)[0])
            cmp = compare_grads(g_bt, g_et)
            cmp["etprop_vs_bptt"] = compare_grads(g_et, bptt)
            cmp["braintrace_vs_bptt"] = compare_grads(g_bt, bptt)
            cmp["equal"] = bool(cmp["same_shapes"] and cmp["max_rel_diff"] <= EQ_TOL)
            rest = [v for k, v in cmp.get("rel_diff", {}).items() if k not in cmp.get("zero_leaves", [])]
            # equal on every leaf braintrace computes (it returns 0 for a plain-op readout)
            cmp["equal_where_braintrace_nonzero"] = bool(cmp["same_shapes"] and rest and max(rest) <= EQ_TOL)
            cmp["required"] = wl.diagonal and rule == DRTRL
            cmp["ok"] = cmp["same_shapes"] and (cmp["equal_where_braintrace_nonzero"] or not cmp["required"])
            res["rules"][rule] = cmp
            log(f"  [equality] {wl.name} {rule}, float64 hidden={hidden} T={T} batch={batch}: "
                + equality_text(cmp))
    return res


def equality_text(cmp: dict) -> str:
    if not cmp["same_shapes"]:
        return f"gradient names/shapes DIFFER: etprop {cmp['names']}, braintrace {cmp['other_names']}"
    per = ", ".join(f"{k} {v:.1e}" for k, v in cmp["rel_diff"].items())
    zero = f"; braintrace returns 0 for {', '.join(cmp['zero_leaves'])}" if cmp["zero_leaves"] else ""
    verdict = _values_text(cmp)
    return (f"same names and shapes; max rel diff {cmp['max_rel_diff']:.2e} ({per}){zero}: {verdict}; "
            f"cosine to BPTT: etprop {cmp['etprop_vs_bptt']['cosine']:.6f}, "
            f"braintrace {cmp['braintrace_vs_bptt']['cosine']:.6f}")


def _values_text(cmp: dict) -> str:
    if cmp["equal"]:
        return "EQUAL"
    if cmp["equal_where_braintrace_nonzero"]:
        return f"EQUAL except {', '.join(cmp['zero_leaves'])} (braintrace 0)"
    return "NOT EQUAL (required: D-RTRL is exact here)" if cmp["required"] else "not equal (approximate rule)"


def equal_work_text(eq: dict | None, rule: str) -> str:
    """The table's 'equal work' cell for an etprop rule and braintrace's same rule."""
    if not eq or rule not in eq.get("rules", {}):
        return "-"
    c = eq["rules"][rule]
    if not c["same_shapes"]:
        return "no: shapes differ"
    if c["equal"]:
        return f"yes (max rel diff {c['max_rel_diff']:.0e})"
    traced = {k: v for k, v in c["rel_diff"].items() if k not in c["zero_leaves"]}
    if c["zero_leaves"] and traced and max(traced.values()) <= EQ_TOL:
        return f"no: bt 0 for {','.join(c['zero_leaves'])}; rest equal ({max(traced.values()):.0e})"
    zero = f", bt 0 for {','.join(c['zero_leaves'])}" if c["zero_leaves"] else ""
    return f"no: max rel diff {c['max_rel_diff']:.2g}{zero}"


# ---------------------------------------------------------------------------------------------
# memory


_MEM_FIELDS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
               "generated_code_size_in_bytes")


def _mem(compiled) -> dict:
    ma = compiled.memory_analysis()
    if ma is None:
        return {"error": "memory_analysis() returned None on this backend"}
    d = {f: int(getattr(ma, f, 0) or 0) for f in _MEM_FIELDS}
    d["total_bytes"] = (d["temp_size_in_bytes"] + d["argument_size_in_bytes"] + d["output_size_in_bytes"]
                        - d["alias_size_in_bytes"])
    return d


def aot_memory(c: Contender) -> dict:
    """Trace + XLA compile of the contender's function (timed) and its compiled memory analysis."""
    f, args = c.build(jit=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = f.lower(*args).compile()
    d = _mem(compiled)
    d["compile_s"] = time.perf_counter() - t0
    return d


def _nbytes(tree) -> int:
    return int(sum(np.prod(np.shape(a)) * jnp.result_type(a).itemsize for a in jax.tree.leaves(tree)))


def probe_peak(spec: dict) -> dict:
    """Run one contender (two sequences) in this process and read the device allocator's
    ``peak_bytes_in_use``. Meant for a fresh process per contender (see `measure_peaks`);
    ``peak_bytes`` is None where the backend has no memory stats (CPU)."""
    wl = WORKLOADS[spec["workload"]]
    xs, ys = wl.data(spec["T"], spec["batch"])
    c = contenders(wl, spec["hidden"], spec["batch"], xs, ys, chunk=spec.get("chunk"), names={spec["name"]})[0]
    dev = jax.devices()[0]
    stats0 = dev.memory_stats() or {}
    f, args = c.build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jax.block_until_ready(f(*args))
        jax.block_until_ready(f(*args))
    stats = dev.memory_stats() or {}
    return {"peak_bytes": stats.get("peak_bytes_in_use"), "bytes_before": stats0.get("bytes_in_use"),
            "device": str(dev)}


def measure_peaks(specs: list[dict], procs: int, log=print) -> list[dict]:
    """`probe_peak` of each spec in its own subprocess (``procs`` at a time; each process has
    its own allocator, so running them side by side does not mix their peaks)."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def one(spec):
        p = subprocess.run([sys.executable, "-m", "benchmarks.run", "--probe-peak", json.dumps(spec)],
                           capture_output=True, text=True, env=env, cwd=root, timeout=600)
        for line in reversed(p.stdout.splitlines()):
            if line.startswith("PEAK "):
                return json.loads(line[5:])
        return {"error": f"probe failed (rc {p.returncode}): {p.stderr.strip()[-400:]}"}

    with ThreadPoolExecutor(max(1, procs)) as ex:
        out = list(ex.map(one, specs))
    for s, r in zip(specs, out):
        if "error" in r:
            log(f"  [peak] {s['name']} T={s['T']}: {r['error']}")
    return out


# ---------------------------------------------------------------------------------------------
# timing


def _timed(f, args):
    t0 = time.perf_counter()
    res = jax.block_until_ready(f(*args))
    return time.perf_counter() - t0, res


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


PROBE_T = 16


def _estimate_seq_s(wl, name, hidden, T, batch, xs, ys) -> dict:
    """Seconds per ``T``-step sequence of contender ``name``, extrapolated from a short
    ``PROBE_T``-step run (compiled, then timed once)."""
    tp = min(T, PROBE_T)
    (c,) = contenders(wl, hidden, batch, xs[:tp], ys[:tp], names={name})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f, args = c.build()
        jax.block_until_ready(f(*args))
        dt = min(_timed(f, args)[0] for _ in range(2))
    return {"probe_T": tp, "step_ms": dt / tp * 1e3, "seq_s": dt / tp * T}


def run_timing(wl: Workload, hidden: int, T: int, batch: int, *, repeats: int, with_braintrace: bool,
               bt_drtrl_max_hidden: int | None, chunk=None, budget_s: float = 60.0, with_mem: bool = True,
               equality: dict | None = None, names=None, max_seq_s: float | None = 30.0, log=print) -> dict:
    xs, ys = wl.data(T, batch)
    skipped = {}
    with_bt_drtrl = with_braintrace and (bt_drtrl_max_hidden is None or hidden <= bt_drtrl_max_hidden)
    if with_braintrace and not with_bt_drtrl:
        skipped[BT_DRTRL] = (f"skipped at hidden {hidden} > --bt-drtrl-max-hidden {bt_drtrl_max_hidden} "
                             f"(too slow on this device)")
        log(f"  [{BT_DRTRL}] {skipped[BT_DRTRL]}")
    keep = None if names is None else set(names) | {FORWARD, BPTT}
    if with_bt_drtrl and max_seq_s and T > PROBE_T and (keep is None or BT_DRTRL in keep):
        est = _estimate_seq_s(wl, BT_DRTRL, hidden, T, batch, xs, ys)
        if est["seq_s"] > max_seq_s:
            with_bt_drtrl = False
            skipped[BT_DRTRL] = (f"skipped: about {est['seq_s']:.0f} s per sequence (estimated from a "
                                 f"{est['probe_T']}-step probe, {est['step_ms']:.1f} ms/step) > --max-seq-s "
                                 f"{max_seq_s:g}")
            log(f"  [{BT_DRTRL}] {skipped[BT_DRTRL]}")
    cs = contenders(wl, hidden, batch, xs, ys, with_braintrace=with_braintrace, with_bt_drtrl=with_bt_drtrl,
                    chunk=chunk, names=keep)
    load_before = _loadavg()
    rows, runs, grads = {}, {}, {}
    for c in cs:  # build, first call (trace + compile + run), compile alone, warm-up
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            f, args = c.build()  # e.g. etprop.compile / braintrace.compile
            res = jax.block_until_ready(f(*args))
            first_s = time.perf_counter() - t0  # build + trace + compile + run
            warm_s, _ = _timed(f, args)
        runs[c.name] = (f, args)
        if c.grads:
            grads[c.name] = grad_leaves(res[0])
        row = {"lib": c.lib, "first_call_s": first_s, "warmup_s": warm_s, "times_s": []}
        if with_mem:
            row["memory"] = aot_memory(c)
            row["compile_s"] = row["memory"].get("compile_s")
        msgs = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if msgs:
            row["warnings"] = msgs
        row["repeats"] = max(1, min(repeats, int(budget_s // max(warm_s, 1e-9))))
        rows[c.name] = row
        log(f"  [{c.name}] first call {first_s:.2f} s, warm-up {warm_s:.4f} s"
            + (f", compile {row['compile_s']:.2f} s, XLA memory {row['memory'].get('total_bytes', 0) / MiB:.2f} MiB"
               if with_mem else "")
            + (f", repeats cut to {row['repeats']} (budget {budget_s:.0f} s)" if row["repeats"] < repeats else "")
            + "".join(f"\n    warning: {m}" for m in msgs[:3]))
    for _ in range(repeats):  # interleaved: A B C ... A B C ...
        for c in cs:
            r = rows[c.name]
            if len(r["times_s"]) < r["repeats"]:
                r["times_s"].append(_timed(*runs[c.name])[0])
    for r in rows.values():
        r["median_s"] = statistics.median(r["times_s"])
        r["per_step_ms"] = r["median_s"] / T * 1e3
    fwd, bptt = rows[FORWARD]["median_s"], rows[BPTT]["median_s"]
    ref = grads[BPTT]
    for name, r in rows.items():
        r["vs_forward"] = r["median_s"] / fwd
        r["vs_bptt"] = r["median_s"] / bptt
        if name in BT_OF and BT_OF[name] in rows:
            r["vs_braintrace"] = r["median_s"] / rows[BT_OF[name]]["median_s"]
        if name == DRTRL_STEP and FLOOR in rows:
            r["vs_floor"] = r["median_s"] / rows[FLOOR]["median_s"]
        if name in (ESDRTRL, ESDRTRL_POST) and ES_FLOOR in rows:
            r["vs_floor"] = r["median_s"] / rows[ES_FLOOR]["median_s"]
        if name in grads:  # each learner's first call starts from zero state: same weights, data
            cmp = compare_grads(grads[name], ref)
            r["grad_cosine_vs_bptt"] = cmp.get("cosine")
            r["grad_rel_err_vs_bptt"] = cmp.get("max_rel_diff")
            r["grad_rel_err_vs_bptt_per_leaf"] = cmp.get("rel_diff")
            r["zero_leaves"] = cmp.get("zero_leaves")
    for name in (DRTRL, ESDRTRL):  # float32, this size: etprop vs braintrace
        if name in grads and BT_OF[name] in grads:
            cmp = compare_grads(grads[BT_OF[name]], grads[name])
            rows[name]["vs_braintrace_grad"] = {k: cmp.get(k) for k in ("same_shapes", "max_rel_diff", "rel_diff")}
    return {"workload": wl.name, "hidden": hidden, "T": T, "batch": batch, "n_layers": wl.n_layers,
            "repeats": repeats, "chunk": chunk, "chunk_effective": chunk or etprop.OnlineAlgorithm.default_chunk,
            "loadavg_1min_before_after": [load_before, _loadavg()], "skipped": skipped,
            "equality": equality, "contenders": rows}


# ---------------------------------------------------------------------------------------------
# memory vs T


def run_memory(wl: Workload, hidden: int, batch: int, Ts, *, with_braintrace: bool, chunk=None,
               peak_procs: int = 0, names=None, log=print) -> dict:
    """For each T and contender, the full-sequence function's compiled memory analysis (CPU)
    or, with ``peak_procs`` (GPU), the device peak measured in fresh processes instead."""
    all_names = [FORWARD, BPTT, DRTRL, ESDRTRL] + ([BT_DRTRL, BT_ES] if with_braintrace else [])
    names = [n for n in all_names if names is None or n in names or n == BPTT]
    rows = []
    for T in Ts:
        xs, ys = wl.data(T, batch)
        cs = contenders(wl, hidden, batch, xs, ys, with_braintrace=with_braintrace, chunk=chunk,
                        with_floor=False, names=set(names))
        c = {x.name: ({} if peak_procs else aot_memory(x)) for x in cs}
        rows.append({"T": T, "input_bytes": _nbytes((xs, ys)), "contenders": c})
        if not peak_procs:
            log(f"  [memory] T={T}: " + ", ".join(f"{k} {v.get('total_bytes', 0) / MiB:.2f} MiB"
                                                  for k, v in c.items()))
    if peak_procs:
        specs = [{"workload": wl.name, "name": n, "hidden": hidden, "T": e["T"], "batch": batch, "chunk": chunk}
                 for e in rows for n in e["contenders"]]
        log(f"  [peak] measuring {len(specs)} device peaks, {peak_procs} processes at a time")
        peaks = iter(measure_peaks(specs, peak_procs, log))
        for e in rows:
            for n in e["contenders"]:
                e["contenders"][n]["peak"] = next(peaks)
    res = {"workload": wl.name, "hidden": hidden, "batch": batch, "chunk": chunk,
           "chunk_effective": chunk or etprop.OnlineAlgorithm.default_chunk, "rows": rows,
           "metric": "peak_bytes" if peak_procs else "total_bytes"}
    res["scaling"] = memory_scaling(res)
    return res


def _mem_value(entry: dict, metric: str):
    if metric == "peak_bytes":
        return (entry.get("peak") or {}).get("peak_bytes")
    return entry.get("total_bytes")


def _linfit(Ts, ys):
    if len(Ts) < 2:
        return float(ys[0]), 0.0
    slope, icpt = np.polyfit(np.asarray(Ts, np.float64), np.asarray(ys, np.float64), 1)
    return float(icpt), float(slope)


def memory_scaling(res: dict) -> dict:
    """Per contender, on the memory beyond the input and target sequences (``metric`` minus
    ``input_bytes``, which every contender holds): the values, least-squares bytes per step,
    growth (last / first), ``flat`` (grows < 25 % over the T range) and ``linear`` (not flat,
    positive slope, least-squares R^2 >= 0.95); for the online learners, where BPTT's
    memory exceeds theirs: ``first_measured_T`` and ``crossover_T_fit`` (intersection of the
    fitted lines)."""
    Ts = [e["T"] for e in res["rows"]]
    names = list(res["rows"][0]["contenders"])
    metric = res["metric"]
    vals = {}
    for n in names:
        v = [_mem_value(e["contenders"][n], metric) for e in res["rows"]]
        if all(x is not None for x in v):
            vals[n] = [x - e["input_bytes"] for x, e in zip(v, res["rows"])]
    out = {"metric": metric, "Ts": Ts, "contenders": {}}
    for n, v in vals.items():
        icpt, slope = _linfit(Ts, v)
        growth = v[-1] / v[0] if v[0] > 0 else float("inf")
        fit = icpt + slope * np.asarray(Ts, np.float64)
        ss = float(np.sum((np.asarray(v, np.float64) - np.mean(v)) ** 2))
        r2 = 1.0 - float(np.sum((np.asarray(v, np.float64) - fit) ** 2)) / ss if ss > 0 else 0.0
        d = {"bytes_beyond_inputs": v, "bytes_per_step": slope, "intercept_bytes": icpt, "growth": growth,
             "r2": r2, "flat": growth < 1.25, "linear": slope > 0 and growth >= 1.25 and r2 >= 0.95}
        if n in ONLINE and BPTT in vals:
            d["first_measured_T"] = next((T for T, b, x in zip(Ts, vals[BPTT], v) if b > x), None)
            bi, bs_ = _linfit(Ts, vals[BPTT])
            d["crossover_T_fit"] = max((icpt - bi) / (bs_ - slope), 0.0) if bs_ > slope else None
        out["contenders"][n] = d
    return out


# ---------------------------------------------------------------------------------------------
# goals


def _verdict(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def timing_goals(res: dict, gpu: bool) -> list[dict]:
    c = res["contenders"]
    where = f"{res['workload']} h={res['hidden']} T={res['T']} B={res['batch']}"
    goals = []

    def add(goal, value, limit, fmt="{:.2f}", less=True, note=""):
        ok = None if value is None else (value <= limit if less else value >= limit)
        goals.append({"where": where, "goal": goal, "measured": None if value is None else fmt.format(value),
                      "value": value, "verdict": _verdict(ok), "note": note})

    get = lambda name, key: c.get(name, {}).get(key)
    add("ES-D-RTRL <= 2x forward-only", get(ESDRTRL, "vs_forward"), 2.0)
    add("ES-D-RTRL <= 1x BPTT", get(ESDRTRL, "vs_bptt"), 1.0)
    add("ES-D-RTRL <= 0.8x braintrace ES-D-RTRL", get(ESDRTRL, "vs_braintrace"), 0.8)
    add("D-RTRL (sequence) <= 3x BPTT", get(DRTRL, "vs_bptt"), 3.0)
    if res["hidden"] == 512:
        add("D-RTRL <= 0.1x braintrace D-RTRL (hidden 512)", get(DRTRL, "vs_braintrace"), 0.1, "{:.3f}",
            note=res["skipped"].get(BT_DRTRL, ""))
    add("D-RTRL per-step <= 1.5x trace-update floor", get(DRTRL_STEP, "vs_floor"), 1.5)
    for name in (ESDRTRL, ESDRTRL_POST):  # issue 14, item 4
        if get(name, "vs_floor") is not None:
            add(f"{name} <= 1.3x ES-D-RTRL floor", get(name, "vs_floor"), 1.3)
            add(f"{name} < braintrace ES-D-RTRL", get(name, "vs_braintrace"), 1.0, "{:.3f}")
    if gpu:
        add("GPU: etprop / braintrace D-RTRL < 1", get(DRTRL, "vs_braintrace"), 1.0, "{:.3f}")
        add("GPU: etprop / braintrace ES-D-RTRL < 1", get(ESDRTRL, "vs_braintrace"), 1.0, "{:.3f}")
    for name in (DRTRL, ESDRTRL):
        et, bt = get(name, "grad_cosine_vs_bptt"), get(BT_OF[name], "grad_cosine_vs_bptt")
        goals.append({"where": where, "goal": f"cosine to BPTT, {name}: etprop >= braintrace",
                      "measured": "-" if et is None or bt is None else f"{et:.6f} vs {bt:.6f}",
                      "value": None if et is None or bt is None else et - bt,
                      "verdict": _verdict(None if et is None or bt is None else et >= bt - 1e-9), "note": ""})
    return goals


def memory_goals(res: dict) -> list[dict]:
    sc = res["scaling"]["contenders"]
    Ts = res["scaling"]["Ts"]
    where = f"memory {res['workload']} h={res['hidden']} B={res['batch']} T={Ts[0]}..{Ts[-1]} ({res['metric']})"
    goals = []
    for n in (DRTRL, ESDRTRL, BT_DRTRL, BT_ES):
        if n in sc:
            goals.append({"where": where, "goal": f"{n} memory flat in T (growth < 1.25x)",
                          "measured": f"{sc[n]['growth']:.2f}x", "value": sc[n]["growth"],
                          "verdict": _verdict(sc[n]["flat"]), "note": "beyond the input/target sequences"})
    if BPTT in sc:
        goals.append({"where": where, "goal": "BPTT memory linear in T",
                      "measured": f"{sc[BPTT]['growth']:.2f}x over T x{Ts[-1] / Ts[0]:.0f},"
                                  f" {sc[BPTT]['bytes_per_step']:.0f} B/step",
                      "value": sc[BPTT]["growth"], "verdict": _verdict(sc[BPTT]["linear"]), "note": ""})
    for n in (DRTRL, ESDRTRL, BT_DRTRL, BT_ES):
        if n in sc and "first_measured_T" in sc[n]:
            fit = sc[n]["crossover_T_fit"]
            goals.append({"where": where, "goal": f"crossover T (BPTT > {n}) reported",
                          "measured": f"first measured {sc[n]['first_measured_T']}, fit "
                                      f"{'never' if fit is None else round(fit)}",
                          "value": sc[n]["first_measured_T"], "verdict": "reported", "note": ""})
    return goals


# ---------------------------------------------------------------------------------------------
# tables


def _table(header, rows) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def _f(x, fmt):
    return "-" if x is None else fmt.format(x)


def _div(x, d):
    return None if x is None else x / d


def timing_table(res: dict, head: str) -> str:
    title = (f"**{res['workload']}**: hidden={res['hidden']}" + (f" x {res['n_layers']} layers" if res["n_layers"] > 1
                                                                  else "")
             + f", T={res['T']}, batch={res['batch']}, etprop chunk={res['chunk_effective']}, "
             f"1-min load before/after {res['loadavg_1min_before_after']}")
    header = ["contender", "repeats", "compile s", "first call s", "median s/seq", "ms/step", "x forward", "x BPTT",
              "x braintrace", "XLA mem MiB", "grad cos vs BPTT", "equal work (vs braintrace)"]
    rows = []
    for name, r in res["contenders"].items():
        eq = equal_work_text(res.get("equality"), name if name in (DRTRL, ESDRTRL) else
                             {BT_DRTRL: DRTRL, BT_ES: ESDRTRL}.get(name, ""))
        if name == DRTRL_STEP or (name == ESDRTRL_POST and r.get("vs_floor") is not None):
            eq = "x floor " + _f(r.get("vs_floor"), "{:.2f}")
        elif name == ESDRTRL and r.get("vs_floor") is not None:
            eq = (eq + "; " if eq and eq != "-" else "") + "x floor " + _f(r.get("vs_floor"), "{:.2f}")
        rows.append([name, len(r["times_s"]), _f(r.get("compile_s"), "{:.2f}"), f"{r['first_call_s']:.2f}",
                     f"{r['median_s']:.4f}", f"{r['per_step_ms']:.3f}", f"{r['vs_forward']:.2f}",
                     f"{r['vs_bptt']:.2f}", _f(r.get("vs_braintrace"), "{:.3f}"),
                     _f(_div(r.get("memory", {}).get("total_bytes"), MiB), "{:.2f}"),
                     _f(r.get("grad_cosine_vs_bptt"), "{:.6f}"), eq])
    for name, why in res["skipped"].items():
        rows.append([name] + ["-"] * 10 + [why])
    return f"{head}\n{title}\n\n" + _table(header, rows)


def memory_table(res: dict, head: str) -> str:
    names = list(res["rows"][0]["contenders"])
    out = []
    kinds = [("total_bytes", "XLA compiled memory analysis, total = temp + arguments + outputs - aliased"),
             ("temp_size_in_bytes", "XLA compiled memory analysis, temp buffers")]
    if res["metric"] == "peak_bytes":
        kinds = [("peak", "device peak_bytes_in_use (a fresh process per cell)")]
    for key, what in kinds:
        get = (lambda e, n: _mem_value(e["contenders"][n], "peak_bytes")) if key == "peak" else \
            (lambda e, n, key=key: e["contenders"][n].get(key))
        rows = [[e["T"], f"{e['input_bytes'] / MiB:.2f}"] + [_f(_div(get(e, n), MiB), "{:.2f}") for n in names]
                for e in res["rows"]]
        out.append(f"**memory** (MiB), {what}: {res['workload']}, hidden={res['hidden']}, batch={res['batch']}, "
                   f"etprop chunk={res['chunk_effective']}\n\n" + _table(["T", "inputs+targets"] + names, rows))
    sc = res["scaling"]
    rows = []
    for n, d in sc["contenders"].items():
        cross = "-" if "first_measured_T" not in d else (
            f"{d['first_measured_T'] or 'none measured'} (fit: "
            f"{'never' if d['crossover_T_fit'] is None else round(d['crossover_T_fit'])})")
        rows.append([n, f"{d['bytes_per_step']:.0f}", f"{d['growth']:.2f}", "yes" if d["flat"] else "no",
                     "yes" if d["linear"] else "no", cross])
    out.append(f"**memory growth** ({sc['metric']} minus inputs+targets, T={sc['Ts']})\n\n"
               + _table(["contender", "B/step (fit)", f"last/first (T x{sc['Ts'][-1] / sc['Ts'][0]:.0f})", "flat",
                         "linear", "BPTT larger from T"], rows))
    return head + "\n" + "\n\n".join(out)


def goals_table(goals: list[dict]) -> str:
    return _table(["where", "goal", "measured", "verdict"],
                  [[g["where"], g["goal"], g["measured"] or "-",
                    g["verdict"] + (f" ({g['note']})" if g["note"] else "")] for g in goals])


def equality_table(checks: dict) -> str:
    rows = []
    for wl, eq in checks.items():
        if eq.get("skipped"):
            rows.append([wl, "-", "-", "-", "-", "-", eq["skipped"]])
            continue
        for rule, c in eq["rules"].items():
            rows.append([wl, rule, "yes" if c["same_shapes"] else "NO",
                         _f(c.get("max_rel_diff"), "{:.2e}"), ", ".join(c.get("zero_leaves") or []) or "-",
                         f"{c['etprop_vs_bptt']['cosine']:.6f} / {c['braintrace_vs_bptt']['cosine']:.6f}",
                         _values_text(c) + ("; check " + ("PASS" if c["ok"] else "FAIL") if c["required"] else "")])
    return _table(["workload", "rule", "same names+shapes", "max rel diff", "braintrace zero leaves",
                   "cos to BPTT etprop / braintrace", "values"], rows)


# ---------------------------------------------------------------------------------------------
# entry point


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--suite", nargs="+", choices=SUITE_ORDER + ("scale", "all"), default=["all"],
                   help="one or more suites, run in the order given (all: lif gru memory deep; scale: "
                        "benchmarks/scale.py, not in all)")
    p.add_argument("--device", choices=("cpu", "gpu"), default=None,
                   help="default: the JAX default backend; gpu errors if JAX has no GPU backend")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="override the suite's hidden sizes")
    p.add_argument("--T", type=int, nargs="+", default=None, help="override the suite's sequence lengths")
    p.add_argument("--batch", type=int, default=None, help="override the suite's batch size")
    p.add_argument("--repeats", type=int, default=None, help="timed sequences per contender (default 5; quick 2)")
    p.add_argument("--chunk", type=int, default=None,
                   help=f"chunk_size of etprop's D-RTRL / ES-D-RTRL (default {etprop.OnlineAlgorithm.default_chunk})")
    p.add_argument("--no-braintrace", action="store_true", dest="no_braintrace")
    p.add_argument("--bt-drtrl-max-hidden", type=int, default=None, dest="bt_drtrl_max_hidden",
                   help="skip braintrace's D-RTRL above this hidden size (default: 512 on CPU, no limit on GPU)")
    p.add_argument("--budget-s", type=float, default=60.0, dest="budget_s",
                   help="steady-state seconds per contender and configuration: fewer repeats beyond it")
    p.add_argument("--max-seq-s", type=float, default=30.0, dest="max_seq_s",
                   help="skip braintrace's D-RTRL where a short probe estimates more seconds per sequence "
                        "(0: never skip)")
    p.add_argument("--no-mem", action="store_true", dest="no_mem",
                   help="skip the per-contender compile-time / memory analysis in the timing suites")
    p.add_argument("--contenders", nargs="+", default=None,
                   help="time only these contenders (forward-only and BPTT are always kept: the ratios need them)")
    p.add_argument("--no-equality", action="store_true", dest="no_equality",
                   help="skip the etprop / braintrace equality check")
    p.add_argument("--peak-procs", type=int, default=4, dest="peak_procs",
                   help="GPU: device-peak probes run in this many processes at a time")
    p.add_argument("--probe-peak", default=None, dest="probe_peak", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _device(name: str | None):
    if name is None:
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except (RuntimeError, IndexError) as e:
        raise SystemExit(f"--device {name}: JAX has no {name.upper()} backend here (default backend "
                         f"{jax.default_backend()}, devices {jax.devices()}; {type(e).__name__}: {e}). Install a "
                         f"GPU build of jaxlib (e.g. pip install 'jax[cuda12]') or run with --device cpu.") from None


def _suite_cfg(suite: str, args) -> dict:
    cfg = dict(SUITES[suite])
    if args.quick:
        cfg.update(QUICK[suite])
    for k in ("hidden", "T", "batch"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    return cfg


def _suites(args, gpu: bool, log) -> tuple[str, ...]:
    """The suites ``--suite`` names, in order ("all": `SUITE_ORDER`); ``deep`` dropped on a CPU
    (with a note) unless the shapes are tiny or given."""
    suites = tuple(dict.fromkeys(x for s_ in args.suite for x in (SUITE_ORDER if s_ == "all" else (s_,))))
    if "deep" in suites and not gpu and not args.quick and not (args.hidden and args.T and args.batch):
        msg = ("deep (3 x 512 LIF, batch 128, T = 1000) is a GPU suite; on CPU it runs only with --quick "
               "(tiny shapes) or explicit --hidden/--T/--batch")
        if "all" not in args.suite:
            raise SystemExit(msg)
        log(f"note: {msg}; skipped")
        suites = tuple(s_ for s_ in suites if s_ != "deep")
    return suites


def _memory_suite(wl, cfg: dict, args, bt_ok: bool, gpu: bool, head: str, log) -> tuple[dict, list]:
    """The ``memory`` suite: its result and its goals (both logged as tables)."""
    log(f"\n== memory: {wl.name} hidden={cfg['hidden'][0]} batch={cfg['batch']} T={cfg['T']} ==")
    res = run_memory(wl, cfg["hidden"][0], cfg["batch"], cfg["T"], with_braintrace=bt_ok,
                     chunk=args.chunk, peak_procs=args.peak_procs if gpu else 0,
                     names=args.contenders, log=log)
    goals = memory_goals(res)
    log("\n" + memory_table(res, head) + "\n\n" + goals_table(goals))
    return res, goals


def _deep_peaks(rows: list, wl, args, head: str, log) -> None:
    """The device peak of every contender of the ``deep`` suite's ``rows`` (a fresh process each),
    stored in the rows as ``peak`` and logged as a table."""
    specs = [{"workload": wl.name, "name": n, "hidden": r["hidden"], "T": r["T"], "batch": r["batch"],
              "chunk": args.chunk} for r in rows for n in r["contenders"] if n != FLOOR]
    log(f"  [peak] deep: measuring {len(specs)} device peaks")
    for s, p in zip(specs, measure_peaks(specs, args.peak_procs, log)):
        for r in rows:
            if (r["hidden"], r["T"]) == (s["hidden"], s["T"]) and s["name"] in r["contenders"]:
                r["contenders"][s["name"]]["peak"] = p
    peak_rows = [[f"h={r['hidden']} T={r['T']}", n,
                  _f(_div((r["contenders"][n].get("peak") or {}).get("peak_bytes"), MiB), "{:.1f}")]
                 for r in rows for n in r["contenders"] if n != FLOOR]
    log(f"\n**deep: device peak memory** (peak_bytes_in_use, a fresh process per contender)\n{head}\n\n"
        + _table(["config", "contender", "device peak MiB"], peak_rows))


def main(argv=None, log=print) -> dict:
    args = parse_args(argv)
    if args.probe_peak:
        print("PEAK " + json.dumps(probe_peak(json.loads(args.probe_peak))), flush=True)
        return {}
    device = _device(args.device)
    gpu = device.platform != "cpu"
    suites = _suites(args, gpu, log)
    repeats = args.repeats or (2 if args.quick else 5)
    bt_max = args.bt_drtrl_max_hidden if args.bt_drtrl_max_hidden is not None else (None if gpu else 512)
    info = machine_info(device)
    head = header_line(info)
    log(head)
    bt_ok, bt_msg = (False, "braintrace rows skipped (--no-braintrace)") if args.no_braintrace \
        else braintrace_available()
    log(bt_msg)
    result = {"machine": info, "args": vars(args), "braintrace": bt_msg, "equality": {}, "goals": [],
              **{s: [] for s in ("lif", "gru", "deep")}, "memory": None}
    t_start = time.perf_counter()

    def save():  # after every configuration: a run cut short keeps what finished
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out + ".tmp", "w") as f:
                json.dump(result, f, indent=1, default=str)
            os.replace(args.out + ".tmp", args.out)

    with jax.default_device(device):
        for suite in suites:
            cfg = _suite_cfg(suite, args)
            if suite == "scale":
                from benchmarks import scale
                log(f"\n== scale: hidden={cfg['hidden']} ==")
                result["scale"] = {}  # filled as configurations finish
                scale.run_suite(cfg, args, bt_ok, bt_msg, head, gpu, out=result["scale"], log=log, save=save)
                result["goals"] += result["scale"]["goals"]
                save()
                continue
            wl = WORKLOADS[cfg["workload"]]
            if suite == "memory":
                result["memory"], goals = _memory_suite(wl, cfg, args, bt_ok, gpu, head, log)
                result["goals"] += goals
                save()
                continue
            log(f"\n== {suite}: hidden={cfg['hidden']} T={cfg['T']} batch={cfg['batch']} ==")
            eq = None
            if not args.no_equality:
                eq = equality_check(wl, bt_ok, log=log)
                result["equality"][wl.name] = eq
            for h in cfg["hidden"]:
                for T in cfg["T"]:
                    log(f"\n-- {suite} hidden={h} T={T} batch={cfg['batch']} --")
                    res = run_timing(wl, h, T, cfg["batch"], repeats=repeats, with_braintrace=bt_ok,
                                     bt_drtrl_max_hidden=bt_max, chunk=args.chunk, budget_s=args.budget_s,
                                     with_mem=not args.no_mem, equality=eq, names=args.contenders,
                                     max_seq_s=args.max_seq_s, log=log)
                    result[suite].append(res)
                    goals = timing_goals(res, gpu)
                    result["goals"] += goals
                    log("\n" + timing_table(res, head) + "\n\n" + goals_table(goals))
                    save()
            if suite == "deep" and gpu and not args.quick:
                _deep_peaks(result["deep"], wl, args, head, log)
                save()
    if result["equality"]:
        log("\n**equality check** (etprop vs braintrace, float64, small instance)\n\n"
            + equality_table(result["equality"]))
    if result["goals"]:
        log("\n**goals**\n" + head + "\n\n" + goals_table(result["goals"]))
    result["wall_s"] = time.perf_counter() - t_start
    result["git_after"] = _git_state()
    code = lambda g: {k: v for k, v in (g or {}).items() if k != "commit"}
    if code(result["git_after"]) != code(info.get("git")):
        log(f"\nnote: etprop/ changed during the run: {info.get('git')} -> {result['git_after']}")
    log(f"\ntotal wall time {result['wall_s']:.0f} s")
    if args.out:
        save()
        log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
