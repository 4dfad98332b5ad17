"""`BPTT`: the reference learner, same interface, gradient by `jax.grad` over a scan."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from etprop.algorithms.base import OnlineAlgorithm, _as_args
from etprop.errors import NotSupportedError

__all__ = ["BPTT"]


class BPTT(OnlineAlgorithm):
    """Backpropagation through time over each sequence given to `etrace_grad`.

    Exact, with memory linear in the sequence length. It shares the compiled graph
    with the online learners (same pure step), so ``etrace_grad`` of any algorithm can
    be compared with it in one line.
    """

    name = "BPTT"

    def compile_graph(self, *example_inputs, batch_size=None):
        super().compile_graph(*example_inputs, batch_size=batch_size)
        return self

    def relation_kind(self, rel):
        return "none"

    def _init_sample_traces(self):
        return {"rel": [], "count": jnp.zeros((), jnp.float32)}

    def init_relation_trace(self, rel, kind):
        return []

    def describe_kind(self, rel, kind):
        return "exact (BPTT over the window)"

    def step(self, inputs, target=None, loss_fn=None):
        raise NotSupportedError("BPTT has no per-step gradient; call etrace_grad(xs, ys, step_loss) on a sequence")

    def forward_step(self, params, hidden, others, args):
        """The plain model step for one sample (used for the forward-only floor too)."""
        g = self.graph
        leaves = jax.tree.leaves((self._param_tuple(params), hidden, others, args))
        outs, hn, on, _ = g.run(leaves)
        h2, o2 = jax.tree.unflatten(jax.tree.structure((hidden, others)), list(hn) + list(on))
        return g.unflatten_out(outs), h2, o2

    def _compiled_scan(self, step_loss: Callable | None):
        fn = self._jit_cache.get(step_loss)
        if fn is not None:
            return fn
        oax = self._axes()

        def batched_forward(params, h, o, a):
            if self.batch_size is None:
                return self.forward_step(params, h, o, a)
            return jax.vmap(lambda hh, oo, aa: self.forward_step(params, hh, oo, aa),
                            in_axes=(0, oax, 0), out_axes=(0, 0, oax))(h, o, a)

        def sample_losses(out, y):
            if step_loss is None:
                return jnp.zeros(())
            if self.batch_size is None:
                return step_loss(out, y)
            return jnp.mean(jax.vmap(step_loss)(out, y))

        def run(params, hidden, others, traces, args, ys, mask):
            def total(p):
                def body(carry, inp):
                    h, o = carry
                    a, y, m = inp
                    out, h2, o2 = batched_forward(p, h, o, a)
                    return (h2, o2), m * sample_losses(out, y)

                (h, o), losses = jax.lax.scan(body, (hidden, others), (args, ys, mask))
                return jnp.sum(losses), (losses, h, o)

            grads, (losses, h, o) = jax.grad(total, has_aux=True)(params)
            return jax.tree.leaves(self._param_tuple(grads)), losses, h, o, traces

        fn = self._jit_cache[step_loss] = jax.jit(run)
        return fn
