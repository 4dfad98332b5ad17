"""`ThreeFactor`: eligibility trace x a modulator given per step (reward / dopamine-like).

Per traced weight ``W`` driving a hidden group (per sample, per step ``t``)::

    e^t[a]  = sum_s D^t[a][s] e^{t-1}[s] + dh_a^t/dW|_now      (D-RTRL's trace, after step t)
    dW^t    = M^t . e^t[a*]                                   (summed over positions, batch)

where ``a*`` is the state whose trace the modulator gates (the only state of a
single-state group, else named by ``state=``) and ``M^t`` is the third factor: a scalar,
one number per hidden unit, per sample, or both, broadcast numpy-style against the
group's ``(batch, *positions)``. Weights without a per-parameter trace (conv kernels, ...)
use the factorised trace: ``dW^t = pullback(x := ex_hat)(M^t * ef^t[a*])``.

The modulator replaces the learning signal: no loss reaches the traced weights. A loss
passed alongside trains the untraced parameters (readouts, ...) with their exact
instantaneous gradients; without one they get zero, as the report says.

The modulator is an argument of the jitted computation (never a constant captured at trace
time), so one compiled function serves every modulator sequence of a given shape.
Differentiating ``learner(x)`` has no meaning for this rule and raises: use
``step(x, modulator=m)``, ``etrace_grad(xs, modulator=ms)`` or ``train_online(...,
modulator=ms)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import unflatten_out_seq
from etprop.input_data import as_args
from etprop.algorithms.vjp import online_custom_vjp
from etprop.algorithms.etrace import TraceLearner, decay_option
from etprop.algorithms.traces import TraceRule
from etprop.errors import ArgumentError, NotSupportedError
from etprop.graph.compiler import Relation

__all__ = ["ThreeFactor"]


def _no_loss_gradient(res, cts):
    raise NotSupportedError("ThreeFactor has no loss gradient for its traced weights (the modulator replaces "
                            "the learning signal); use learner.step(x, modulator=m) or "
                            "learner.etrace_grad(xs, modulator=ms)")


class ThreeFactor(TraceLearner):
    """Three-factor rule ``dW = M^t . e^t`` with a per-call modulator ``M`` (see module doc).

    Args:
      model: the brainstate model.
      state: for hidden groups of several states, the name (or names, one per such group)
        of the hidden state whose eligibility trace the modulator gates, e.g. ``'v'``.
      decay_or_rank: input-trace decay of factorised traces (weights without a
        per-parameter trace), as in `ES_D_RTRL`.

    Memory: D-RTRL's traces. Per-step only (no windows, no closed-form chunks).
    """

    name = "three-factor"
    default_chunk = 0
    takes_post_signal = False  # its gradient is the modulator's, not a loss's

    def __init__(self, model, state: str | tuple | list | None = None, decay_or_rank: float | int = 0.9):
        super().__init__(model)
        if state is not None and not (isinstance(state, str) or
                                      (isinstance(state, (tuple, list)) and all(isinstance(s, str) for s in state))):
            raise ArgumentError(f"ThreeFactor: state must be a hidden state name or a tuple of names, got {state!r}")
        self.state = (state,) if isinstance(state, str) else tuple(state or ())
        self.alpha = decay_option(decay_or_rank)

    def trace_rule(self, rel: Relation) -> TraceRule:
        return self.param_or_io(rel)

    # -- compile ---------------------------------------------------------------------------------

    def compile_graph(self, *example_inputs, batch_size=None):
        super().compile_graph(*example_inputs, batch_size=batch_size)
        g = self.graph
        names = g.mf.hidden_names
        self._gated = {}
        for grp in g.groups:
            if not any(r.group == grp.index for r in g.relations):
                continue
            if grp.num_states == 1:
                self._gated[grp.index] = 0
                continue
            hit = [k for k, m in enumerate(grp.members) if names[m] in self.state]
            if len(hit) != 1:
                raise ArgumentError(f"ThreeFactor: hidden group [{grp.index}] has states {list(grp.names)}; pass "
                                    f"state='<one of them>' to choose whose eligibility trace the modulator "
                                    f"gates (got state={self.state or None})")
            self._gated[grp.index] = hit[0]
        self._traced = sorted({r.leaf for r in g.relations})
        self._window_fn = online_custom_vjp(self.window_forward, _no_loss_gradient)
        return self

    # -- the rule --------------------------------------------------------------------------------

    def _check_modulator(self, m, T: int | None):
        """Validate shape: ``(T,) + s`` (or ``s`` for one step), ``s`` broadcastable to every
        traced group's ``(batch, *positions)``."""
        if m is None:
            raise ArgumentError(f"{type(self).__name__}: pass modulator=... (the third factor): a scalar per step, "
                                f"or one number per hidden unit / per sample, time leading for a sequence")
        m = jnp.asarray(m)
        if not jnp.issubdtype(m.dtype, jnp.floating):
            m = m.astype(jnp.result_type(float))
        if T is not None:
            if m.ndim == 0 or m.shape[0] != T:
                raise ArgumentError(f"modulator must have a leading time axis of length {T}, got shape {m.shape}")
            core = m.shape[1:]
        else:
            core = m.shape
        lead = () if self.batch_size is None else (self.batch_size,)
        for gi in self._gated:
            target = lead + tuple(self.graph.groups[gi].shape)
            try:
                ok = np.broadcast_shapes(core, target) == target
            except ValueError:
                ok = False
            if not ok:
                raise ArgumentError(f"modulator of per-step shape {core} does not broadcast to hidden group [{gi}] "
                                    f"{target} (batch, *units): use () for a scalar, {target[len(lead):]} per unit"
                                    + (f", ({self.batch_size}, 1) per sample" if lead else ""))
        return m

    def _modulated(self, tr, shared, per, m) -> dict:
        """``{leaf: sum over relations of M . e}`` at the trace ``tr`` (after the step), summed over the batch."""
        g = self.graph
        lead = () if self.batch_size is None else (self.batch_size,)
        count = tr["count"][0] if self.batch_size is not None else tr["count"]
        out = {}
        for i, rel in enumerate(g.relations):
            ops = [sv if pv is None else pv for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            gated = self._gated[rel.group]
            M = jnp.broadcast_to(m, lead + tuple(g.groups[rel.group].shape))
            # the modulator is the learning signal of the gated state only (None: no signal)
            delta = [M if k == gated else None for k in range(g.groups[rel.group].num_states)]
            out[rel.leaf] = out.get(rel.leaf, 0.0) + self.relation_history(i, tr["rel"][i], delta, ops, count)
        return out

    def window_grads(self, p_leaves, p_tree, hidden, others, traces, a, y, mask, modulator, step_loss, mode):
        """One step (the driver's window of one): the traced weights get ``M^t . e^t`` at the trace
        after the step, the untraced ones the exact gradient of the step's loss (zero without one)."""
        g = self.graph
        h, o = jax.tree.leaves(hidden), jax.tree.leaves(others)
        outs, h2, o2, tr2, (shared, per) = self.window_forward(list(p_leaves), h, o, traces, a)
        out = unflatten_out_seq(g, outs)
        grads = [jnp.zeros_like(p) for p in p_leaves]
        ls = self._window_losses(step_loss, out, y, mask)
        if step_loss is not None:
            def loss_of(pl):
                plain_out = unflatten_out_seq(g, self.window_outputs(h, pl, o, a))
                return jnp.sum(self._window_losses(step_loss, plain_out, y, mask))

            gl = jax.grad(loss_of)(list(p_leaves))
            grads = [jnp.zeros_like(gv) if i in self._traced else gv for i, gv in enumerate(gl)]
        if modulator is not None:
            for leaf, val in self._modulated(tr2, shared, per, modulator[0]).items():
                grads[leaf] = grads[leaf] + val.astype(grads[leaf].dtype)
        hidden2, others2 = jax.tree.unflatten(jax.tree.structure((hidden, others)), list(h2) + list(o2))
        return (ls, out, hidden2, others2, tr2), grads

    # -- public API: the drivers of every trace learner, with the modulator as their input ---------

    def etrace_grad(self, xs=None, ys=None, step_loss: Callable | None = None, *sequences, modulator=None,
                    mask=None, window: int = 1, closed_form_chunk: int | None = None, return_losses=False,
                    step_fn: Callable | None = None, reduction: str = "sum"):
        """Accumulate ``sum_t M^t . e^t`` over a sequence.

        Args:
          xs: inputs, time leading.
          modulator: ``(T,) + s`` with ``s`` broadcastable to ``(batch, *units)`` of every
            traced group: ``(T,)`` a scalar per step, ``(T, n)`` per unit, ``(T, B, 1)`` per
            sample. Traced by jit: new values never recompile.
          ys, step_loss: optional; train the untraced parameters (readouts) exactly.

        Returns ``(grads, loss)`` (``loss`` 0 without ``step_loss``), like `etrace_grad`.
        """
        self._require_graph()
        if step_fn is not None or sequences:
            raise NotSupportedError("ThreeFactor.etrace_grad takes (xs, ys, step_loss, modulator=...); the "
                                    "step_fn convention differentiates a loss, which this rule does not use")
        if window != 1:
            raise ArgumentError(f"{type(self).__name__} learns per step: window must be 1, got {window!r}")
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        T = jax.tree.leaves(args)[0].shape[0]
        m = self._check_modulator(modulator, T)
        grads, losses = self._run_sequence(args, ys, step_loss, mask, window=1, modulator=m)
        total = jnp.sum(losses)
        return (grads, total, losses) if return_losses else (grads, total)

    def step(self, inputs, target=None, loss_fn: Callable | None = None, *, modulator=None):
        """Advance one step; returns ``(out, grads, loss)`` with ``grads = M . e`` for the
        traced weights (``modulator`` of shape ``s`` as in `etrace_grad`, no time axis)."""
        self._require_graph()
        args = as_args(inputs, multi=False)
        self._check_args(args, False)
        m = self._check_modulator(modulator, None)
        seq = jax.tree.map(lambda a: jnp.expand_dims(a, 0), args)
        ys = None if target is None else jax.tree.map(lambda a: jnp.expand_dims(a, 0), target)
        grads, losses, out = self._run_sequence(seq, ys, loss_fn, None, window=1, return_out=True, where="step",
                                                modulator=m[None])
        return jax.tree.map(lambda a: a[0], out), grads, losses[0]

    def train_online(self, xs, ys, step_loss, optimizer, opt_state=None, *, modulator=None, mask=None):
        """Update the parameters with ``optimizer`` at every step from ``M^t . e^t`` (and the loss
        for untraced parameters). Returns ``(opt_state, losses)``."""
        self._require_graph()
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        T = jax.tree.leaves(args)[0].shape[0]
        m = self._check_modulator(modulator, T)
        return self._train_online(args, ys, step_loss, optimizer, opt_state, mask, m)

    def describe_kind(self, rel, kind):
        names = self.graph.groups[rel.group].names
        gated = names[self._gated[rel.group]] if hasattr(self, "_gated") else "?"
        what = "per-parameter" if kind == "param" else f"factorised (alpha={self.alpha_of(rel):g})"
        return f"three-factor: modulator x {what} eligibility trace of '{gated}'"

    def report(self) -> str:
        return (super().report() + "\nlearning signal: the modulator given per call; untraced parameters learn "
                "from the loss passed alongside (zero gradient without one)")
