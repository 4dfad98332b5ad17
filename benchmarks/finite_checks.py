"""What the finite checks cost: ``check_finite=True`` (the default) against ``False``, timed side by side.

Workload of ``benchmarks/step_fn.py``: the benchmark GRU (hidden 256, batch 16, T 100, 16 inputs,
4 outputs), D-RTRL and ES-D-RTRL, one sequence's gradient through

* ``loss_fn``: ``learner.etrace_grad(xs, ys, mse)`` (flags reduced per closed-form chunk);
* ``step_fn``: ``etrace_grad(xs, ys, step_fn=f)``, ``f`` calling the learner (flags per step);
* ``user jit``: the user's own ``brainstate.transform.jit`` of a ``for_loop`` whose body takes
  ``brainstate.transform.grad`` of a loss of ``learner(x)`` (per step, a cond on the reduced flag
  in the forward and in the backward pass).

Each form runs on two learners of the same model, checks on and off, timed in interleaved
rounds (on, off, on, off, ...) after a warm-up call: medians of the wall time and of the process
CPU time (all threads; steadier than wall time on a shared machine) in ms per sequence, and the
on / off ratios.

    python -m benchmarks.finite_checks [--hidden 256] [--batch 16] [--T 100] [--repeats 7]
"""

from __future__ import annotations

import statistics
import sys
import time

import brainstate as bs
import jax
import jax.numpy as jnp

import etprop
from benchmarks.models import make_model, mse
from benchmarks.step_fn import header, parse_args, sequences


def _forms(learner, xs, ys):
    states = learner.param_states()

    def step_fn(x, y):
        return jnp.mean(jax.vmap(mse)(learner(x), y))

    @bs.transform.jit
    def user_jit(xs, ys):
        def body(x, y):
            grads = bs.transform.grad(lambda: jnp.mean(jax.vmap(mse)(learner(x), y)), states)()
            return jax.tree.map(jnp.sum, grads)

        return bs.transform.for_loop(body, xs, ys)

    return {"loss_fn": lambda: learner.etrace_grad(xs, ys, mse)[1],
            "step_fn": lambda: learner.etrace_grad(xs, ys, step_fn=step_fn),
            "user jit": lambda: user_jit(xs, ys)}


def measure(hidden=256, batch=16, T=100, repeats=7, n_in=16, n_out=4):
    xs, ys = sequences(T, batch, n_in, n_out)
    rows = []
    for name, algo in (("D-RTRL", etprop.D_RTRL), ("ES-D-RTRL", etprop.ES_D_RTRL)):
        forms = {}
        for check in (True, False):
            learner = etprop.compile(make_model("gru", n_in, hidden, n_out, batch_size=batch), algo, xs[0],
                                     batch_size=batch, check_finite=check)
            forms[check] = _forms(learner, xs, ys)
        for form in forms[True]:
            calls = {c: forms[c][form] for c in (True, False)}
            for c in calls:
                jax.block_until_ready(calls[c]())  # compile and warm up
            wall, cpu = {True: [], False: []}, {True: [], False: []}
            for _ in range(repeats):
                for c in (True, False):
                    t, p = time.perf_counter(), time.process_time()
                    jax.block_until_ready(calls[c]())
                    wall[c].append(time.perf_counter() - t)
                    cpu[c].append(time.process_time() - p)
            med = lambda d: (statistics.median(d[True]), statistics.median(d[False]))
            rows.append((name, form) + med(wall) + med(cpu))
    return rows


def main(argv=None):
    a = parse_args(__doc__, 7, argv)
    rows = measure(a.hidden, a.batch, a.T, a.repeats)
    print(header("finite checks", a))
    print("| learner | form | wall ms, on | wall ms, off | on / off | CPU ms, on | CPU ms, off | on / off |")
    print("|---|---|---|---|---|---|---|---|")
    for name, form, on, off, con, coff in rows:
        print(f"| {name} | {form} | {on * 1e3:.1f} | {off * 1e3:.1f} | {on / off:.2f} | {con * 1e3:.1f} | "
              f"{coff * 1e3:.1f} | {con / coff:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
