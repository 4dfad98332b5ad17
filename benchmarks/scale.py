"""The ``scale`` suite of `benchmarks.run` (issue 14): a sparse recurrent LIF network from 8,192
to 131,072 neurons.

Network (``SparseRLIF``, written once and run by etprop and, where it can take it, braintrace):
64 Poisson input trains -> ``n`` LIF neurons whose recurrent weights go through the library's
``sparse_matmul`` (a fixed random structure, ``FAN_IN`` = 76 presynaptic neurons per neuron:
``76 n`` trainable stored values), input weights through ``matmul``, a plain readout of 10.
Per step, with ``v`` the (pre-reset) membrane potential, one hidden state per neuron::

    s   = spike(v - 1)                                 (last step's spikes, from the state)
    v'  = dm * (v - s) + lib.matmul(x, W_in) + lib.sparse_matmul(s, w_rec, sparse_mat=S)
    out = tanh(v') @ W_out                             (plain matmul: direct gradient only)

Step loss: squared error against Gaussian targets. Contenders: forward-only, etprop's BPTT,
ES-D-RTRL (``decay_or_rank=0.9``), D-RTRL (its trace on the stored values: ``(B, 76 n)``), and
braintrace's D-RTRL / ES-D-RTRL where braintrace can build and run the model (probed on a small
instance first; the reason is reported when it cannot). Timing, memory analysis and the
machine header are `benchmarks.run`'s (`run.run_timing`, `run.run_memory`); sizes: CPU batch 1
at every size and batch 8 up to 32,768, T = 100; GPU batch 1 and 8 at every size, T = 1,000.
Peak memory against T: XLA's compiled memory analysis at T = 100 and 400 at the smallest size.

``--profile-es`` (with ``python -m benchmarks.scale``): where ES-D-RTRL's time goes, by timing
variants of the per-step work at one size (see `profile_es`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import brainstate as bs
import etprop
from benchmarks import run as R
from benchmarks.models import mse, spike

N_IN = 64
N_OUT = 10
FAN_IN = 76
RATE = 0.05  # Poisson input spike probability per step
TAU_MEM = 0.9
CPU_B8_MAX = 32768  # CPU: batch 8 up to this size
MEM_T = (100, 400)
QUICK_MEM_T = (16, 64)
NAMES = [R.DRTRL, R.ESDRTRL, R.DRTRL_POST, R.ESDRTRL_POST, R.BT_DRTRL, R.BT_ES]  # + forward-only and BPTT (run_timing keeps them)


# ---------------------------------------------------------------------------------------------
# the network


def structure(n: int, fan_in: int = FAN_IN, seed: int = 0):
    """``(rows, cols)`` int32 of a fixed random ``(n, n)`` structure, ``fan_in`` distinct
    presynaptic rows per column, sorted by row (CSR order). Vectorised: ``fan_in`` sorted
    draws from ``[0, n - fan_in]`` plus ``0 .. fan_in - 1`` are distinct."""
    k = min(fan_in, n)
    rng = np.random.default_rng(seed)
    pre = np.sort(rng.integers(0, n - k + 1, (n, k)), axis=1) + np.arange(k)
    rows = pre.ravel().astype(np.int32)
    cols = np.repeat(np.arange(n, dtype=np.int32), k)
    order = np.lexsort((cols, rows))
    return rows[order], cols[order]


def sparse_structure(lib, n: int, fan_in: int = FAN_IN):
    """The structure in the form each library takes: a BCOO for etprop; for braintrace a
    brainevent CSR if brainevent imports, else a brainunit CSR (which braintrace may refuse)."""
    rows, cols = structure(n, fan_in)
    ones = np.ones(rows.shape, np.float32)
    if lib is etprop:
        from jax.experimental import sparse as jsparse
        return jsparse.BCOO((jnp.asarray(ones), jnp.asarray(np.stack([rows, cols], 1))), shape=(n, n))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
    try:
        import brainevent
        return brainevent.CSR((jnp.asarray(ones), jnp.asarray(cols), jnp.asarray(indptr)), shape=(n, n))
    except ImportError:
        import brainunit as u
        return u.sparse.CSR((jnp.asarray(ones), jnp.asarray(cols), jnp.asarray(indptr)), shape=(n, n))


class SparseRLIF(bs.nn.Module):
    """Sparse recurrent LIF network (see the module doc); ``lib`` is ``etprop`` or ``braintrace``."""

    def __init__(self, n_in, n_hid, n_out, *, lib=None, batch_size=None, seed=0, dtype=jnp.float32,
                 fan_in=FAN_IN, tau_mem=TAU_MEM):
        super().__init__()
        lib = etprop if lib is None else lib
        self.matmul, self.sparse_matmul = lib.matmul, lib.sparse_matmul
        self.S = sparse_structure(lib, n_hid, fan_in)
        k = min(fan_in, n_hid)
        rng = np.random.default_rng(seed)
        self.w_in = bs.ParamState(jnp.asarray(rng.standard_normal((n_in, n_hid)) * 3.0 / n_in ** 0.5, dtype))
        self.w_rec = bs.ParamState(jnp.asarray(rng.standard_normal(n_hid * k) * 1.0 / k ** 0.5, dtype))
        self.w_out = bs.ParamState(jnp.asarray(rng.standard_normal((n_hid, n_out)) / n_hid ** 0.5, dtype))
        self.n_hid, self.dtype, self.dm = n_hid, dtype, tau_mem
        if batch_size is not None:
            self.init_state(batch_size)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        self.v = bs.HiddenState(jnp.zeros(lead + (self.n_hid,), self.dtype))

    def update(self, x):
        v = self.v.value
        s = spike(v - 1.0)
        v = (self.dm * (v - s) + self.matmul(x, self.w_in.value)
             + self.sparse_matmul(s, self.w_rec.value, sparse_mat=self.S))
        self.v.value = v
        return jnp.tanh(v) @ self.w_out.value


def poisson_data(T: int, batch: int, n_in: int = N_IN, seed: int = 1):
    """Poisson (Bernoulli per step, ``RATE``) input spikes ``(T, batch, 64)`` and Gaussian targets."""
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.random((T, batch, n_in)) < RATE, jnp.float32)
    ys = jnp.asarray(rng.standard_normal((T, batch, N_OUT)), jnp.float32)
    return xs, ys


class ScaleWorkload:
    """Duck-types `run.Workload` for `run.contenders` / `run.run_timing` / `run.run_memory`."""
    name = kind = "scale"
    n_in, n_out, n_layers, diagonal = N_IN, N_OUT, 1, False
    step_loss = staticmethod(mse)

    def data(self, T, batch):
        return poisson_data(T, batch)

    def model(self, lib, hidden, batch=None, dtype=jnp.float32):
        return SparseRLIF(N_IN, hidden, N_OUT, lib=lib, batch_size=batch, dtype=dtype)

    def trace_shapes(self, hidden):
        return [(N_IN, hidden), (1, hidden * min(FAN_IN, hidden))]


WL = ScaleWorkload()


def _bt_try():
    xs, ys = WL.data(4, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for algo, opts in (("D_RTRL", {}), ("ES_D_RTRL", {"decay_or_rank": R.ES_DECAY})):
            f, args = R._braintrace_fn(WL, algo, 128, 2, xs, ys, **opts)
            jax.block_until_ready(f(*args))


def _first_line(e) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def braintrace_probe(bt_ok: bool, bt_msg: str) -> tuple[bool, str]:
    """Can braintrace build and run this model? (a 128-neuron, 4-step instance). Its sparse
    product is brainevent's ``csrmm``, whose default CPU kernel needs numba: where numba is
    missing, brainevent's ``jax_raw`` CPU backend is selected (``brainevent.config.set_backend``)
    and the probe retried."""
    if not bt_ok:
        return False, bt_msg
    try:
        _bt_try()
        return True, "braintrace runs the sparse model (brainevent CSR)"
    except Exception as e:  # noqa: BLE001 - reported, not raised
        first = _first_line(e)
    if "numba" in first:
        try:
            import brainevent
            brainevent.config.set_backend("cpu", "jax_raw")
            _bt_try()
            return True, ("braintrace runs the sparse model (brainevent CSR) with brainevent's 'jax_raw' CPU "
                          "backend (its default, numba, is not installed)")
        except Exception as e:  # noqa: BLE001
            first = f"{first}; with brainevent's jax_raw backend: {_first_line(e)}"
    return False, f"braintrace cannot run the sparse model ({first}); its rows are skipped"


# ---------------------------------------------------------------------------------------------
# the suite


def configs(cfg: dict, gpu: bool, quick: bool) -> list[tuple[int, int, int]]:
    """``(hidden, T, batch)`` in run order."""
    Ts = cfg.get("T") or ([1000] if gpu else [100])
    if cfg.get("batch") is not None:
        batches = [(h, cfg["batch"]) for h in cfg["hidden"]]
    elif gpu or quick:
        batches = [(h, b) for b in (1, 8) for h in cfg["hidden"]]
    else:
        batches = [(h, 1) for h in cfg["hidden"]] + [(h, 8) for h in cfg["hidden"] if h <= CPU_B8_MAX]
    return [(h, T, b) for T in Ts for h, b in batches]


def run_suite(cfg: dict, args, bt_ok: bool, bt_msg: str, head: str, gpu: bool, out=None, log=print,
              save=None) -> dict:
    """The suite (called by `run.main`); fills and returns ``out``, calling ``save()`` after
    every configuration."""
    bt_ok, bt_msg = braintrace_probe(bt_ok, bt_msg)
    log(f"  [braintrace] {bt_msg}")
    names = [n for n in (args.contenders or NAMES) if n in NAMES]
    out = {} if out is None else out
    out.update({"network": f"sparse recurrent LIF, fan-in {FAN_IN}, {N_IN} Poisson inputs (p={RATE}), readout {N_OUT}",
           "braintrace": bt_msg, "rows": [], "memory": None})
    # here --bt-drtrl-max-hidden limits both braintrace rules (its sparse kernel's XLA compile
    # takes minutes at these sizes); None: only the --max-seq-s probe of its D-RTRL applies
    bt_max = args.bt_drtrl_max_hidden
    for h, T, b in configs(cfg, gpu, args.quick):
        log(f"\n-- scale hidden={h} ({h * min(FAN_IN, h):,} synapses) T={T} batch={b} --")
        t0 = time.perf_counter()
        bt_here = bt_ok and (bt_max is None or h <= bt_max)
        res = R.run_timing(WL, h, T, b, repeats=args.repeats or (2 if args.quick else 3), with_braintrace=bt_here,
                           bt_drtrl_max_hidden=None, chunk=args.chunk, budget_s=args.budget_s,
                           with_mem=not args.no_mem, names=names, max_seq_s=args.max_seq_s, log=log)
        res["synapses"] = h * min(FAN_IN, h)
        res["wall_s"] = time.perf_counter() - t0
        if not bt_here:
            why = bt_msg if not bt_ok else f"skipped at hidden {h} > --bt-drtrl-max-hidden {bt_max}"
            for n in (R.BT_DRTRL, R.BT_ES):
                if n in names:
                    res["skipped"][n] = why
        out["rows"].append(res)
        log("\n" + R.timing_table(res, head))
        if save:
            save()
    h = min(R.QUICK["scale"]["hidden"] if args.quick else R.SUITES["scale"]["hidden"])
    if not args.no_mem and h in cfg["hidden"]:  # memory against T at the suite's smallest size
        Ts = QUICK_MEM_T if args.quick else MEM_T
        log(f"\n== scale memory: hidden={h} batch=1 T={list(Ts)} ==")
        mem = R.run_memory(WL, h, 1, Ts, with_braintrace=bt_ok, chunk=args.chunk,
                           names=[R.FORWARD, R.BPTT, R.DRTRL, R.ESDRTRL] + ([R.BT_DRTRL, R.BT_ES] if bt_ok else []),
                           log=log)
        out["memory"] = mem
        log("\n" + R.memory_table(mem, head))
    out["goals"] = goals(out)
    log("\n" + scale_table(out, head) + "\n\n" + R.goals_table(out["goals"]))
    return out


def goals(out: dict) -> list[dict]:
    g = []
    for r in out["rows"]:
        where = f"scale n={r['hidden']} T={r['T']} B={r['batch']}"
        for name, lim in ((R.ESDRTRL, 3.0), (R.DRTRL, 4.0), (R.ESDRTRL_POST, 3.0), (R.DRTRL_POST, 4.0)):
            if "post" in name and name not in r["contenders"]:
                continue  # the learning_signal='post' rows: goals where they ran
            v = r["contenders"].get(name, {}).get("vs_forward")
            g.append({"where": where, "goal": f"{name} <= {lim:g}x forward-only",
                      "measured": None if v is None else f"{v:.2f}", "value": v,
                      "verdict": R._verdict(None if v is None else v <= lim), "note": ""})
    return g


def scale_table(out: dict, head: str) -> str:
    """One row per configuration and contender: ms/step, x forward-only, x BPTT, XLA memory."""
    rows = []
    for r in out["rows"]:
        for name, c in r["contenders"].items():
            rows.append([f"{r['hidden']:,}", f"{r['synapses'] / 1e6:.2f}M", r["batch"], r["T"], name,
                         len(c["times_s"]), f"{c['per_step_ms']:.2f}", f"{c['vs_forward']:.2f}",
                         f"{c['vs_bptt']:.2f}",
                         R._f(R._div(c.get("memory", {}).get("total_bytes"), R.MiB), "{:.1f}"),
                         R._f(c.get("grad_cosine_vs_bptt"), "{:.4f}")])
        for name, why in r["skipped"].items():
            rows.append([f"{r['hidden']:,}", f"{r['synapses'] / 1e6:.2f}M", r["batch"], r["T"], name]
                        + ["-"] * 6)
    text = (f"**scale** ({out['network']}): ms/step = median sequence time / T\n{head}\n\n"
            + R._table(["neurons", "synapses", "batch", "T", "contender", "repeats", "ms/step", "x forward",
                        "x BPTT", "XLA mem MiB", "grad cos vs BPTT"], rows))
    skipped = {why for r in out["rows"] for why in r["skipped"].values()}
    if skipped:
        text += "\n\nskipped: " + "; ".join(sorted(skipped))
    mem = out.get("memory")
    if mem:
        sc = mem["scaling"]["contenders"]
        Ts = mem["scaling"]["Ts"]
        mrows = [[n] + [R._f(R._div(e["contenders"][n].get("total_bytes"), R.MiB), "{:.1f}") for e in mem["rows"]]
                 + [f"{sc[n]['growth']:.2f}" if n in sc else "-"] for n in mem["rows"][0]["contenders"]]
        text += (f"\n\n**scale memory vs T** (XLA compiled memory analysis, MiB; n={mem['hidden']:,}, batch 1; "
                 f"growth beyond inputs+targets)\n\n"
                 + R._table(["contender"] + [f"T={T}" for T in Ts] + [f"growth T x{Ts[-1] / Ts[0]:.0f}"], mrows))
    return text


# ---------------------------------------------------------------------------------------------
# profile: where ES-D-RTRL's time goes


def _bench(f, args, repeats):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jax.block_until_ready(f(*args))
        ts = [R._timed(f, args)[0] for _ in range(repeats)]
    return float(np.median(ts))


def profile_es(hidden: int, T: int, batch: int, repeats: int = 3, log=print, hlo_out=None) -> dict:
    """Time variants of the per-step work of ES-D-RTRL at one size (all scanned over ``T``):

    ``forward-only``      the model's step and loss;
    ``+ vjp``             forward plus the step's VJP of the loss w.r.t. state and parameters
                          (BPTT's per-step backward work without the stored history);
    ``+ jvp D/Df``        forward plus the per-step JVP of the sparse product w.r.t. the state
                          (the diagonal D and the output factor Df ES-D-RTRL needs);
    ``+ outer product``   forward plus a per-step (B, 76 n) product ``x[rows] * df[cols]`` summed
                          into a gradient (what a per-step ES gradient costs at the stored values);
    ``BPTT`` / ``ES-D-RTRL`` / ``D-RTRL``  the learners themselves.

    Also counts the ops in ES-D-RTRL's compiled HLO (gathers, scatters, fusions, while loops)."""
    xs, ys = WL.data(T, batch)
    model = WL.model(etprop, hidden, batch)
    rows_, cols_ = structure(hidden)
    rows_, cols_ = jnp.asarray(rows_), jnp.asarray(cols_)
    S = model.S
    w_in, w_rec, w_out = model.w_in.value, model.w_rec.value, model.w_out.value

    def step(v, x, w_rec):
        s = spike(v - 1.0)
        v = TAU_MEM * (v - s) + x @ w_in + etprop.sparse_matmul(s, w_rec, sparse_mat=S)
        return v

    def loss(v, y):
        return jnp.mean(jax.vmap(mse)(jnp.tanh(v) @ w_out, y))

    v0 = jnp.zeros((batch, hidden))

    @jax.jit
    def fwd(xs, ys):
        def body(v, xy):
            v = step(v, xy[0], w_rec)
            return v, loss(v, xy[1])
        return jax.lax.scan(body, v0, (xs, ys))[1].sum()

    @jax.jit
    def fwd_vjp(xs, ys):
        def body(carry, xy):
            v, g = carry
            f = lambda v, w: loss(step(v, xy[0], w), xy[1])
            val, pull = jax.vjp(f, v, w_rec)
            dv, dw = pull(jnp.ones_like(val))
            return (step(v, xy[0], w_rec), g + dw + dv.sum() * 0), val
        return jax.lax.scan(body, (v0, jnp.zeros_like(w_rec)), (xs, ys))[0][1]

    @jax.jit
    def fwd_jvp(xs, ys):
        def body(carry, xy):
            v, acc = carry
            vn, dvn = jax.jvp(lambda v: step(v, xy[0], w_rec), (v,), (jnp.ones_like(v),))
            return (vn, acc + dvn), loss(vn, xy[1])
        return jax.lax.scan(body, (v0, jnp.zeros_like(v0)), (xs, ys))[0][1]

    @jax.jit
    def fwd_outer(xs, ys):
        def body(carry, xy):
            v, g, ex = carry
            s = spike(v - 1.0)
            vn = step(v, xy[0], w_rec)
            ex = 0.9 * ex + s
            df = jax.grad(lambda v: loss(v, xy[1]))(vn)
            g = g + jnp.sum(jnp.take(ex, rows_, axis=-1) * jnp.take(df, cols_, axis=-1), 0)
            return (vn, g, ex), None
        return jax.lax.scan(body, (v0, jnp.zeros_like(w_rec), jnp.zeros_like(v0)), (xs, ys))[0][1]

    res = {"hidden": hidden, "synapses": int(rows_.shape[0]), "T": T, "batch": batch, "variants": {}}

    def add(name, f, args=(xs, ys)):
        t = _bench(f, args, repeats)
        res["variants"][name] = {"ms_per_step": t / T * 1e3}
        log(f"  [profile] {name}: {t / T * 1e3:.2f} ms/step")
        return f, args

    add("forward-only (bare scan)", fwd)
    add("+ vjp (loss wrt v, w_rec)", fwd_vjp)
    add("+ jvp D/Df (sparse step wrt v)", fwd_jvp)
    add("+ per-step outer product x[rows]*df[cols]", fwd_outer)
    for name, algo, chunk, opts in ((R.BPTT, etprop.BPTT, None, {}),
                                    (R.ESDRTRL, etprop.ES_D_RTRL, None, {"decay_or_rank": R.ES_DECAY}),
                                    (R.ESDRTRL + " chunk 1", etprop.ES_D_RTRL, 1, {"decay_or_rank": R.ES_DECAY}),
                                    (R.DRTRL, etprop.D_RTRL, None, {}),
                                    (R.DRTRL + " chunk 1", etprop.D_RTRL, 1, {})):
        f, args = R._etprop_fn(WL, algo, hidden, batch, xs, ys, chunk_size=chunk, jit=True, **opts)
        add(name, f, args)
        if name == R.ESDRTRL:
            res["es_hlo_ops"] = hlo_op_times(f, args, log=log, hlo_out=hlo_out)
    return res


def hlo_op_times(f, args, top: int = 12, log=print, hlo_out=None) -> list[dict]:
    """Per compiled-HLO op (thunk) time of one call of ``f`` (`jax.profiler` trace, summed per
    op name), the ``top`` largest with their HLO shape and the jax op they come from."""
    import collections
    import glob
    import gzip
    import re
    import tempfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hlo = f.lower(*args).compile().as_text()  # the same program (same names) as f's cached one
        jax.block_until_ready(f(*args))
        d = tempfile.mkdtemp(prefix="etprop_prof_")
        with jax.profiler.trace(d, create_perfetto_trace=True):
            jax.block_until_ready(f(*args))
    if hlo_out:
        with open(hlo_out, "w") as fh:
            fh.write(hlo)
    (path,) = glob.glob(d + "/**/*.trace.json.gz", recursive=True)[-1:]
    ev = json.load(gzip.open(path))
    dur, cnt = collections.Counter(), collections.Counter()
    skip = ("ThunkExecutor", "Pjit", "$", "Execute", "shard_args", "CommonPjRt", "SlinkyThreadPool", "end: ")
    for e in (ev["traceEvents"] if isinstance(ev, dict) else ev):
        if e.get("ph") == "X" and not e["name"].startswith(skip):
            dur[e["name"]] += e.get("dur", 0)
            cnt[e["name"]] += 1
    total = sum(v for k, v in dur.items() if not k.startswith("while"))
    out = []
    for name, us in dur.most_common(top + 4):
        if name.startswith("while"):
            continue
        m = re.search(rf"%{re.escape(name)} = (\S+) .*?op_name=\"([^\"]*)\"", hlo)
        shape, op = (m.group(1), m.group(2).split("/")[-1]) if m else ("?", "?")
        src = ""
        if m:
            src = re.sub(r"^jit\(jaxpr_call\)/jit\(run\)/", "", m.group(2))[:110]
        out.append({"op": name, "ms": us / 1e3, "share": us / total if total else None, "calls": cnt[name],
                    "shape": shape, "from": src})
        if len(out) >= top:
            break
    log(f"  [profile] compiled HLO op times, one call ({total / 1e3:.1f} ms in ops):")
    for o in out:
        log(f"    {o['ms']:9.1f} ms {100 * (o['share'] or 0):5.1f} %  x{o['calls']:<4d} {o['op']:<28s} {o['shape']:<22s} "
            f"{o['from']}")
    return out


def main(argv=None, log=print):
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    p.add_argument("--profile-es", action="store_true", dest="profile_es")
    p.add_argument("--hidden", type=int, default=131072)
    p.add_argument("--T", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hlo-out", default=None, dest="hlo_out")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if not a.profile_es:
        p.error("the suite runs as: python -m benchmarks.run --suite scale")
    res = profile_es(a.hidden, a.T, a.batch, a.repeats, log=log, hlo_out=a.hlo_out)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
