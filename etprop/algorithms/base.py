"""The online learner: one per-sample step that advances hidden states and traces
and returns gradients; batching by `jax.vmap`; sequence drivers on top.

Per step and sample (shapes per sample; ``P`` positions and ``S`` states of a group):

1. one reverse pass of the step's loss ``L^t`` gives the learning signal
   ``delta = dL^t/dh^{t-1}`` (all paths, including those that bypass ``h^t``, such as
   a spike read out in the step that emits it) and the exact gradient of every
   parameter through the current step with ``h^{t-1}`` held fixed -- so no
   parameter ever gets a silent zero;
2. one linearisation of the step with ETP inputs cut gives, by JVPs, the
   per-position blocks ``D`` (``S x S`` per position) and the ``y -> h``
   sensitivities ``Df`` of every relation;
3. each relation adds its *history* term ``delta . e^{t-1}`` (what earlier steps
   contribute, through the trace of ``dh^{t-1}/dtheta``) to its parameter's
   gradient, then its trace advances to ``e^t = D e^{t-1} + (y -> h) pullback of Df``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError, NotSupportedError
from etprop.graph._jaxpr import bind_eqn
from etprop.graph.compiler import ETraceGraph, Relation, compile_graph
from etprop.input_data import MultiStepData, SingleStepData
from etprop.trace_state import EligibilityTrace

__all__ = ["OnlineAlgorithm", "StepSignals"]


@dataclasses.dataclass
class StepSignals:
    """What one step exposes to the trace rules (per sample)."""

    D: dict  # group -> [[D_as for s] for a], each of the group's shape
    Df: dict  # eqn index -> {group -> [Df_a]}
    delta: list  # per hidden state, dL^t/dh^{t-1}
    operands: dict  # eqn index -> operand values (mantissas)


def _mantissa(x):
    return u.get_mantissa(x)


class OnlineAlgorithm(brainstate.nn.Module):
    """Base of the trace-based learners. Subclasses choose a trace kind per relation.

    Args:
      model: a brainstate module whose ``update(*inputs)`` advances one step and
        uses ETP operators for the weights to be learned online.
    """

    name = "online"

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.graph: ETraceGraph | None = None
        self.batch_size = None

    # -- compilation ---------------------------------------------------------------------------

    def compile_graph(self, *example_inputs, batch_size: int | None = None):
        """Trace the model on ``example_inputs`` and allocate traces. Returns self."""
        example_inputs = _unwrap_single(example_inputs)
        self.graph = compile_graph(self.model, *example_inputs, batch_size=batch_size)
        self.batch_size = batch_size
        self._kinds = {i: self.relation_kind(r) for i, r in enumerate(self.graph.relations)}
        self.etrace = EligibilityTrace(self._batch(self._init_sample_traces()))
        self._hidden0 = self.graph.mf.values()[1]  # what reset() returns the hidden states to
        self._jit_cache = {}
        return self

    def _require_graph(self):
        if self.graph is None:
            raise ArgumentError(f"{type(self).__name__}: call compile_graph(*example_inputs) first "
                                f"(or use etprop.compile)")

    def relation_kind(self, rel: Relation) -> str:
        """``'param'`` (per-parameter trace) or ``'io'`` (factorised trace)."""
        raise NotImplementedError

    def _init_sample_traces(self):
        return {"rel": [self.init_relation_trace(r, self._kinds[i]) for i, r in enumerate(self.graph.relations)],
                "count": jnp.zeros((), jnp.float32)}

    def _batch(self, tree):
        if self.batch_size is None:
            return tree
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.batch_size,) + a.shape), tree)

    def reset_traces(self):
        """Zero every eligibility trace."""
        self._require_graph()
        self.etrace.value = self._batch(self._init_sample_traces())

    def reset(self, *, hidden: bool = True):
        """Zero the traces and (by default) return hidden states to their values at compile time."""
        self.reset_traces()
        if hidden:
            self.graph.mf.write(hidden=self._hidden0)

    # -- trace rules (per relation) -----------------------------------------------------------

    def init_relation_trace(self, rel: Relation, kind: str):
        raise NotImplementedError

    def update_relation(self, rel: Relation, kind: str, trace, sig: StepSignals, group_delta, count):
        """Returns ``(new trace, history gradient for rel.leaf)``."""
        raise NotImplementedError

    def trace_bytes(self, rel: Relation) -> int:
        """Bytes of one relation's trace for one sample."""
        i = self.graph.relations.index(rel)
        t = self.init_relation_trace(rel, self._kinds[i])
        return int(sum(np.prod(np.shape(a)) * jnp.result_type(a).itemsize for a in jax.tree.leaves(t)))

    def report(self) -> str:
        """The graph report with each traced weight's algorithm and trace memory."""
        self._require_graph()
        rels = self.graph.relations

        def algo(r):
            kind = self._kinds[rels.index(r)]
            return f"[{type(self).__name__}: {self.describe_kind(r, kind)}]"

        head = f"{type(self).__name__} on {type(self.model).__name__} (batch_size={self.batch_size})"
        return head + "\n" + self.graph.report(algorithm_of=algo, memory_of=self.trace_bytes)

    def describe_kind(self, rel, kind) -> str:
        return {"param": "per-parameter trace (D-RTRL)", "io": "factorised trace (ES-D-RTRL)"}[kind]

    # -- one step ------------------------------------------------------------------------------

    def _operand_pos(self, rel: Relation) -> int:
        n = rel.call.in_tree.num_leaves
        return rel.call.unflatten(list(range(n)))[1][rel.param]

    def param_vjp(self, rel: Relation, operands, cotangent, x_override=None):
        """Per-sample pullback of the ETP equation w.r.t. the relation's parameter operand."""
        eqn = self.graph.closed.jaxpr.eqns[rel.eqn_index]
        pos = self._operand_pos(rel)
        ops = list(operands)
        if x_override is not None:
            for j, xv in enumerate(x_override):
                ops[j] = xv.astype(jnp.result_type(ops[j]))

        def f(p):
            o = list(ops)
            o[pos] = p
            return bind_eqn(eqn, o)[0]

        _, pull = jax.vjp(f, ops[pos])
        return pull(cotangent.astype(eqn.outvars[0].aval.dtype))[0]

    def expand(self, rel: Relation, operands, v):
        x, params, aux = rel.call.unflatten(list(operands))
        return rel.call.out_to_param(rel.param, v, {k: _mantissa(p) for k, p in params.items()}, aux)

    def sample_step(self, params, hidden, others, traces, args, target, loss_fn):
        """One step for one sample. Returns ``(out, hidden', others', traces', grad leaves, loss)``."""
        g = self.graph
        p_leaves = jax.tree.leaves(self._param_tuple(params))
        rest, rest_tree = jax.tree.flatten((hidden, others, args))
        n_p, n_h, n_out = g.n_param_leaves, g.n_hidden, g.n_out
        h_leaves = rest[:n_h]
        tail = rest[n_h:]
        etp_ids = sorted(g.etp_eqns)

        def fwd(hp, pl):
            outs, hn, on, rec = g.run(list(pl) + list(hp) + tail, record=etp_ids)
            out = g.unflatten_out(outs)
            loss = loss_fn(out, target) if loss_fn is not None else jnp.zeros(())
            return jnp.asarray(_mantissa(loss), jnp.result_type(float)), (out, hn, on, rec)

        # delta = dL^t/dh^{t-1} over all paths; g_direct = dL^t/dtheta with h^{t-1} fixed
        (loss, (out, hn, on, rec)), (delta, g_direct) = jax.value_and_grad(
            fwd, argnums=(0, 1), has_aux=True)(list(h_leaves), p_leaves)

        sig = self._signals(p_leaves, h_leaves, tail, rec, delta)
        grads = list(g_direct)
        new_rel = []
        count = traces["count"]
        for i, rel in enumerate(g.relations):
            kind = self._kinds[i]
            members = g.groups[rel.group].members
            gd = [delta[m] for m in members]
            tr, gh = self.update_relation(rel, kind, traces["rel"][i], sig, gd, count)
            new_rel.append(tr)
            grads[rel.leaf] = grads[rel.leaf] + gh.astype(grads[rel.leaf].dtype)
        new_traces = {"rel": new_rel, "count": jnp.minimum(count + 1, 1e30)}
        new_hidden, new_others = jax.tree.unflatten(
            jax.tree.structure((hidden, others)), list(hn) + list(on))
        return out, new_hidden, new_others, new_traces, grads, loss

    def _signals(self, p_leaves, h_leaves, tail, rec, delta) -> StepSignals:
        g = self.graph
        n_h = g.n_hidden
        zeros_y = {i: jnp.zeros(a.shape, a.dtype) for i, a in g.etp_out_avals.items()}

        def dyn(h, py):
            return g.run(list(p_leaves) + list(h) + tail, etp_pert=py, cut=True)[1]

        _, lin = jax.linearize(dyn, list(h_leaves), zeros_y)
        zero_h = [jnp.zeros_like(h) for h in h_leaves]
        zero_py = {i: jnp.zeros_like(z) for i, z in zeros_y.items()}
        D = {}
        need_groups = {r.group for r in g.relations}
        for grp in g.groups:
            if grp.index not in need_groups:
                continue
            cols = []
            for s in grp.members:
                t = list(zero_h)
                t[s] = jnp.ones_like(h_leaves[s])
                out = lin(t, zero_py)
                cols.append([out[a] for a in grp.members])
            D[grp.index] = [[cols[si][ai] for si in range(len(grp.members))] for ai in range(len(grp.members))]
        Df = {}
        for eqn_idx in sorted({r.eqn_index for r in g.relations}):
            py = dict(zero_py)
            py[eqn_idx] = jnp.ones_like(zeros_y[eqn_idx])
            out = lin(zero_h, py)
            Df[eqn_idx] = {grp: [out[a] for a in g.groups[grp].members]
                           for grp in {r.group for r in g.relations if r.eqn_index == eqn_idx}}
        return StepSignals(D, Df, list(delta), rec)

    # -- batched step --------------------------------------------------------------------------

    def _axes(self):
        g = self.graph
        others_axes = tuple(0 if b else None for b in g.mf.batched_other)
        return others_axes

    def batched_step(self, params, hidden, others, traces, args, target, loss_fn):
        """`sample_step` over the batch (vmap) when ``batch_size`` is set; grads and loss averaged."""
        if self.batch_size is None:
            return self.sample_step(params, hidden, others, traces, args, target, loss_fn)
        oax = self._axes()
        f = jax.vmap(lambda h, o, t, a, y: self.sample_step(params, h, o, t, a, y, loss_fn),
                     in_axes=(0, oax, 0, 0, 0), out_axes=(0, 0, oax, 0, 0, 0))
        out, hn, on, tr, grads, loss = f(hidden, others, traces, args, target)
        return out, hn, on, tr, [jnp.mean(gl, axis=0) for gl in grads], jnp.mean(loss)

    # -- stateful API --------------------------------------------------------------------------

    def params(self) -> dict:
        """``{name: value}`` of the model's parameters, in the structure gradients use."""
        self._require_graph()
        mf = self.graph.mf
        return {mf.name(s): s.value for s in mf.param_states}

    def set_params(self, values: dict) -> None:
        mf = self.graph.mf
        for s in mf.param_states:
            s.value = values[mf.name(s)]

    def _param_tuple(self, params: dict) -> tuple:
        """Parameter values in the compiled order (the graph's flat-operand order)."""
        return tuple(params[n] for n in self.graph.mf.param_names)

    def _grads_to_dict(self, grad_leaves, params):
        values = self._param_tuple(params)
        tup = jax.tree.unflatten(jax.tree.structure(values), list(grad_leaves))
        return dict(zip(self.graph.mf.param_names, tup))

    def step(self, inputs, target=None, loss_fn: Callable | None = None):
        """Advance one step with traces; returns ``(out, grads, loss)``.

        ``grads`` is ``{param name: gradient}`` of ``mean_b loss_fn(out_b, target_b)`` (zero
        loss if ``loss_fn`` is None), in the structure of `params`.
        """
        self._require_graph()
        args = _as_args(inputs, multi=False)
        params = self.params()
        mf = self.graph.mf
        _, hidden, others = mf.values()
        out, hn, on, tr, grads, loss = self.batched_step(params, hidden, others, self.etrace.value, args,
                                                         target, loss_fn)
        mf.write(hn, on)
        self.etrace.value = tr
        return out, self._grads_to_dict(grads, params), loss

    def __call__(self, inputs, *rest):
        """Run one step (plain array / `SingleStepData`) and return the model output."""
        return self.step(inputs)[0]

    def etrace_grad(self, xs, ys=None, step_loss: Callable | None = None, *, mask=None, return_losses=False):
        """Scan a sequence, advancing traces, and accumulate online gradients.

        Args:
          xs: inputs with time as the leading axis (an array, a tuple, or `MultiStepData`).
          ys: targets with time leading (any pytree), passed to ``step_loss`` per step.
          step_loss: ``step_loss(out, target) -> scalar`` for one sample.
          mask: optional ``(T,)`` weights of each step's loss.

        Returns:
          ``(grads, loss)`` where ``loss = sum_t mask_t * mean_b step_loss``, ``grads`` its
          online gradient; with ``return_losses`` also the per-step losses.
        """
        self._require_graph()
        args = _as_args(xs, multi=True)
        T = jax.tree.leaves(args)[0].shape[0]
        mask = jnp.ones((T,)) if mask is None else jnp.asarray(mask)
        params = self.params()
        mf = self.graph.mf
        _, hidden, others = mf.values()
        fn = self._compiled_scan(step_loss)
        grads, losses, hn, on, tr = fn(params, hidden, others, self.etrace.value, args, ys, mask)
        mf.write(hn, on)
        self.etrace.value = tr
        grads = self._grads_to_dict(grads, params)
        total = jnp.sum(losses)
        return (grads, total, losses) if return_losses else (grads, total)

    def etrace_evolve(self, xs):
        """Run a sequence without a loss: hidden states and traces advance (warm-up)."""
        _, _ = self.etrace_grad(xs, None, None)

    def _compiled_scan(self, step_loss):
        key = step_loss
        fn = self._jit_cache.get(key)
        if fn is None:
            def run(params, hidden, others, traces, args, ys, mask):
                zero = [jnp.zeros_like(l) for l in jax.tree.leaves(self._param_tuple(params))]

                def body(carry, inp):
                    h, o, tr, acc = carry
                    a, y, m = inp
                    scaled = None if step_loss is None else (lambda out, tgt: m * step_loss(out, tgt))
                    _, h2, o2, tr2, g, loss = self.batched_step(params, h, o, tr, a, y, scaled)
                    acc = [x + gi for x, gi in zip(acc, g)]
                    return (h2, o2, tr2, acc), loss

                (h, o, tr, acc), losses = jax.lax.scan(body, (hidden, others, traces, zero), (args, ys, mask))
                return acc, losses, h, o, tr

            fn = self._jit_cache[key] = jax.jit(run)
        return fn


def _unwrap_single(inputs: tuple) -> tuple:
    if len(inputs) == 1 and isinstance(inputs[0], SingleStepData):
        return inputs[0].data
    if any(isinstance(a, MultiStepData) for a in inputs):
        raise ArgumentError("compile_graph takes the inputs of ONE step; pass xs[0] rather than MultiStepData")
    return inputs


def _as_args(inputs, *, multi: bool) -> tuple:
    if isinstance(inputs, MultiStepData):
        if not multi:
            raise NotSupportedError("step() takes one time step; use etrace_grad for MultiStepData")
        return inputs.data
    if isinstance(inputs, SingleStepData):
        if multi:
            raise ArgumentError("etrace_grad needs inputs with a leading time axis, not SingleStepData")
        return inputs.data
    return inputs if isinstance(inputs, tuple) else (inputs,)
