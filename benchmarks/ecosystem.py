"""brainpy.state networks: etprop's and braintrace's online gradients against BPTT, side by side.

For every network of the ecosystem test matrix (``tests/ecosystem``: neurons, synapses,
projections, readouts, written the brainpy.state way with units and braintools initialisers)
the same model is built twice, once with ``etprop.matmul`` and once with ``braintrace.matmul``
as its input layer, and both libraries' D-RTRL gradients are compared with BPTT (`jax.grad`
over a `brainstate.transform.for_loop` of the model, float64, the same data and seed).
Recurrent networks and the leaky readout (approximations) are compared by cosine, ES-D-RTRL
included. braintrace is driven the way its documentation writes it: ``etrace_grad(xs, ys,
idx, step_fn=...)`` with the step's time set by the step function.

    python -m benchmarks.ecosystem [--only NAME ...] [--out FILE.json]

Prints a markdown table (model, states per neuron, traced weights, etprop's error or cosine,
braintrace's) under a header with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp

import etprop

from tests.conftest import bptt_reference, cosine, rel_err  # noqa: E402  (the checkout's test helpers)
from tests.ecosystem import test_brainpy_models as M  # noqa: E402
from tests.ecosystem.models import DT, FeedForward, Recurrent, mse  # noqa: E402

try:
    import braintrace
except ImportError:  # the comparison column says so
    braintrace = None


def _braintrace_grads(make, algo_name, batch, dt, xs, ys):
    """braintrace's online gradient of ``sum_t mean_b mse`` on the model built with its matmul."""
    model = M.build(make, batch)
    algo = {"d_rtrl": braintrace.D_RTRL, "es_d_rtrl": braintrace.ES_D_RTRL}[algo_name]
    opts = {"decay_or_rank": 0.9} if algo_name == "es_d_rtrl" else {}  # etprop's default decay
    with brainstate.environ.context(i=0, t=0.0 * dt):  # braintrace traces the model once at compile time
        learner = braintrace.compile(model, algo, xs[0], batch_size=batch, **opts)

    def step_fn(x, y, i):
        with brainstate.environ.context(i=i, t=i * dt):
            out = learner(x)
        per = jax.vmap(mse)(out, y) if batch is not None else mse(out, y)
        return jnp.mean(per)

    grads = learner.etrace_grad(xs, ys, jnp.arange(xs.shape[0]), step_fn=step_fn, reduction="sum")
    return {".".join(map(str, k)): v for k, v in grads.items()}


def _row(name, make_of, batch, dt, T, algo_name, exact):
    xs, ys = M._data(T, batch)
    algo = {"d_rtrl": etprop.D_RTRL, "es_d_rtrl": etprop.ES_D_RTRL}[algo_name]
    with brainstate.environ.context(dt=dt):
        ref, _ = bptt_reference(M.build(lambda: make_of(None), batch), xs, ys, mse, dt=dt)
        learner = etprop.compile(M.build(lambda: make_of(None), batch), algo, xs[0], batch_size=batch)
        g, _ = learner.etrace_grad(xs, ys, mse)
        rate = M.firing_rate(lambda: make_of(None), batch, xs, dt)
        bt, bt_err = None, ""
        if braintrace is not None:
            try:
                bt = _braintrace_grads(lambda: make_of(braintrace.matmul), algo_name, batch, dt, xs, ys)
            except Exception as err:  # noqa: BLE001  (recorded in the table, not hidden)
                bt_err = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
    neuron_group = learner.graph.groups[learner.graph.relations[0].group]  # what the input weight drives
    traced = sorted({r.leaf_name for r in learner.graph.relations})
    row = {"model": name, "algo": algo_name, "S": neuron_group.num_states, "traced": traced,
           "firing": rate, "leaves": sorted(ref)}
    measure = (lambda a, b: rel_err(a, b)) if exact else cosine
    row["etprop"] = {k: measure(g[k], ref[k]) for k in ref}
    row["etprop_all"] = max(row["etprop"].values()) if exact else cosine(g, ref)
    row["etprop_traced"] = (max(row["etprop"][k] for k in traced) if exact else
                            cosine({k: g[k] for k in traced}, {k: ref[k] for k in traced}))
    if bt is not None:
        row["braintrace"] = {k: measure(bt[k], ref[k]) for k in ref if k in bt}
        row["braintrace_zero"] = sorted(k for k in bt if not float(jnp.max(jnp.abs(u.get_mantissa(bt[k])))))
        row["braintrace_all"] = (max(row["braintrace"].values()) if exact else
                                 cosine({k: bt[k] for k in ref}, ref))
        # on the weights both libraries trace (braintrace gives the others zero)
        row["braintrace_traced"] = (max(row["braintrace"][k] for k in traced) if exact else
                                    cosine({k: bt[k] for k in traced}, {k: ref[k] for k in traced}))

    else:
        row["braintrace_error"] = bt_err or "braintrace not installed"
    return row


def cases(only=None):
    for name, (kw, batch, dt, T) in sorted(M.CONFIGS.items()):
        yield name, (lambda op, kw=kw: FeedForward(**kw, op=op)), batch, dt, T, "d_rtrl", True
    leaky = lambda op: FeedForward(neuron="LIF", readout="leaky", w_scale=3.0, op=op)
    yield "LeakyRateReadout (cosine)", leaky, M.B, DT, M.T, "d_rtrl", False
    for neuron in ("LIF", "ALIF"):
        for algo in ("d_rtrl", "es_d_rtrl"):
            yield (f"recurrent {neuron} (cosine)", (lambda op, n=neuron: Recurrent(n, op=op)), M.B, DT, M.T,
                   algo, False)


def _fmt(v, exact):
    return f"{v:.1e}" if exact else f"{v:.4f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="model names (substrings) to run")
    p.add_argument("--out", help="write every row as JSON here")
    a = p.parse_args(argv)
    brainstate.environ.set(precision=64)  # float64 for jax and for braintools' initialisers
    print(f"# brainpy.state networks, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}, brainstate {brainstate.__version__}, etprop {etprop.__version__}, "
          f"braintrace {getattr(braintrace, '__version__', '-')}, float64\n")
    print("error: max relative error per leaf against BPTT (exact rules); cosine: of the gradient (approximations); "
          "'all' over every parameter, 'traced' over the traced weights only\n")
    print("| model | rule | S | traced weights | firing | etprop all | etprop traced | braintrace all | "
          "braintrace traced | braintrace zero leaves |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, make_of, batch, dt, T, algo, exact in cases():
        if a.only and not any(s in name for s in a.only):
            continue
        t0 = time.time()
        r = _row(name, make_of, batch, dt, T, algo, exact)
        r["seconds"] = time.time() - t0
        rows.append(r)
        what = "max rel err" if exact else "cosine"
        if "braintrace_all" in r:
            bt = f"{_fmt(r['braintrace_all'], exact)} | {_fmt(r['braintrace_traced'], exact)}"
        else:
            bt = f"{r['braintrace_error']} | -"
        et_traced = _fmt(r["etprop_traced"], exact)
        print(f"| {name} | {algo} | {r['S']} | {', '.join(r['traced'])} | {r['firing']:.1%} | "
              f"{_fmt(r['etprop_all'], exact)} ({what}) | {et_traced} | {bt} | "
              f"{', '.join(r.get('braintrace_zero', [])) or '-'} |", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
