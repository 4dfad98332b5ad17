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
`brainstate.transform.grad` and the sequence driver `etrace_grad`.
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

from etprop.errors import ArgumentError, NotSupportedError, NumericalError, OperandError
from etprop.algorithms.chunked import make_chunk
from etprop.algorithms.sequence import REDUCTIONS, check_chunk_size, step_fn_evolve, step_fn_grad
from etprop.algorithms.vjp import batch_sum, online_custom_vjp, sum_terms, tree_sum0
from etprop.fncache import LRUCache, split as split_fn
from etprop.graph import executor
from etprop.graph.compiler import ETraceGraph, Relation, compile_graph
from etprop.input_data import MultiStepData, SingleStepData
from etprop.trace_state import EligibilityTrace

__all__ = ["OnlineAlgorithm", "StepSignals", "unflatten_out_seq", "as_args"]


@dataclasses.dataclass
class StepSignals:
    """Per-step, per-sample quantities the trace rules consume."""

    D: dict  # group -> [[D_as for s] for a], each of the group's shape
    Df: dict  # eqn index -> {group -> [Df_a]}
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
        out, h2, o2, tr2 = self.run_window(params, hidden, others, self.etrace.value, seq)
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
        grads, losses, out = self._run_sequence(seq, ys, loss_fn, None, window=1, return_out=True)
        self._check_finite("step", args, grads, losses)
        return jax.tree.map(lambda a: a[0], out), grads, losses[0]

    def etrace_grad(self, *sequences, step_fn: Callable | None = None, mask=None, chunk_size: int | None = None,
                    weights=None, reduction: str | None = None, loss_output: str = "per_step",
                    has_aux: bool = False, return_value: bool = False, step_loss: Callable | None = None,
                    window: int = 1, closed_form_chunk: int | None = None, return_losses: bool = False):
        """Scan a sequence, advancing traces, and accumulate online gradients.

        Two calling conventions (PORTING.md tabulates their keywords, defaults and returns):

        * etprop's, ``etrace_grad(xs, ys, step_loss)``: etprop runs the model; fastest
          (closed-form chunks). Returns ``(grads, loss)`` (``+ losses (T,)`` with
          ``return_losses``), ``loss = sum_t mask_t mean_b step_loss`` (``reduction='sum'``, the
          default, or ``'mean'`` over the mask weight) and ``grads`` its online gradient
          keyed by dotted parameter name.
        * braintrace's, ``etrace_grad(*sequences, step_fn=f)``: ``f(*slices)`` runs the model
          by calling the learner once and returns the step's loss; every keyword keeps
          braintrace's meaning (`etprop.algorithms.sequence`): ``reduction='mean'``,
          ``chunk_size`` windows, ``weights``, ``loss_output``, ``has_aux``, ``return_value``;
          gradients keyed as ``model.states(brainstate.ParamState)`` keys them.

        Args (etprop's form):
          xs: inputs with time leading (an array, a tuple, or `MultiStepData`).
          ys: targets with time leading (any pytree), passed to ``step_loss`` per step.
          step_loss: ``step_loss(out, target) -> scalar`` for one sample.
          mask: optional ``(T,)`` weights of each step's loss.
          window: steps per window: exact reverse mode inside a window, traces across
            windows. ``1`` is the per-step online gradient; ``T`` is BPTT.
          chunk_size: braintrace's name for ``window`` (exact reverse mode over windows of
            that many steps).
          closed_form_chunk: with ``window=1``, compute the per-step gradients this many
            steps at a time in closed form (same result, matmul speed; memory grows with the
            chunk). Default: 16 (chunk sweep in benchmarks/RESULTS.md).
        """
        self._require_graph()
        if step_fn is not None:
            from_etprop = {"window": window != 1, "closed_form_chunk": closed_form_chunk is not None,
                           "return_losses": return_losses, "step_loss": step_loss is not None}
            if any(from_etprop.values()):
                bad = [k for k, v in from_etprop.items() if v]
                raise ArgumentError(f"etrace_grad(..., step_fn=...) is braintrace's convention; {bad} belong to "
                                    f"etprop's etrace_grad(xs, ys, step_loss): use chunk_size= for windows and "
                                    f"return_value=True for the losses")
            return step_fn_grad(self, sequences, step_fn, mask=mask, chunk_size=chunk_size, weights=weights,
                                reduction="mean" if reduction is None else reduction, loss_output=loss_output,
                                has_aux=has_aux, return_value=return_value)
        from_braintrace = {"weights": weights is not None, "has_aux": has_aux, "return_value": return_value,
                           "loss_output": loss_output != "per_step"}
        if any(from_braintrace.values()):
            bad = [k for k, v in from_braintrace.items() if v]
            raise ArgumentError(f"{bad} belong to braintrace's convention etrace_grad(*sequences, step_fn=f); "
                                f"etprop's etrace_grad(xs, ys, step_loss) returns (grads, loss) "
                                f"(return_losses=True adds the per-step losses)")
        if len(sequences) > 3 or (step_loss is not None and len(sequences) > 2):
            raise ArgumentError(f"etrace_grad(xs, ys, step_loss) takes at most three positional arguments, got "
                                f"{len(sequences)}; for braintrace's convention pass step_fn=")
        xs, ys, loss_pos = (tuple(sequences) + (None, None, None))[:3]
        step_loss = step_loss if step_loss is not None else loss_pos
        if xs is None:
            raise ArgumentError("etrace_grad needs the inputs: etrace_grad(xs, ys, step_loss) or "
                                "etrace_grad(*sequences, step_fn=f)")
        if chunk_size is not None:
            if window != 1:
                raise ArgumentError("pass either window= or chunk_size= (braintrace's name for it), not both")
            window = check_chunk_size(chunk_size) or 1
        reduction = "sum" if reduction is None else reduction
        if reduction not in REDUCTIONS:
            raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        grads, losses = self._run_sequence(args, ys, step_loss, mask, window=window, chunk_size=closed_form_chunk)
        if reduction == "mean":
            scale = 1.0 / jnp.maximum(jnp.sum(jnp.ones_like(losses) if mask is None else jnp.asarray(mask)), 1.0)
            grads = jax.tree.map(lambda g: g * scale, grads)
            losses = losses * scale
        self._check_finite("etrace_grad", args, grads, losses)
        total = jnp.sum(losses)
        return (grads, total, losses) if return_losses else (grads, total)

    def etrace_evolve(self, *sequences, step_fn: Callable | None = None, chunk_size: int | None = None,
                      return_outputs: bool = False):
        """Run sequences without a loss (warm-up): hidden states and traces advance exactly as in
        `etrace_grad`. braintrace's convention: ``step_fn=None`` calls the learner with the
        slices (``chunk_size`` windows allowed); returns None, or with ``return_outputs`` the
        stacked outputs (time leading; ``(T // chunk_size, chunk_size, ...)`` in windows)."""
        self._require_graph()
        return step_fn_evolve(self, sequences, step_fn, chunk_size=chunk_size, return_outputs=return_outputs)

    def _evolve(self, xs):
        """Outputs of the model over ``xs`` (time leading), traces and states advanced."""
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        _, _, out = self._run_sequence(args, None, None, None, window=1, return_out=True)
        return out

    default_chunk = 16

    def sequence_fn(self, step_loss: Callable | None, *, window: int | None = None,
                    closed_form_chunk: int | None = None, return_out: bool = False) -> Callable:
        """The pure, jitted computation behind `etrace_grad`, for users who carry state themselves.

        Returns ``fn(params, hidden, others, traces, xs, ys, mask)`` with ``params`` a
        ``{name: array}`` dict (as `params`), ``hidden``/``others`` the model's state values
        (``self.graph.mf.values()[1:]``), ``traces`` the eligibility-trace pytree
        (``self.etrace.value``), ``xs`` the inputs with time leading and ``mask`` ``(T,)``.
        ``fn`` returns ``(grads, losses (T,), hidden', others', traces'[, outputs])``; it
        reads and writes no state, so it composes with ``jax.jit``, optimiser updates and
        checkpointing. ``window=None`` is the algorithm's default (per-step online
        gradients; the whole sequence for BPTT).
        """
        self._require_graph()
        if window is None:
            window = self.default_window
        mode = "window"
        if window == 1 and self.default_chunk:
            mode, window = "chunk", closed_form_chunk or self.default_chunk
        scan = self._compiled_scan(step_loss, window=window, return_out=return_out, mode=mode)

        def fn(params, hidden, others, traces, xs, ys, mask):
            res = scan(params, hidden, others, traces, as_args(xs, multi=True), ys, mask)
            return (self._grads_to_dict(res[0], params),) + tuple(res[1:])

        return fn

    def _run_sequence(self, args, ys, step_loss, mask, *, window, chunk_size=None, return_out=False):
        T = jax.tree.leaves(args)[0].shape[0]
        for path, leaf in jax.tree_util.tree_flatten_with_path(ys)[0]:
            if np.shape(leaf)[:1] != (T,):
                raise ArgumentError(f"the targets ys{jax.tree_util.keystr(path)} have shape {np.shape(leaf)}, but "
                                    f"the inputs have {T} steps: give every target leaf a leading time axis of "
                                    f"length {T}")
        if not isinstance(window, int) or window < 1:
            raise ArgumentError(f"window must be a positive int, got {window!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ArgumentError(f"closed_form_chunk must be a positive int, got {chunk_size!r}")
        if chunk_size is not None and chunk_size > 1 and window > 1:
            raise ArgumentError("closed_form_chunk applies to per-step gradients (window=1); a window is already "
                                "computed by exact reverse mode")
        mode = "chunk" if window == 1 and self.default_chunk else "window"
        if mode == "chunk":
            window = min(chunk_size or self.default_chunk, T)
        window = min(window, T)
        mask = jnp.ones((T,)) if mask is None else jnp.asarray(mask)
        if mask.shape != (T,):
            raise ArgumentError(f"mask must have shape ({T},), got {mask.shape}")
        mf = self.graph.mf
        params, hidden, others = mf.values()
        params = dict(zip(mf.param_names, params))
        fn = self._compiled_scan(step_loss, window=window, return_out=return_out, mode=mode)
        res = fn(params, hidden, others, self.etrace.value, args, ys, mask)
        acc, losses, hidden, others, traces = res[:5]
        mf.write(hidden, others)
        self.etrace.value = traces
        grads = self._grads_to_dict(acc, params)
        if return_out:
            return grads, losses, res[5]
        return grads, losses

    default_window = 1

    def _check_finite(self, where: str, args, grads, losses) -> None:
        """Raise `NumericalError` naming the first non-finite thing, never return NaN silently."""
        leaves = jax.tree.leaves((grads, losses, args, self.params()))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return  # inside a user's transformation: nothing concrete to check
        if bool(_all_finite(leaves)):  # one fused reduction, one host sync
            return
        bad = lambda tree: not all(bool(jnp.all(jnp.isfinite(_mantissa(x)))) for x in jax.tree.leaves(tree)
                                   if jnp.issubdtype(jnp.result_type(_mantissa(x)), jnp.inexact))
        mf = self.graph.mf
        if bad(args):
            raise NumericalError(f"{where}: the inputs contain NaN or inf")
        for name, v in self.params().items():
            if bad(v):
                raise NumericalError(f"{where}: parameter '{name}' is NaN or inf (a diverged update? lower the "
                                     f"learning rate or clip gradients)")
        for st in mf.hidden_states:
            if bad(st.value):
                raise NumericalError(f"{where}: hidden state '{mf.name(st)}' became NaN or inf; the dynamics "
                                     f"diverged (check time constants, input scale and weights)")
        if bad(losses):
            raise NumericalError(f"{where}: the loss is NaN or inf while inputs, parameters and hidden states "
                                 f"are finite; check the loss function (log of 0? division by 0?)")
        for name, g in grads.items():
            if bad(g):
                raise NumericalError(f"{where}: the gradient of '{name}' is NaN or inf while the forward pass is "
                                     f"finite; check surrogate gradients and weight transforms")

    def _window_losses(self, step_loss, out, ys, mask):
        """``mask_t * mean_b step_loss(out_tb, y_tb)`` for each step of a window."""
        if step_loss is None:
            return jnp.zeros(mask.shape)
        batched = self.batch_size is not None
        per = jax.vmap(jax.vmap(step_loss)) if batched else jax.vmap(step_loss)
        vals = _mantissa(per(out, ys))
        return mask * (jnp.mean(vals, axis=1) if batched else vals)

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
        T = jax.tree.leaves(args)[0].shape[0]
        mask = jnp.ones((T,)) if mask is None else jnp.asarray(mask)
        params = self.params()
        if opt_state is None:
            opt_state = optimizer.init(params)
        key = ("online", step_loss, optimizer)
        fn = self._jit_cache.get(key)
        if fn is None:
            def run(params, opt_state, hidden, others, traces, args, ys, mask):
                def body(carry, inp):
                    p, st, h, o, tr = carry
                    a, y, m = jax.tree.map(lambda v: v[None], inp)

                    def loss_of(pp):
                        out, h2, o2, tr2 = self.run_window(pp, h, o, tr, a)
                        ls = self._window_losses(step_loss, out, y, m)
                        return jnp.sum(ls), (h2, o2, tr2)

                    (loss, (h2, o2, tr2)), g = jax.value_and_grad(loss_of, has_aux=True)(p)
                    updates, st = optimizer.update(g, st, p)
                    p = jax.tree.map(lambda a_, b_: a_ + b_, p, updates)
                    return (p, st, h2, o2, tr2), loss

                carry, losses = jax.lax.scan(body, (params, opt_state, hidden, others, traces), (args, ys, mask))
                return carry, losses

            fn = self._jit_cache[key] = jax.jit(run)
        mf = self.graph.mf
        _, hidden, others = mf.values()
        (params, opt_state, hidden, others, traces), losses = fn(params, opt_state, hidden, others,
                                                                 self.etrace.value, args, ys, mask)
        self.set_params(params)
        mf.write(hidden, others)
        self.etrace.value = traces
        self._check_finite("train_online", args, self.params(), losses)
        return opt_state, losses

    def _compiled_scan(self, step_loss, window: int | None = None, return_out: bool = False,
                       mode: str = "window"):
        """Jitted ``fn(params, hidden, others, traces, args, ys, mask)`` over ``T = n * window``
        steps (``window=None``: the algorithm's default, None meaning the whole sequence),
        returning ``(grad leaves, per-step losses, hidden', others', traces'[, outs])``."""
        if window is None:
            window = self.default_window
        # keyed by what step_loss computes (its code and static closure values); the arrays it
        # captures are passed in, so a new closure of the same code reuses the compiled scan
        lkey, captured, rebuild = split_fn(step_loss) if step_loss is not None else (None, [], lambda a: None)
        key = (lkey, window, return_out, mode)
        fn = self._jit_cache.get(key)
        if fn is not None:
            return lambda *a: fn(*a, captured)

        def run(params, hidden, others, traces, args, ys, mask, captured):
            loss = rebuild(captured)
            window_losses = lambda out, ys, mask: self._window_losses(loss, out, ys, mask)
            T = mask.shape[0]
            win = T if window is None else min(window, T)
            n, rest = divmod(T, win)
            p_leaves, p_tree = jax.tree.flatten(self._param_tuple(params))
            # windows are sliced inside the loop, so the sequence is never copied
            take = lambda tree, start, size: jax.tree.map(
                lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, 0), tree)

            def one(carry, start, size):
                h, o, tr, acc = carry
                a, y, m = take(args, start, size), take(ys, start, size), take(mask, start, size)

                def loss_of(pl):
                    pd = dict(zip(self.graph.mf.param_names, jax.tree.unflatten(p_tree, pl)))
                    out, h2, o2, tr2 = self.run_window(pd, h, o, tr, a, mode=mode)
                    ls = window_losses(out, y, m)
                    return jnp.sum(ls), (ls, out, h2, o2, tr2)

                (_, (ls, out, h2, o2, tr2)), g = jax.value_and_grad(loss_of, has_aux=True)(p_leaves)
                acc = [x + gi for x, gi in zip(acc, g)]
                return (h2, o2, tr2, acc), ((ls, out) if return_out else (ls, None))

            carry = (hidden, others, traces, [jnp.zeros_like(l) for l in p_leaves])
            carry, (losses, outs) = jax.lax.scan(lambda c, i: one(c, i * win, win), carry, jnp.arange(n))
            merge = lambda tree: jax.tree.map(lambda a: a.reshape((n * win,) + a.shape[2:]), tree)
            losses, outs = merge(losses), merge(outs)
            if rest:
                carry, (l2, o2) = one(carry, n * win, rest)
                losses = jnp.concatenate([losses, l2])
                outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, o2)
            h, o, tr, acc = carry
            res = (acc, losses, h, o, tr)
            return res + (outs,) if return_out else res

        fn = self._jit_cache[key] = jax.jit(run)
        return lambda *a: fn(*a, captured)


@jax.jit
def _all_finite(leaves):
    ok = jnp.bool_(True)
    for x in leaves:
        x = _mantissa(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(x))
    return ok


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


def as_args(inputs, *, multi: bool) -> tuple:
    if isinstance(inputs, MultiStepData):
        if not multi:
            raise NotSupportedError("step() takes one time step; use etrace_grad or learner(MultiStepData(...))")
        return inputs.data
    if isinstance(inputs, SingleStepData):
        if multi:
            raise ArgumentError("etrace_grad needs inputs with a leading time axis, not SingleStepData")
        return inputs.data
    return inputs if isinstance(inputs, tuple) else (inputs,)
