"""True online learning: an optimiser update at every step, from that step's online gradient.

`OnlineUpdates` is a mixin of the learners' drivers (`etprop.algorithms.drivers`): the stateful
`train_online` and the pure `online_fn` it runs on (also the training command's ``--update
step`` and three-factor learning with its modulator). Each step is the drivers' `window_grads`
of a window of one, then ``optimizer.update``; scanned over the sequence, jitted once per
(loss, optimizer, finite check).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from etprop.algorithms import finite
from etprop.algorithms.sequence import check_mask, check_step_loss, check_targets
from etprop.errors import ArgumentError
from etprop.input_data import as_args

__all__ = ["OnlineUpdates"]


class OnlineUpdates:
    """`train_online` and `online_fn` (see the module docstring)."""

    def train_online(self, xs, ys, step_loss: Callable, optimizer, opt_state=None, *, mask=None):
        """True online learning: update the parameters with ``optimizer`` at every step.

        Args:
          xs, ys: inputs and targets, time leading.
          step_loss: ``step_loss(out, target) -> scalar`` for one sample.
          optimizer: an optax ``GradientTransformation`` (anything with ``init`` and
            ``update(grads, state, params)``); gradients are ``{param name: array}``.
          opt_state: the optimizer state to continue from (``optimizer.init`` if None).
          mask: optional ``(T,)`` weights of the step losses.

        Returns:
          ``(opt_state, losses)``; the model's parameters, hidden states and traces advance.
        """
        self._require_graph()
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        check_step_loss(step_loss, "train_online(xs, ys, step_loss, optimizer)", required=True)
        return self._train_online(args, ys, step_loss, optimizer, opt_state, mask, None)

    def _train_online(self, args, ys, step_loss, optimizer, opt_state, mask, modulator):
        """The per-step optimiser loop of every trace learner (``modulator``: three-factor's input)."""
        T = jax.tree.leaves(args)[0].shape[0]
        check_targets(ys, T)
        mask = check_mask(mask, T)
        if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
            raise ArgumentError(f"train_online: 'optimizer' must be an optax GradientTransformation (with init and "
                                f"update), e.g. optax.adam(1e-3); got {optimizer!r}")
        params = self.params()
        if opt_state is None:
            opt_state = optimizer.init(params)
        check = bool(self.check_finite)
        key = ("online", step_loss, optimizer, check)
        fn = self._jit_cache.get(key)
        if fn is None:
            fn = self._jit_cache[key] = jax.jit(self._online_scan(step_loss, optimizer, check, False))
        mf = self.graph.mf
        _, hidden, others = mf.values()
        args, ys = self.put_inputs(args, 1), self.put_inputs(ys, 1)
        (params, opt_state, hidden, others, traces), losses, summary, _ = fn(params, opt_state, hidden, others,
                                                                             self.etrace.value, args, ys, mask,
                                                                             modulator)
        self.set_params(params)
        mf.write(hidden, others)
        self.etrace.value = traces
        if check:
            items = self._scan_items(len(args), traces)
            finite.raise_host("train_online", items, summary)
        return opt_state, losses

    def _online_scan(self, step_loss, optimizer, check: bool, return_out: bool):
        """``run(params, opt_state, hidden, others, traces, args, ys, mask, modulator) -> (carry,
        losses, finite-check summary or None, outputs or None)``: an optimiser update at every step
        (`window_grads` of a window of one), scanned over the sequence; pure."""
        def run(params, opt_state, hidden, others, traces, args, ys, mask, mods):
            def body(carry, inp):
                p, st, h, o, tr = carry
                a, y, m, mod = jax.tree.map(lambda v: v[None], inp)
                p_leaves, p_tree = jax.tree.flatten(self.param_tuple(p))
                (ls, out, h2, o2, tr2), g_leaves = self.window_grads(p_leaves, p_tree, h, o, tr, a, y, m, mod,
                                                                     step_loss, "window")
                h2, o2, tr2 = self.constrain_carry(h2, o2, tr2)
                row = None
                if check:  # the parameters this step used, and what it computed from them
                    row = self._scan_row(a, finite.flags(p_leaves), h2, tr2, out, ls, g_leaves)
                updates, st = optimizer.update(self._grads_to_dict(g_leaves, p), st, p)
                p = jax.tree.map(lambda a_, b_: a_ + b_, p, updates)
                out = jax.tree.map(lambda v: v[0], out) if return_out else None
                return (p, st, h2, o2, tr2), (jnp.sum(ls), row, out)

            carry, (losses, rows, outs) = jax.lax.scan(body, (params, opt_state, hidden, others, traces),
                                                       (args, ys, mask, mods))
            return carry, losses, (finite.summarise(rows) if check else None), outs

        return run

    def online_fn(self, step_loss: Callable, optimizer, *, return_out: bool = False) -> Callable:
        """The pure computation behind `train_online`, for users who carry state themselves (as
        `sequence_fn` is for `etrace_grad`; the training command's ``--update step`` runs it).

        Returns ``fn(params, opt_state, hidden, others, traces, xs, ys, mask)`` returning
        ``(params', opt_state', hidden', others', traces', losses (T,)[, outputs])``: an
        ``optimizer`` update at every step from that step's online gradient of ``mask_t mean_b
        step_loss``. It reads and writes no state and makes no finite check; jit it.
        """
        self._require_graph()
        run = self._online_scan(step_loss, optimizer, False, return_out)

        def fn(params, opt_state, hidden, others, traces, xs, ys, mask):
            carry, losses, _, outs = run(params, opt_state, hidden, others, traces, as_args(xs, multi=True), ys,
                                         mask, None)
            return tuple(carry) + (losses,) + ((outs,) if return_out else ())

        return fn
