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
from etprop.algorithms.drivers import as_args
from etprop.algorithms.vjp import online_custom_vjp
from etprop.algorithms.etrace import _TraceRules, _decay
from etprop.errors import ArgumentError, NotSupportedError
from etprop.graph.compiler import Relation

__all__ = ["ThreeFactor"]


def _no_loss_gradient(res, cts):
    raise NotSupportedError("ThreeFactor has no loss gradient for its traced weights (the modulator replaces "
                            "the learning signal); use learner.step(x, modulator=m) or "
                            "learner.etrace_grad(xs, modulator=ms)")


class ThreeFactor(_TraceRules):
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

    def __init__(self, model, state: str | tuple | list | None = None, decay_or_rank: float | int = 0.9):
        super().__init__(model)
        if state is not None and not (isinstance(state, str) or
                                      (isinstance(state, (tuple, list)) and all(isinstance(s, str) for s in state))):
            raise ArgumentError(f"ThreeFactor: state must be a hidden state name or a tuple of names, got {state!r}")
        self.state = (state,) if isinstance(state, str) else tuple(state or ())
        self.alpha = _decay(decay_or_rank)

    def relation_kind(self, rel: Relation) -> str:
        return "param" if rel.diagonal else "io"

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
        self._fwd, self._plain = self._batched_fns()
        self._window_fn = online_custom_vjp(self._fwd, _no_loss_gradient)
        return self

    def _batched_fns(self):
        mf = self.graph.mf
        oax = [0 if b else None for st, b in zip(mf.other_states, mf.batched_other)
               for _ in jax.tree.leaves(st.value)]
        if self.batch_size is None:
            return self._sample_window_fwd, lambda h, p, o, a: self._sample_window_plain(p, h, o, a)

        def fwd(p, h, o, tr, a):
            f = jax.vmap(lambda hh, oo, tt, aa: self._sample_window_fwd(p, hh, oo, tt, aa),
                         in_axes=(0, oax, 0, 1), out_axes=(1, 0, oax, 0, (None, 0)))
            return f(h, o, tr, a)

        def plain(h, p, o, a):
            return jax.vmap(lambda h1, o1, a1: self._sample_window_plain(p, h1, o1, a1),
                            in_axes=(0, oax, 1), out_axes=1)(h, o, a)

        return fwd, plain

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
            a = self._gated[rel.group]
            trace = tr["rel"][i]
            if self._kinds[i] == "param":
                M = jnp.broadcast_to(m, lead + tuple(g.groups[rel.group].shape)).astype(trace[a].dtype)
                val = self.bsum(self.expand(rel, ops, M) * trace[a])
            else:
                ex_hat, ef = self.io_snapshot(rel, trace, count)
                c = jnp.broadcast_to(m, ef[a].shape).astype(ef[a].dtype) * ef[a]
                val = (self.param_vjp_sum(rel, ops, c) if rel.n_x == 0
                       else self.param_vjp_sum(rel, ops, c, x_override=[ex_hat]))
            out[rel.leaf] = out.get(rel.leaf, 0.0) + val
        return out

    def _one_step(self, p_leaves, h, o, tr, a1, y1, mask1, m, step_loss):
        """One step: ``(outs, h', o', traces', grad leaves, loss)``; ``a1``/``y1`` lead with time 1."""
        outs, h2, o2, tr2, (shared, per) = self._fwd(p_leaves, h, o, tr, a1)
        grads = [jnp.zeros_like(p) for p in p_leaves]
        loss = jnp.zeros(())
        if step_loss is not None:
            def loss_of(pl):
                out = unflatten_out_seq(self.graph, self._plain(list(h), pl, o, a1))
                return jnp.sum(self._window_losses(step_loss, out, y1, mask1))

            loss, gl = jax.value_and_grad(loss_of)(list(p_leaves))
            grads = [jnp.zeros_like(gv) if i in self._traced else gv for i, gv in enumerate(gl)]
        if m is not None:
            for leaf, val in self._modulated(tr2, shared, per, m).items():
                grads[leaf] = grads[leaf] + val.astype(grads[leaf].dtype)
        return outs, h2, o2, tr2, grads, loss

    def _compiled_three(self, step_loss, with_mod: bool, return_out: bool, optimizer=None):
        key = ("three", step_loss, with_mod, return_out, optimizer)
        fn = self._jit_cache.get(key)
        if fn is not None:
            return fn
        g = self.graph

        def run(params, hidden, others, traces, args, ys, mask, ms, opt_state):
            p_leaves, p_tree = jax.tree.flatten(self._param_tuple(params))
            h_leaves, o_leaves = jax.tree.leaves(hidden), jax.tree.leaves(others)

            def body(carry, inp):
                pl, h, o, tr, acc, st = carry
                a, y, mk, m = inp
                one = lambda tree: jax.tree.map(lambda v: v[None], tree)
                outs, h2, o2, tr2, gr, loss = self._one_step(pl, h, o, tr, one(a), one(y), mk[None],
                                                             m if with_mod else None, step_loss)
                if optimizer is not None:  # online: update at every step
                    gd = dict(zip(g.mf.param_names, jax.tree.unflatten(p_tree, gr)))
                    pd = dict(zip(g.mf.param_names, jax.tree.unflatten(p_tree, pl)))
                    upd, st = optimizer.update(gd, st, pd)
                    pd = jax.tree.map(lambda x, d: x + d, pd, upd)
                    pl = jax.tree.leaves(self._param_tuple(pd))
                acc = [x + y_ for x, y_ in zip(acc, gr)]
                return (pl, list(h2), list(o2), tr2, acc, st), (loss, jax.tree.map(lambda v: v[0], outs))

            init = (p_leaves, h_leaves, o_leaves, traces, [jnp.zeros_like(p) for p in p_leaves], opt_state)
            (pl, h, o, tr, acc, st), (losses, outs) = jax.lax.scan(body, init, (args, ys, mask, ms))
            h2, o2 = jax.tree.unflatten(jax.tree.structure((hidden, others)), list(h) + list(o))
            new_params = dict(zip(g.mf.param_names, jax.tree.unflatten(p_tree, pl)))
            res = (acc, losses, h2, o2, tr, new_params, st)
            return res + (unflatten_out_seq(g, outs),) if return_out else res

        fn = self._jit_cache[key] = jax.jit(run)
        return fn

    def _run_sequence(self, args, ys, step_loss, mask, *, window, chunk_size=None, return_out=False,
                      modulator=None, optimizer=None, opt_state=None):
        if window != 1:
            raise ArgumentError(f"{type(self).__name__} learns per step: window must be 1, got {window!r}")
        T = jax.tree.leaves(args)[0].shape[0]
        mask = jnp.ones((T,)) if mask is None else jnp.asarray(mask)
        if mask.shape != (T,):
            raise ArgumentError(f"mask must have shape ({T},), got {mask.shape}")
        with_mod = modulator is not None
        ms = modulator if with_mod else jnp.zeros((T,))
        mf = self.graph.mf
        params, hidden, others = mf.values()
        params = dict(zip(mf.param_names, params))
        fn = self._compiled_three(step_loss, with_mod, return_out, optimizer)
        res = fn(params, hidden, others, self.etrace.value, args, ys, mask, ms, opt_state)
        acc, losses, hidden, others, traces, new_params, opt_state = res[:7]
        mf.write(hidden, others)
        self.etrace.value = traces
        if optimizer is not None:
            self.set_params(new_params)
            return opt_state, losses
        grads = self._grads_to_dict(acc, params)
        return (grads, losses, res[7]) if return_out else (grads, losses)

    # -- public API --------------------------------------------------------------------------------

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
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        T = jax.tree.leaves(args)[0].shape[0]
        m = self._check_modulator(modulator, T)
        grads, losses = self._run_sequence(args, ys, step_loss, mask, window=window, modulator=m)
        self._check_finite("etrace_grad", args, grads, losses)
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
        grads, losses, out = self._run_sequence(seq, ys, loss_fn, None, window=1, return_out=True, modulator=m[None])
        self._check_finite("step", args, grads, losses)
        return jax.tree.map(lambda a: a[0], out), grads, losses[0]

    def train_online(self, xs, ys, step_loss, optimizer, opt_state=None, *, modulator=None, mask=None):
        """Update the parameters with ``optimizer`` at every step from ``M^t . e^t`` (and the loss
        for untraced parameters). Returns ``(opt_state, losses)``."""
        self._require_graph()
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        T = jax.tree.leaves(args)[0].shape[0]
        m = self._check_modulator(modulator, T)
        if opt_state is None:
            opt_state = optimizer.init(self.params())
        opt_state, losses = self._run_sequence(args, ys, step_loss, mask, window=1, modulator=m,
                                               optimizer=optimizer, opt_state=opt_state)
        self._check_finite("train_online", args, self.params(), losses)
        return opt_state, losses

    def describe_kind(self, rel, kind):
        names = self.graph.groups[rel.group].names
        gated = names[self._gated[rel.group]] if hasattr(self, "_gated") else "?"
        what = "per-parameter" if kind == "param" else f"factorised (alpha={self.alpha_of(rel):g})"
        return f"three-factor: modulator x {what} eligibility trace of '{gated}'"

    def report(self) -> str:
        return (super().report() + "\nlearning signal: the modulator given per call; untraced parameters learn "
                "from the loss passed alongside (zero gradient without one)")
