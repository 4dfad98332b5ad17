"""The online learner: a window of ``K >= 1`` steps as one custom-VJP function.

Forward (per sample; batching by `jax.vmap`): run the ``K`` steps, and at each step
linearise the step with ETP inputs cut to get the per-position blocks ``D``
(``S x S`` per position of a group) and the ``y -> h`` sensitivities ``Df``, and
advance every relation's trace.

Backward, given the cotangent of the window's outputs:

* exact reverse mode through the window with the window's initial hidden state
  held fixed: the gradient of every parameter inside the window -- so no
  parameter is ever left at zero -- and the learning signal
  ``delta = dL/dh^{t0}`` over all paths (also those that bypass later hidden
  states, such as a spike read out in the step that emits it);
* for each relation, the history term ``delta . e^{t0}``: what steps before the
  window contribute through the trace of ``dh^{t0}/dtheta``.

With ``K = 1`` this is the per-step online gradient. No cotangent flows into the
window's initial hidden state, so consecutive calls never backpropagate through
time: the traces carry that credit. The same function serves ``learner(x)`` under
`brainstate.transform.grad` and the sequence drivers (`etprop.algorithms.drivers`, a mixin of
`OnlineAlgorithm`: `etrace_grad`, `etrace_evolve`, `train_online`, `sequence_fn`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError, NotSupportedError, OperandError
from etprop.algorithms.chunked import make_chunk
from etprop.algorithms.drivers import SequenceDrivers, as_args
from etprop.algorithms.finite import call_window
from etprop.algorithms.vjp import batch_sum, online_custom_vjp, sum_terms, tree_sum0
from etprop.fncache import LRUCache
from etprop.graph import executor
from etprop.graph.compiler import ETraceGraph, Relation, compile_graph
from etprop.input_data import MultiStepData, SingleStepData
from etprop.trace_state import EligibilityTrace

__all__ = ["OnlineAlgorithm", "StepSignals", "unflatten_out_seq"]


@dataclasses.dataclass
class StepSignals:
    """Per-step, per-sample quantities the trace rules consume."""

    D: dict  # group -> [[D_as for s] for a], each of the group's shape
    Df: dict  # eqn index -> {group -> [Df_a]}
    operands: dict  # eqn index -> operand values (mantissas)


def _mantissa(x):
    return u.get_mantissa(x)


class OnlineAlgorithm(SequenceDrivers, brainstate.nn.Module):
    """Base of the trace-based learners. Subclasses choose a trace kind per relation.

    Args:
      model: a brainstate module whose ``update(*inputs)`` advances one step and
        uses ETP operators for the weights to be learned online.
    """

    name = "online"
    #: what compile_graph does when a hidden state drives one of another shape outside an ETP
    #: operator (a path no per-position trace holds): ``"error"`` (NotSupportedError) or
    #: ``"warn"`` (drop the path from the traces, an approximation). ``etprop.compile(...,
    #: cross_shape="warn")`` sets it.
    cross_shape = "error"
    #: learners whose gradient holds every hidden-to-hidden path (BPTT, RTRL) ignore it
    exact_across_groups = False

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.graph: ETraceGraph | None = None
        self.batch_size = None

    # -- compilation ---------------------------------------------------------------------------

    def compile_graph(self, *example_inputs, batch_size: int | None = None):
        """Trace the model on one step's ``example_inputs`` and allocate traces. Returns self."""
        example_inputs = _unwrap_single(example_inputs)
        self.graph = compile_graph(self.model, *example_inputs, batch_size=batch_size)
        self._check_cross_shape()
        self.batch_size = batch_size
        self._arg_shapes = [tuple(np.shape(a)) for a in jax.tree.leaves(example_inputs)]
        self._arg_dtypes = [jnp.result_type(u.get_mantissa(a)) for a in jax.tree.leaves(example_inputs)]
        self._example_sample = (example_inputs if batch_size is None
                                else jax.tree.map(lambda a: a[0], example_inputs))
        self._arg_tree = jax.tree.structure(example_inputs)
        self._kinds = {i: self.relation_kind(r) for i, r in enumerate(self.graph.relations)}
        self.etrace = EligibilityTrace(self._batch(self._init_sample_traces()))
        self._hidden0 = self.graph.mf.values()[1]  # what reset() returns the hidden states to
        self._jit_cache = LRUCache(32)  # compiled drivers, keyed by what the user's functions compute
        self._window_fn = self._make_window()
        self._chunk_fns = {}
        return self

    def _check_cross_shape(self):
        paths = self.graph.cross_shape_paths
        if not paths or self.exact_across_groups:
            return
        where = "; ".join(f"'{a}' -> '{b}'" for a, b in paths)
        if self.cross_shape == "error":
            raise NotSupportedError(
                f"{type(self).__name__}: hidden states of different shapes depend on each other outside an ETP "
                f"operator ({where}), so they cannot share a hidden group and a per-position trace would drop "
                f"that path. Give the states one shape, route the dependence through an ETP operator (e.g. "
                f"etprop.matmul), use etprop.BPTT / etprop.RTRL, or accept the approximation with "
                f"etprop.compile(..., cross_shape='warn')")
        if self.cross_shape != "warn":
            raise ArgumentError(f"cross_shape must be 'error' or 'warn', got {self.cross_shape!r}")
        warnings.warn(f"etprop: {type(self).__name__} drops the dependence {where} between hidden states of "
                      f"different shapes from its traces (an approximation; compare with etprop.BPTT)",
                      stacklevel=4)

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
            self.graph.mf.reset_clock()

    # -- trace rules (per relation), implemented by subclasses -------------------------------

    def init_relation_trace(self, rel: Relation, kind: str):
        raise NotImplementedError

    def advance_relation(self, rel: Relation, kind: str, trace, sig: StepSignals, count):
        """The relation's trace after one more step."""
        raise NotImplementedError

    def relation_history(self, rel: Relation, kind: str, trace, delta, operands, count):
        """``delta . e``: the gradient of ``rel.leaf`` through the trace, per sample."""
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

    def backward_params(self, p_leaves: list) -> list:
        """Parameter values the backward pass linearises the step at (the forward always uses
        the real ones). Identity here; random-feedback e-prop swaps in its feedback matrix."""
        return p_leaves

    # -- helpers for the rules -----------------------------------------------------------------

    def _operand_pos(self, rel: Relation) -> int:
        return rel.call.operand_positions()[1][rel.param]

    def param_vjp(self, rel: Relation, operands, cotangent, x_override=None):
        """Per-sample pullback of the ETP equation w.r.t. the relation's parameter operand."""
        g, idx = self.graph, rel.eqn_index
        pos = self._operand_pos(rel)
        ops = list(operands)
        if x_override is not None:
            for j, xv in enumerate(x_override):
                ops[j] = xv.astype(jnp.result_type(ops[j]))

        def f(p):
            o = list(ops)
            o[pos] = p
            return executor.bind_etp(g, idx, o)

        _, pull = jax.vjp(f, ops[pos])
        return pull(cotangent.astype(executor.output_aval(g, idx).dtype))[0]

    def bsum(self, x):
        """Sum over the batch axis (a no-op without ``batch_size``)."""
        return x if self.batch_size is None else tree_sum0(x)

    def bsum_products(self, rel: Relation, operands, deltas, traces):
        """``bsum(sum_a expand(delta_a) * trace_a)``: the learning signal ``delta_a``
        (``(B, *pos)``) times the per-parameter trace ``trace_a`` (``(B, *param)``), summed
        over states and batch. The products are formed per sample inside the sum, so XLA fuses
        everything into one pass over the traces instead of writing a ``(B, *param)`` product
        and reading it back."""
        full = [self.expand(rel, operands, d) for d in deltas]  # broadcasts: never materialised
        if self.batch_size is None:
            return sum_terms([f * e for f, e in zip(full, traces)])
        return batch_sum(lambda b: sum_terms([f[b] * e[b] for f, e in zip(full, traces)]), self.batch_size)

    def param_vjp_sum(self, rel: Relation, operands, cotangent, x_override=None):
        """`param_vjp` summed over the batch (see `param_vjp_over`)."""
        if self.batch_size is None:
            return self.param_vjp(rel, operands, cotangent, x_override)
        return self.param_vjp_over(rel, operands, cotangent, self.batch_size, x_override)

    def param_vjp_over(self, rel: Relation, operands, cotangent, n: int, x_override=None):
        """Pullback w.r.t. the relation's parameter, summed over a leading axis of size ``n``
        carried by the per-sample operands, the cotangent and ``x_override`` (shared
        operands have none). For matmul this is one ``(I x n)(n x O)`` product."""
        g, idx = self.graph, rel.eqn_index
        pos = self._operand_pos(rel)
        per = self.graph.etp_operand_per_sample[rel.eqn_index]
        ops = list(operands)
        axes = [0 if b else None for b in per]
        for j, xv in enumerate(x_override or []):
            ops[j] = xv.astype(jnp.result_type(ops[j]))
            axes[j] = 0
        axes[pos] = None

        def f(pv):
            def one(*o):
                o = list(o)
                o[pos] = pv
                return executor.bind_etp(g, idx, o)
            return jax.vmap(one, in_axes=axes, axis_size=n)(*ops)

        _, pull = jax.vjp(f, ops[pos])
        return pull(cotangent.astype(executor.output_aval(g, idx).dtype))[0]

    def expand(self, rel: Relation, operands, v):
        """Broadcast a per-position array of the relation's group to its parameter's shape."""
        x, params, aux = rel.call.unflatten(list(operands))
        return rel.call.out_to_param(rel.param, v, {k: _mantissa(p) for k, p in params.items()}, aux)

    def probe_signals(self) -> StepSignals:
        """`StepSignals` of one sample at the current state and the example inputs."""
        g = self.graph
        mf = g.mf
        params, hidden, others = mf.values()
        if self.batch_size is not None:
            hidden = tuple(v[0] for v in hidden)
            others = tuple(v[0] if b else v for v, b in zip(others, mf.batched_other))
        leaves = jax.tree.leaves((params, hidden, others, self._example_sample))
        n_p, n_h = g.n_param_leaves, g.n_hidden
        rec = g.run(leaves, record=sorted(g.etp_eqns))[3]
        return self._signals(leaves[:n_p], leaves[n_p:n_p + n_h], leaves[n_p + n_h:], rec)

    # -- per-sample pieces ---------------------------------------------------------------------

    def _signals(self, p_leaves, h_leaves, tail, rec) -> StepSignals:
        """``D`` and ``Df`` by JVPs of the step linearised with ETP inputs cut."""
        g = self.graph
        zeros_y = {i: jnp.zeros(a.shape, a.dtype) for i, a in g.etp_out_avals.items()}

        def dyn(h, py):
            return g.run(list(p_leaves) + list(h) + list(tail), etp_pert=py, cut=True)[1]

        _, lin = jax.linearize(dyn, list(h_leaves), zeros_y)
        zero_h = [jnp.zeros_like(h) for h in h_leaves]
        D = {}
        for grp in g.groups:
            if not any(r.group == grp.index for r in g.relations):
                continue
            cols = []
            for s in grp.members:
                t = list(zero_h)
                t[s] = jnp.ones_like(h_leaves[s])
                out = lin(t, zeros_y)
                cols.append([out[a] for a in grp.members])
            n = len(grp.members)
            D[grp.index] = [[cols[si][ai] for si in range(n)] for ai in range(n)]
        Df = {}
        for eqn_idx in sorted({r.eqn_index for r in g.relations}):
            py = dict(zeros_y)
            py[eqn_idx] = jnp.ones_like(zeros_y[eqn_idx])
            out = lin(zero_h, py)
            Df[eqn_idx] = {grp: [out[a] for a in g.groups[grp].members]
                           for grp in {r.group for r in g.relations if r.eqn_index == eqn_idx}}
        return StepSignals(D, Df, rec)

    def _sample_window_fwd(self, p_leaves, h_leaves, o_leaves, traces, args_seq):
        """Forward over a window for one sample: outputs, final states, advanced traces, and
        the ETP operands the history term needs: ``(shared, per_sample)`` where shared ones
        (parameters, constants) come from the last step and per-sample ones from the first."""
        g = self.graph
        etp_ids = sorted(g.etp_eqns)
        rel_eqns = sorted({r.eqn_index for r in g.relations})
        ps = g.etp_operand_per_sample

        def split(rec):
            shared = {i: [None if ps[i][j] else v for j, v in enumerate(rec[i])] for i in rel_eqns}
            per = {i: [v if ps[i][j] else None for j, v in enumerate(rec[i])] for i in rel_eqns}
            return shared, per

        def body(carry, a_leaves):
            h, o, tr, _ = carry
            tail = list(o) + list(a_leaves)
            outs, hn, on, rec = g.run(list(p_leaves) + list(h) + tail, record=etp_ids)
            sig = self._signals(p_leaves, h, tail, rec)
            count = tr["count"]
            new_rel = [self.advance_relation(r, self._kinds[i], tr["rel"][i], sig, count)
                       for i, r in enumerate(g.relations)]
            tr2 = {"rel": new_rel, "count": jnp.minimum(count + 1.0, 1e30)}
            shared, per = split(rec)
            return (list(hn), list(on), tr2, shared), (outs, per)

        shared0 = {i: executor.zero_operands(g, i, [not b for b in ps[i]]) for i in rel_eqns}
        (h, o, tr, shared), (outs, per) = jax.lax.scan(
            body, (list(h_leaves), list(o_leaves), traces, shared0), args_seq)
        per0 = jax.tree.map(lambda a: a[0], per)
        return outs, h, o, tr, (shared, per0)

    def _sample_window_plain(self, p_leaves, h_leaves, o_leaves, args_seq):
        g = self.graph

        def body(carry, a_leaves):
            h, o = carry
            outs, hn, on, _ = g.run(list(p_leaves) + list(h) + list(o) + list(a_leaves))
            return (list(hn), list(on)), outs

        _, outs = jax.lax.scan(body, (list(h_leaves), list(o_leaves)), args_seq)
        return outs

    # -- the window function (batch level, custom VJP) ----------------------------------------

    def _make_window(self):
        mf = self.graph.mf
        oax = [0 if b else None for st, b in zip(mf.other_states, mf.batched_other)
               for _ in jax.tree.leaves(st.value)]
        batched = self.batch_size is not None

        def fwd_impl(p, h, o, tr, a):
            if not batched:
                return self._sample_window_fwd(p, h, o, tr, a)
            f = jax.vmap(lambda hh, oo, tt, aa: self._sample_window_fwd(p, hh, oo, tt, aa),
                         in_axes=(0, oax, 0, 1), out_axes=(1, 0, oax, 0, (None, 0)))
            return f(h, o, tr, a)

        def plain(hh, pl, o, a):
            if not batched:
                return self._sample_window_plain(pl, hh, o, a)
            return jax.vmap(lambda h1, o1, a1: self._sample_window_plain(pl, h1, o1, a1),
                            in_axes=(0, oax, 1), out_axes=1)(hh, o, a)

        def window_bwd(res, cts):
            p, h, o, tr, a, (shared, per) = res
            # exact reverse mode inside the window, h^{t0} fixed; grads summed over the batch
            _, pull = jax.vjp(lambda hh, pl: plain(hh, pl, o, a), list(h), self.backward_params(list(p)))
            delta, grads = pull(cts[0])
            grads = list(grads)
            g = self.graph
            count = tr["count"][0] if batched else tr["count"]
            for i, rel in enumerate(g.relations):
                ops = [sv if pv is None else pv for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
                members = g.groups[rel.group].members
                hist = self.relation_history(rel, self._kinds[i], tr["rel"][i], [delta[m] for m in members],
                                             ops, count)
                grads[rel.leaf] = grads[rel.leaf] + hist.astype(grads[rel.leaf].dtype)
            return grads

        return online_custom_vjp(fwd_impl, window_bwd)

    def _split(self, params, hidden, others):
        p_leaves = jax.tree.leaves(self._param_tuple(params))
        h_leaves = jax.tree.leaves(hidden)
        o_leaves, o_tree = jax.tree.flatten(others)
        return p_leaves, h_leaves, o_leaves

    def run_window(self, params, hidden, others, traces, args_seq, *, mode: str = "window"):
        """Pure window: ``args_seq`` has time leading (then batch). Returns
        ``(outputs with time leading, hidden', others', traces')``; differentiable
        w.r.t. ``params`` with the online gradient. ``mode='window'``: exact reverse
        mode inside; ``mode='chunk'``: per-step gradients in closed form."""
        g = self.graph
        p_leaves, h_leaves, o_leaves = self._split(params, hidden, others)
        a_leaves = jax.tree.leaves(args_seq)
        if mode == "chunk":
            fn = self._chunk_fns.get(0) or self._chunk_fns.setdefault(0, make_chunk(self))
        else:
            fn = self._window_fn
        outs, h2, o2, tr2 = fn(p_leaves, h_leaves, o_leaves, traces, a_leaves)
        out = unflatten_out_seq(g, outs)
        hidden2, others2 = jax.tree.unflatten(jax.tree.structure((hidden, others)), list(h2) + list(o2))
        return out, hidden2, others2, tr2

    # -- stateful API --------------------------------------------------------------------------

    def params(self) -> dict:
        """``{name: value}`` of the model's parameters, in the structure gradients use."""
        self._require_graph()
        mf = self.graph.mf
        return {mf.name(s): s.value for s in mf.param_states}

    def param_states(self) -> dict:
        """``{name: ParamState}``: the states to pass to `brainstate.transform.grad`."""
        self._require_graph()
        mf = self.graph.mf
        return {mf.name(s): s for s in mf.param_states}

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

    def _check_args(self, args: tuple, multi: bool) -> None:
        leaves = jax.tree.leaves(args)
        tree = jax.tree.structure(args)
        if multi:
            lengths = sorted({np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}, key=str)
            if len(lengths) > 1 or None in lengths:
                raise ArgumentError(f"{type(self).__name__}: the input sequences need one leading time length, got "
                                    f"leaves of lengths {lengths} (shapes {[tuple(np.shape(x)) for x in leaves]})")
        if tree != self._arg_tree:
            raise OperandError(f"{type(self).__name__}: inputs have structure {tree}, compiled for {self._arg_tree}")
        for i, (leaf, want, want_dt) in enumerate(zip(leaves, self._arg_shapes, self._arg_dtypes)):
            got_dt = jnp.result_type(u.get_mantissa(leaf))
            if got_dt != want_dt:
                raise OperandError(
                    f"{type(self).__name__}: input {i} has dtype {got_dt}; compiled for {want_dt}. Cast the input "
                    f"(x.astype({want_dt.name})) or recompile with etprop.compile(...) on an input of that dtype")
            got = tuple(np.shape(leaf))
            core = got[1:] if multi else got
            if core != want:
                lead = "(time, " if multi else "("
                raise OperandError(
                    f"{type(self).__name__}: input {i} has shape {got}; compiled for one step of shape {want}"
                    + (f", so a sequence needs {lead}{', '.join(map(str, want))})" if multi else "")
                    + ". Recompile with etprop.compile(...) for other shapes")

    def __call__(self, inputs):
        """Run one step (array / `SingleStepData`) or a window (`MultiStepData`, time
        leading) and return the model's output (time leading for a window).

        The output is differentiable w.r.t. the model's `ParamState`s with the online
        gradient, e.g. ``brainstate.transform.grad(loss, learner.param_states())``.
        """
        self._require_graph()
        multi = isinstance(inputs, MultiStepData)
        args = as_args(inputs, multi=multi)
        self._check_args(args, multi)
        seq = args if multi else jax.tree.map(lambda a: jnp.expand_dims(a, 0), args)
        mf = self.graph.mf
        params, hidden, others = mf.values()
        params = dict(zip(mf.param_names, params))
        out, h2, o2, tr2 = call_window(self, params, hidden, others, self.etrace.value, seq)  # + finite checks
        mf.write(h2, o2)
        self.etrace.value = tr2
        return out if multi else jax.tree.map(lambda a: a[0], out)

    def step(self, inputs, target=None, loss_fn: Callable | None = None):
        """Advance one step; returns ``(out, grads, loss)``.

        ``grads`` is ``{param name: online gradient}`` of ``mean_b loss_fn(out_b, target_b)``
        for this step (zeros if ``loss_fn`` is None), ready for ``optax.update``.
        """
        self._require_graph()
        args = as_args(inputs, multi=False)
        self._check_args(args, False)
        seq = jax.tree.map(lambda a: jnp.expand_dims(a, 0), args)
        ys = None if target is None else jax.tree.map(lambda a: jnp.expand_dims(a, 0), target)
        grads, losses, out = self._run_sequence(seq, ys, loss_fn, None, window=1, return_out=True, where="step")
        return jax.tree.map(lambda a: a[0], out), grads, losses[0]

def unflatten_out_seq(graph: ETraceGraph, outs):
    n = graph.out_tree.num_leaves
    dummy = [None] * n
    dummy[:len(outs)] = list(outs)
    return jax.tree.unflatten(graph.out_tree, dummy)[0]


def _unwrap_single(inputs: tuple) -> tuple:
    if len(inputs) == 1 and isinstance(inputs[0], SingleStepData):
        return inputs[0].data
    if any(isinstance(a, MultiStepData) for a in inputs):
        raise ArgumentError("compile_graph takes the inputs of ONE step; pass xs[0] rather than MultiStepData")
    return inputs
