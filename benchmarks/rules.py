"""Every learning rule side by side: trace memory, time per step, cosine to BPTT.

    python -m benchmarks.rules [--hidden 64] [--T 100] [--batch 16] [--repeats 5] [--quick]

* time: the ``lif`` benchmark network (`benchmarks.models.LIFNet`, one feed-forward LIF
  layer and a readout), ``etrace_grad`` over a sequence of ``T`` steps, compile excluded,
  rules timed in alternating rounds (A B C ... A B C) so machine drift cancels; median per
  step, and the ratio to D-RTRL's.
* memory: bytes of the learner's carried state (traces / influence) per sample on that network.
* cosine: the gradient accumulated over one copying-task batch (GRU network of ``etprop train``,
  hidden 32, T = 20, batch 8, float64) against BPTT's, over all parameters and for the worst
  single parameter (the readout's exact gradient dominates the first).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import brainstate
import jax
import jax.numpy as jnp
import numpy as np

import etprop
from benchmarks.models import make_model, mse
from etprop.experiment import build_model
from etprop.tasks import get_task

# name -> (class, options); ThreeFactor gets a modulator instead of a loss
RULES = {
    "BPTT": (etprop.BPTT, {}),
    "D-RTRL": (etprop.D_RTRL, {}),
    "ES-D-RTRL": (etprop.ES_D_RTRL, {}),
    "Hybrid": (etprop.HybridDimVjpAlgorithm, {}),
    "e-prop (random B)": (etprop.EProp, {"feedback": "random"}),
    "e-prop (kappa 0.5)": (etprop.EProp, {"kappa": 0.5}),
    "OSTL recurrent": (etprop.OSTLRecurrent, {}),
    "OSTL feed-forward": (etprop.OSTLFeedforward, {}),
    "SnAp-1": (etprop.SnAp, {"n": 1}),
    "SnAp-2": (etprop.SnAp, {"n": 2}),
    "UORO": (etprop.UORO, {"key": "seed"}),
    "RTRL": (etprop.RTRL, {}),
    "ThreeFactor": (etprop.ThreeFactor, {}),
}


def _opts(opts):
    return {k: (jax.random.key(0) if v == "seed" else v) for k, v in opts.items()}


def _nbytes(tree) -> int:
    return sum(int(np.prod(np.shape(x))) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
               if hasattr(x, "dtype") and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def _timing_fns(hidden, T, B, n_in=100, n_out=10):
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.random((T, B, n_in)) < 0.1, jnp.float32)
    ys = jnp.asarray(rng.standard_normal((T, B, n_out)) * 0.1, jnp.float32)
    fns, mem = {}, {}
    for name, (cls, opts) in RULES.items():
        model = make_model("lif", n_in, hidden, n_out, batch_size=B)
        try:
            learner = etprop.compile(model, cls, xs[0], batch_size=B, **_opts(opts))
        except etprop.EtpropError as e:  # e.g. RTRL above its size limit
            fns[name], mem[name] = None, str(e).split(".")[0]
            continue
        mem[name] = _nbytes(learner.etrace.value) // B
        if cls is etprop.ThreeFactor:
            ms = jnp.ones((T,))
            fns[name] = (lambda l=learner: l.etrace_grad(xs, modulator=ms)[0])
        else:
            fns[name] = (lambda l=learner: l.etrace_grad(xs, ys, mse)[0])
    return fns, mem


def time_rules(hidden=64, T=100, B=16, repeats=5, log=print) -> dict:
    fns, mem = _timing_fns(hidden, T, B)
    live = {k: f for k, f in fns.items() if f is not None}
    for name, f in live.items():  # compile and warm up
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        log(f"  {name}: first call {time.perf_counter() - t0:.1f} s")
    times = {k: [] for k in live}
    for _ in range(repeats):
        for name, f in live.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[name].append((time.perf_counter() - t0) / T)
    out = {}
    for name, f in fns.items():
        v = times.get(name)
        out[name] = {"ms_per_step": 1e3 * statistics.median(v) if v else None,
                     "bytes_per_sample": mem[name], "skipped": None if f else mem[name]}
    return out


def gru_cosines(hidden=32, B=8, seed=0) -> dict:
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        task = get_task("copying", length=5, delay=10)
        batch = task.batch(jax.random.key(seed), B)
        xs = batch.inputs.astype(jnp.float64)
        grads = {}
        for name, (cls, opts) in RULES.items():
            if cls is etprop.ThreeFactor:
                continue  # its signal is a given modulator, not the loss: no BPTT to compare with
            net = build_model("gru", task.n_in, hidden, task.n_out, seed=seed)
            brainstate.nn.init_all_states(net, batch_size=B)
            for st in net.states().values():  # float64 weights
                st.value = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                                        else a, st.value)
            learner = etprop.compile(net, cls, xs[0], batch_size=B, **_opts(opts))
            learner.reset()
            grads[name] = learner.etrace_grad(xs, batch.targets, task.step_loss, mask=batch.mask)[0]
        ref = grads["BPTT"]
        out = {}
        for name, g in grads.items():
            la = [np.ravel(x) for x in jax.tree.leaves(g)]
            lb = [np.ravel(x) for x in jax.tree.leaves(ref)]
            cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))
            per = [cos(a, b) for a, b in zip(la, lb) if np.linalg.norm(b) > 0]
            out[name] = {"cos": cos(np.concatenate(la), np.concatenate(lb)), "cos_worst": min(per)}
        return out
    finally:
        jax.config.update("jax_enable_x64", prev)


def markdown(timing: dict, cosines: dict) -> str:
    d = timing["D-RTRL"]["ms_per_step"]
    lines = ["| rule | carried state / sample (lif) | ms / step (lif) | x D-RTRL | cos to BPTT (GRU copying) | "
             "worst parameter |", "|---|---|---|---|---|---|"]
    for name in RULES:
        t = timing[name]
        c = cosines.get(name)
        mem = f"{t['bytes_per_sample'] / 1024:.1f} KiB" if isinstance(t["bytes_per_sample"], int) else "-"
        ms = f"{t['ms_per_step']:.3f}" if t["ms_per_step"] else f"skipped ({t['skipped']})"
        ratio = f"{t['ms_per_step'] / d:.2f}" if t["ms_per_step"] else "-"
        cs = (f"{c['cos']:.4f}", f"{c['cos_worst']:.4f}") if c else ("n/a (modulator)", "-")
        lines.append(f"| {name} | {mem} | {ms} | {ratio} | {cs[0]} | {cs[1]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    a = p.parse_args(argv)
    if a.quick:
        a.hidden, a.T, a.batch, a.repeats = 8, 6, 2, 1
    t0 = time.perf_counter()
    timing = time_rules(a.hidden, a.T, a.batch, a.repeats)
    cosines = gru_cosines(hidden=8 if a.quick else 32)
    print(f"\nmeasured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({jax.devices()[0].platform}), jax "
          f"{jax.__version__}, etprop {etprop.__version__}; lif H={a.hidden} T={a.T} B={a.batch}, "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    print(markdown(timing, cosines))
    return timing, cosines


if __name__ == "__main__":
    main()
