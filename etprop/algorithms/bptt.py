"""`BPTT`: the reference learner, same interface, gradient by `jax.grad` over a scan."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.traces import NoTrace
from etprop.errors import NotSupportedError

__all__ = ["BPTT"]


class BPTT(OnlineAlgorithm):
    """Backpropagation through time over each sequence given to `etrace_grad`.

    Exact, with memory linear in the sequence length. It shares the compiled graph
    with the online learners (one window covering the whole sequence, no traces),
    so ``etrace_grad`` of any algorithm can be compared with it in one line.
    """

    name = "BPTT"
    exact_across_groups = True
    default_window = None  # the whole sequence
    default_chunk = 0  # no per-step mode

    def trace_rule(self, rel):
        return NoTrace()

    def relation_kind(self, rel):
        return "none"

    def _init_sample_traces(self):
        return {"rel": [], "count": jnp.zeros((), jnp.float32)}

    def step_signals(self, p_leaves, h_leaves, tail, rec):
        return None  # no traces to advance

    def compile_graph(self, *example_inputs, batch_size=None):
        super().compile_graph(*example_inputs, batch_size=batch_size)
        self._kinds, self._rules, self._ops = {}, [], []
        self.graph = _without_relations(self.graph)
        self._window_fn = self._make_window()
        self.reset_traces()
        return self

    def approximations(self) -> dict[str, str]:
        """None: the gradient is BPTT's by definition."""
        return {}

    def describe_kind(self, rel, kind):
        return "exact (BPTT over the window)"

    def report(self) -> str:
        """The hidden groups, and every parameter's gradient: exact, by reverse mode over the sequence."""
        self._require_graph()
        g = self.graph
        lines = [f"{type(self).__name__} on {type(self.model).__name__} (batch_size={self.batch_size})",
                 "hidden groups:"]
        lines += [f"  [{grp.index}] {', '.join(grp.names)}  shape={grp.shape}  states per position "
                  f"S={grp.num_states}" for grp in g.groups]
        lines.append("parameters:")
        lines += [f"  {name} {tuple(g.param_leaf_avals[leaf].shape)}: exact gradient (reverse mode over the whole "
                  f"sequence; memory linear in its length)" for leaf, name in enumerate(g.param_leaf_names)]
        return "\n".join(lines)

    def step(self, inputs, target=None, loss_fn=None):
        raise NotSupportedError("BPTT has no per-step gradient; call etrace_grad(xs, ys, step_loss) on a sequence")

    def etrace_grad(self, xs=None, ys=None, step_loss=None, *, mask=None, window=None, return_losses=False,
                    reduction=None, step_fn=None, **braintrace_keywords):
        """Exact gradient of the sequence loss (``window`` defaults to the whole sequence)."""
        if step_fn is not None or braintrace_keywords:
            raise NotSupportedError("BPTT takes etprop's convention etrace_grad(xs, ys, step_loss): a step_fn that "
                                    "calls the learner one step at a time would cut the gradient at every step")
        leaves = jax.tree.leaves(xs.data if hasattr(xs, "data") else xs)
        # the whole sequence; bad inputs (none, no time axis) are named by the shared driver's checks
        T = np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else 1
        return super().etrace_grad(xs, ys, step_loss, mask=mask, window=window or max(T, 1),
                                   return_losses=return_losses, reduction=reduction)

    def forward_step(self, params, hidden, others, args):
        """The plain model step for one sample (used for the forward-only floor)."""
        g = self.graph
        leaves = jax.tree.leaves((self.param_tuple(params), hidden, others, args))
        outs, hn, on, _ = g.run(leaves)
        h2, o2 = jax.tree.unflatten(jax.tree.structure((hidden, others)), list(hn) + list(on))
        return g.unflatten_out(outs), h2, o2


def _without_relations(graph):
    return dataclasses.replace(graph, relations=())
