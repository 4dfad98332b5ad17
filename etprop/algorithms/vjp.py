"""Building blocks of the drivers: the online custom VJP, and sums written without reduces.

`online_custom_vjp` turns a forward over a window (or a chunk) into a function whose VJP gives
parameter gradients only: no cotangent flows into the initial hidden states, traces or inputs,
so consecutive calls never backpropagate through time (the traces carry that credit).

The sums add terms one by one instead of calling a reduce: on XLA:CPU a reduce over a leading
axis is several times slower than adds, and a fused float32 reduce over groups of states can
be miscompiled (``shared/design/pitfalls.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["zero_cotangent", "online_custom_vjp", "sum_terms", "batch_sum", "tree_sum0"]


def zero_cotangent(x):
    """A zero cotangent for ``x``: zeros for inexact dtypes, ``float0`` for integer/bool ones."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


def online_custom_vjp(fwd_impl, param_grads):
    """``fn(p, h, o, tr, a) -> (outs, h', o', tr')`` whose VJP gives only parameter gradients.

    ``fwd_impl`` returns ``(outs, h', o', tr', residuals)``; ``param_grads((p, h, o, tr, a,
    residuals), cotangents)`` returns the parameter gradient leaves. No cotangent flows to
    the initial states, traces or inputs: across calls, credit is carried by the traces.
    """

    @jax.custom_vjp
    def fn(p, h, o, tr, a):
        return fwd_impl(p, h, o, tr, a)[:4]

    def fwd(p, h, o, tr, a):
        outs, h2, o2, tr2, res = fwd_impl(p, h, o, tr, a)
        return (outs, h2, o2, tr2), (p, h, o, tr, a, res)

    def bwd(res, cts):
        zeros = lambda tree: jax.tree.map(zero_cotangent, tree)
        _, h, o, tr, a, _ = res
        return list(param_grads(res, cts)), zeros(h), zeros(o), zeros(tr), zeros(a)

    fn.defvjp(fwd, bwd)
    return fn


def sum_terms(terms):
    """``terms[0] + terms[1] + ...`` written out (no reduce: see `tree_sum0`)."""
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def batch_sum(term, n: int, block: int = 16):
    """``sum_{b < n} term(b)`` unrolled in blocks of ``block`` samples: each block is one
    elementwise fusion that reads its slices once (no reduce, see `tree_sum0`)."""
    blocks = [sum_terms([term(b) for b in range(lo, min(lo + block, n))]) for lo in range(0, n, block)]
    return sum_terms(blocks)


def tree_sum0(x, unroll: int = 32):
    """``x.sum(0)`` without a reduce: on XLA:CPU a reduce over the leading axis of a large
    array is several times slower than adds, and a fused float32 reduce can be miscompiled
    (``shared/design/pitfalls.md``). Up to ``unroll`` rows are added in one elementwise
    fusion (the product that makes ``x`` fuses into it, so ``x`` is never written: measured
    2.8x faster than a halving tree for a (16, 100, 512) product); longer leading axes are
    first halved pairwise."""
    while x.shape[0] > unroll:
        n = x.shape[0]
        half = n // 2
        y = x[:half] + x[half:2 * half]
        x = jnp.concatenate([y, x[2 * half:]]) if n % 2 else y
    total = x[0]
    for i in range(1, x.shape[0]):
        total = total + x[i]
    return total
