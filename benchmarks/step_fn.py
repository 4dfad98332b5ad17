"""braintrace's calling convention (``etrace_grad(xs, ys, step_fn=...)``) against etprop's, timed side by side.

Workload of the core-rebuild issue: the benchmark GRU (hidden 256, batch 16, T 100, 16
inputs, 4 outputs). For D-RTRL and ES-D-RTRL, one sequence's gradient through

* ``loss_fn``: ``learner.etrace_grad(xs, ys, mse)`` (etprop's form, closed-form chunks);
* ``step_fn reused``: ``etrace_grad(xs, ys, step_fn=f)`` with one ``f`` for every call;
* ``step_fn fresh``: a new ``lambda`` written in the loop at every call (braintrace's README
  does this), which must not recompile;
* ``step_fn per-step path``: a step function that also reads the model's hidden state (as a
  firing-rate regulariser does), which keeps the literal per-step loop
  (`etprop.algorithms.step_fn_fast`);

against BPTT (``etprop.BPTT``, ``loss_fn`` form). Medians of ``--repeats`` calls after a warm-up
call, ms per sequence and ratios, printed as a markdown table with the machine and versions.

    python -m benchmarks.step_fn [--hidden 256] [--batch 16] [--T 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import brainstate
import jax
import jax.numpy as jnp

import etprop
from benchmarks.models import make_model, mse


def median_time(call, repeats) -> float:
    """Median seconds of ``repeats`` calls of ``call`` after one call that compiles and warms up."""
    jax.block_until_ready(call())  # compile and warm up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(call())
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def sequences(T, batch, n_in, n_out):
    """The workload's inputs ``xs`` ``(T, batch, n_in)`` and targets ``ys`` ``(T, batch, n_out)``, standard normal."""
    k1, k2 = jax.random.split(jax.random.key(0))
    return jax.random.normal(k1, (T, batch, n_in)), jax.random.normal(k2, (T, batch, n_out))


def parse_args(doc: str, repeats: int, argv=None) -> argparse.Namespace:
    """The command line of a benchmark of the GRU workload: ``--hidden --batch --T --repeats``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--repeats", type=int, default=repeats)
    return p.parse_args(argv)


def header(title: str, a: argparse.Namespace) -> str:
    """The first line of a GRU workload table: the workload, the date, the machine and the versions."""
    return (f"# {title}, gru hidden {a.hidden}, batch {a.batch}, T {a.T}; {time.strftime('%Y-%m-%d')}, "
            f"{platform.processor() or platform.machine()}, jax {jax.__version__}, brainstate "
            f"{brainstate.__version__}, etprop {etprop.__version__}\n")


def measure(hidden=256, batch=16, T=100, repeats=5, n_in=16, n_out=4):
    xs, ys = sequences(T, batch, n_in, n_out)
    rows = {}
    bptt = etprop.compile(make_model("gru", n_in, hidden, n_out, batch_size=batch), etprop.BPTT, xs[0],
                          batch_size=batch)
    rows["BPTT (loss_fn)"] = median_time(lambda: bptt.etrace_grad(xs, ys, mse)[1], repeats)
    for name, algo in (("D-RTRL", etprop.D_RTRL), ("ES-D-RTRL", etprop.ES_D_RTRL)):
        learner = etprop.compile(make_model("gru", n_in, hidden, n_out, batch_size=batch), algo, xs[0],
                                 batch_size=batch)
        rows[f"{name} loss_fn"] = median_time(lambda: learner.etrace_grad(xs, ys, mse)[1], repeats)

        def reused(x, y, learner=learner):
            return jnp.mean(jax.vmap(mse)(learner(x), y))

        rows[f"{name} step_fn reused"] = median_time(
            lambda: learner.etrace_grad(xs, ys, step_fn=reused, return_value=True)[1], repeats)
        rows[f"{name} step_fn fresh lambda"] = median_time(
            lambda: learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean(jax.vmap(mse)(learner(x), y)),
                                        return_value=True)[1], repeats)
        hidden_state = list(learner.model.states(brainstate.HiddenState).values())[0]

        def reads_state(x, y, learner=learner):  # a regulariser on the model's state: the per-step path
            return jnp.mean(jax.vmap(mse)(learner(x), y)) + 0.0 * jnp.mean(hidden_state.value)

        rows[f"{name} step_fn per-step path"] = median_time(
            lambda: learner.etrace_grad(xs, ys, step_fn=reads_state, return_value=True)[1], repeats)
        assert learner.step_fn_path.startswith("per-step")
    return rows


def main(argv=None):
    a = parse_args(__doc__, 5, argv)
    rows = measure(a.hidden, a.batch, a.T, a.repeats)
    bptt = rows["BPTT (loss_fn)"]
    print(header("step_fn form", a))
    print("| contender | ms / sequence | x BPTT |")
    print("|---|---|---|")
    for name, t in rows.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / bptt:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
