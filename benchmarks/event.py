"""The event-driven operators (``event=True``, brainevent's kernels) against the dense path, by firing rate.

Measured side by side in one run, ms per step, medians of ``--repeats`` calls after a
warm-up call (`benchmarks.step_fn.median_time`):

* forward: a jitted `jax.lax.scan` of ``--T`` steps of ``y_t = op(s_t, W)`` over spike
  inputs ``s_t`` drawn at rate ``p`` (a new vector every step), divided by ``T``:

  - dense `etprop.matmul`: ``(I, O) = (--dense, --dense)``, batch 1 and ``--batch``;
  - `etprop.sparse_matmul`: ``--neurons`` x ``--neurons`` with fan-in ``--fan-in`` (random
    presynaptic rows per neuron), batch 1 and ``--batch``;

* learner (``--learner``, default on): one online-learner step of a LIF layer driven by
  the spikes (``v = 0.9 v + op(s, W); s' = spike(v - 1); v -= s'``, tanh readout) through
  ``learner.etrace_grad`` over ``--T-learner`` steps (``--T-sparse-learner`` for the sparse
  rows, whose D-RTRL step is slow), batch ``--batch``, for ES-D-RTRL and D-RTRL on the dense
  operator (``--learner-dense`` squared), and D-RTRL on the sparse one.

Columns: ``event=False`` ms, ``event=True`` ms and their ratio (> 1: the event path is
faster). Before timing, each row checks that both paths give the same outputs.

    python -m benchmarks.event [--rates 0.01,0.05,0.2,0.5] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

import etprop
from benchmarks.models import spike
from benchmarks.step_fn import median_time


def _spikes(seed, shape, p):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p, jnp.float32)


def fixed_fan_in(n, fan_in, seed=0) -> jsparse.BCOO:
    """An ``(n, n)`` BCOO: each column (neuron) gets ``fan_in`` distinct random rows (inputs)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.choice(n, fan_in, replace=False) for _ in range(n)]).ravel()
    cols = np.repeat(np.arange(n), fan_in)
    idx = np.stack([rows, cols], 1).astype(np.int32)
    data = rng.standard_normal(len(idx)).astype(np.float32) / np.sqrt(fan_in)
    return jsparse.BCOO((jnp.asarray(data), jnp.asarray(idx)), shape=(n, n))


def _op(kind, w, mat, event):
    if kind == "dense":
        return lambda s: etprop.matmul(s, w, event=event)
    return lambda s: etprop.sparse_matmul(s, w, sparse_mat=mat, event=event)


def forward_ms(kind, w, mat, n_in, batch, rates, T, repeats):
    """``{p: (ms event=False, ms event=True)}`` per forward step (one compilation per path)."""
    lead = (T,) if batch == 1 else (T, batch)
    runs = {}
    for event in (False, True):
        f = _op(kind, w, mat, event)
        runs[event] = jax.jit(lambda xs, f=f: jax.lax.scan(lambda c, s: (c, f(s)), 0.0, xs)[1])
    out = {}
    for p in rates:
        xs = _spikes(int(p * 1e4) + batch, lead + (n_in,), p)
        np.testing.assert_allclose(np.asarray(runs[True](xs)), np.asarray(runs[False](xs)), rtol=2e-4, atol=2e-4)
        out[p] = tuple(median_time(lambda r=runs[e]: r(xs), repeats) / T * 1e3 for e in (False, True))
    return out


class LIFLayer(bs.nn.Module):
    """One LIF layer driven by input spikes through `matmul` or `sparse_matmul` (``event`` given)."""

    def __init__(self, kind, n_in, n_hid, event, mat=None, n_out=4, batch=1, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 2)
        self.kind, self.event, self.mat = kind, event, mat
        if kind == "dense":
            self.w = bs.ParamState(jax.random.normal(k[0], (n_in, n_hid)) * (2.0 / np.sqrt(n_in)))
        else:
            self.w = bs.ParamState(mat.data * 2.0)
        self.w_out = bs.ParamState(jax.random.normal(k[1], (n_hid, n_out)) * 0.1)
        self.v = bs.HiddenState(jnp.zeros((batch, n_hid)))

    def update(self, x):
        if self.kind == "dense":
            i = etprop.matmul(x, self.w.value, event=self.event)
        else:
            i = etprop.sparse_matmul(x, self.w.value, sparse_mat=self.mat, event=self.event)
        v = 0.9 * self.v.value + i
        s = spike(v - 1.0)
        self.v.value = v - s
        return jnp.tanh(self.v.value) @ self.w_out.value


def learner_ms(kind, algo, n_in, n_hid, mat, batch, rates, T, repeats):
    """``{p: (ms event=False, ms event=True)}`` per learner step (one compiled learner per path)."""
    ys = jnp.asarray(np.random.default_rng(3).standard_normal((T, batch, 4)), jnp.float32)
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    x0 = jnp.zeros((batch, n_in))
    learners = {event: etprop.compile(LIFLayer(kind, n_in, n_hid, event, mat, batch=batch), algo, x0,
                                      batch_size=batch) for event in (False, True)}
    out = {}
    for p in rates:
        xs = _spikes(int(p * 1e4) + 7, (T, batch, n_in), p)
        ms, grads = {}, {}
        for event, learner in learners.items():
            learner.reset()
            grads[event] = learner.etrace_grad(xs, ys, mse)[0]
            ms[event] = median_time(lambda lr=learner: (lr.reset(), lr.etrace_grad(xs, ys, mse)[1])[1],
                                    repeats) / T * 1e3
        for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3,
                                       atol=1e-3 * float(jnp.abs(b).max()) + 1e-6)
        out[p] = (ms[False], ms[True])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0.01,0.05,0.2,0.5")
    ap.add_argument("--dense", type=int, default=1024)
    ap.add_argument("--neurons", type=int, default=8192)
    ap.add_argument("--fan-in", type=int, default=76)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--T", type=int, default=50)
    ap.add_argument("--T-learner", type=int, default=20)
    ap.add_argument("--T-sparse-learner", type=int, default=5, help="steps of the (slow) sparse D-RTRL rows")
    ap.add_argument("--learner-dense", type=int, default=512, help="I = O of the dense learner rows")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-learner", dest="learner", action="store_false")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test, seconds)")
    a = ap.parse_args(argv)
    if a.quick:
        (a.dense, a.neurons, a.fan_in, a.batch, a.T, a.T_learner, a.T_sparse_learner, a.learner_dense,
         a.repeats) = 64, 256, 8, 4, 5, 4, 4, 32, 1
    rates = [float(r) for r in a.rates.split(",")]
    import brainevent
    import numba

    key = jax.random.key(0)
    w = jax.random.normal(key, (a.dense, a.dense)) / np.sqrt(a.dense)
    mat = fixed_fan_in(a.neurons, a.fan_in)
    print(f"# event=True vs event=False; {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {jax.default_backend()}, jax {jax.__version__}, "
          f"brainevent {brainevent.__version__}, numba {numba.__version__}, etprop {etprop.__version__}; medians of {a.repeats}, forward over T={a.T} "
          f"steps, learner over T={a.T_learner} (sparse: {a.T_sparse_learner})\n")
    print("| operator | what | batch | rate p | event=False ms/step | event=True ms/step | speed-up |")
    print("|---|---|---|---|---|---|---|", flush=True)

    def emit(op, what, batch, res):
        for p in rates:
            t0, t1 = res[p]
            print(f"| {op} | {what} | {batch} | {p:g} | {t0:.3f} | {t1:.3f} | {t0 / t1:.2f}x |", flush=True)

    t_start = time.perf_counter()
    for batch in (1, a.batch):
        emit(f"matmul {a.dense}x{a.dense}", "forward", batch,
             forward_ms("dense", w, None, a.dense, batch, rates, a.T, a.repeats))
        emit(f"sparse_matmul {a.neurons}, fan-in {a.fan_in}", "forward", batch,
             forward_ms("sparse", mat.data, mat, a.neurons, batch, rates, a.T, a.repeats))
    if a.learner:
        n = a.learner_dense
        for name, algo in (("ES-D-RTRL", "es_d_rtrl"), ("D-RTRL", "d_rtrl")):
            emit(f"LIF, matmul {n}x{n}", f"{name} step", a.batch,
                 learner_ms("dense", algo, n, n, None, a.batch, rates, a.T_learner, a.repeats))
        emit(f"LIF, sparse_matmul {a.neurons}, fan-in {a.fan_in}", "D-RTRL step", a.batch,
             learner_ms("sparse", "d_rtrl", a.neurons, a.neurons, mat, a.batch, rates, a.T_sparse_learner,
                         a.repeats))
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
