"""The 30-second smoke test `benchmarks/gpu.sh` runs first: import, compile, gradient.

On a fresh machine (a GPU box with jax 0.11, say) it answers three questions before minutes of
benchmarks are spent: does etprop import and its graph compiler read this jax's jaxprs (jax 0.11
merged ``ClosedJaxpr`` into ``Jaxpr``), do the online learners' gradients compile and run on the
device, and are they right (D-RTRL equals BPTT on a model where theory says exact, ES-D-RTRL and
the post-step signal close to it on a sparse recurrent one)?

    python -m benchmarks.gpu_smoke [--device gpu|cpu]

Prints one line per check and exits 1 on the first failure.
"""

from __future__ import annotations

import argparse
import sys
import time

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np

import etprop
from benchmarks.models import mse, spike
from benchmarks.scale import SparseRLIF, poisson_data


class _FeedForwardLIF(bs.nn.Module):
    """Inputs through `etprop.matmul` into leaky neurons (element-wise dynamics: D-RTRL = BPTT)."""

    def __init__(self, n_in=16, n_hid=32, n_out=4):
        super().__init__()
        rng = np.random.default_rng(0)
        self.w = bs.ParamState(jnp.asarray(rng.standard_normal((n_in, n_hid)) * 0.5, jnp.float32))
        self.w_out = bs.ParamState(jnp.asarray(rng.standard_normal((n_hid, n_out)) * 0.3, jnp.float32))
        self.v = bs.HiddenState(jnp.zeros((2, n_hid), jnp.float32))

    def update(self, x):
        v = 0.9 * self.v.value + etprop.matmul(x, self.w.value)
        self.v.value = v - spike(v - 1.0)
        return jnp.tanh(self.v.value) @ self.w_out.value


def _cos(a, b) -> float:
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def _grads(make, algo, xs, ys, **opts):
    learner = etprop.compile(make(), algo, xs[0], batch_size=xs.shape[1], **opts)
    return jax.block_until_ready(learner.etrace_grad(xs, ys, mse)[0])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        dev = jax.devices(args.device)[0]
    except RuntimeError as e:
        print(f"smoke: no {args.device} device ({e})")
        return 1
    print(f"smoke: jax {jax.__version__}, brainstate {bs.__version__}, etprop {etprop.__version__}, on {dev}")
    checks = []
    with jax.default_device(dev):
        rng = np.random.default_rng(1)
        xs = jnp.asarray(rng.standard_normal((20, 2, 16)), jnp.float32)
        ys = jnp.asarray(rng.standard_normal((20, 2, 4)), jnp.float32)
        g_bp = _grads(_FeedForwardLIF, etprop.BPTT, xs, ys)
        for name, algo, opts in (("D-RTRL", etprop.D_RTRL, {}), ("D-RTRL post-signal", etprop.D_RTRL,
                                                                    {"learning_signal": "post"})):
            g = _grads(_FeedForwardLIF, algo, xs, ys, **opts)
            err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                      for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_bp)))
            checks.append((f"{name} = BPTT on a feed-forward LIF (max rel err {err:.1e})", err < 1e-4))
        sxs, sys_ = poisson_data(16, 2)
        make = lambda: SparseRLIF(64, 512, 10, batch_size=2)
        s_bp = _grads(make, etprop.BPTT, sxs, sys_)
        for name, algo, opts in (("ES-D-RTRL", etprop.ES_D_RTRL, {"decay_or_rank": 0.9}),
                                 ("ES-D-RTRL post-signal", etprop.ES_D_RTRL,
                                  {"decay_or_rank": 0.9, "learning_signal": "post"})):
            c = _cos(_grads(make, algo, sxs, sys_, **opts), s_bp)
            checks.append((f"{name} on the sparse recurrent LIF (512 neurons): cosine to BPTT {c:.4f}", c > 0.9))
    ok = True
    for text, passed in checks:
        print(f"smoke: {'ok  ' if passed else 'FAIL'} {text}")
        ok = ok and passed
    print(f"smoke: {'passed' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
