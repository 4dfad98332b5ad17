"""`OnlineAlgorithm`: the trace-based learner, one thin stateful class over pure pieces.

It compiles the model's step (`etprop.graph.compiler`), asks the subclass for each relation's
trace rule (`trace_rule`, `etprop.algorithms.traces`), allocates the traces, places them on a
device mesh if asked (`etprop.algorithms.placement`), and holds the state between calls:
parameters, hidden states, traces. Its computation lives in its mixins: the window of ``K >= 1``
steps as one custom-VJP function (`etprop.algorithms.window`), the sequence drivers
(`etprop.algorithms.drivers`: `etrace_grad` in both calling conventions, `etrace_evolve`,
`sequence_fn`) and the per-step optimiser loop (`etprop.algorithms.online`). With ``K = 1``
the window is the per-step online gradient; no cotangent flows into its initial hidden state,
so consecutive calls never backpropagate through time: the traces carry that credit. The same
window serves ``learner(x)`` under `brainstate.transform.grad` and the drivers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms import step_fn_fast
from etprop.algorithms.chunked import make_chunk
from etprop.algorithms.drivers import SequenceDrivers
from etprop.algorithms.finite import call_window
from etprop.algorithms.relation_ops import RelationOps
from etprop.algorithms.traces import TraceRule
from etprop.algorithms.vjp import tree_sum0
from etprop.algorithms.window import StepSignals, WindowFunctions
from etprop.errors import ArgumentError, NotSupportedError, OperandError
from etprop.fncache import LRUCache
from etprop.graph.compiler import ETraceGraph, Relation, compile_graph
from etprop.graph.readout import readout_slice
from etprop.input_data import MultiStepData, SingleStepData, as_args
from etprop.trace_state import EligibilityTrace

__all__ = ["OnlineAlgorithm", "StepSignals", "unflatten_out_seq"]


def _mantissa(x):
    return u.get_mantissa(x)


class OnlineAlgorithm(WindowFunctions, SequenceDrivers, brainstate.nn.Module):
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
    #: the dtype eligibility traces are stored in between steps (``etprop.compile(...,
    #: trace_dtype=jnp.bfloat16)``), or None: the wider of each weight's and its hidden group's
    #: dtypes. Rules always compute in the wider dtype; only storage is narrowed.
    trace_dtype = None
    #: where the arrays live on a device mesh (`etprop.algorithms.placement`), or None: one device
    placement = None
    #: ``'pre'``: the per-step signal ``dL^t/dh^{t-1}`` through the whole step (default); ``'post'``:
    #: ``dL^t/dh^t`` through the readout only (braintrace's convention; `etprop.graph.readout`)
    learning_signal = "pre"
    _readout = None

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
        self.prepare_rules()
        self._readout = self._readout_slice()
        self.per_step_reason = self._per_step_reason()
        self._ops = [RelationOps(self.graph, r, batch_size, self.trace_dtype) for r in self.graph.relations]
        self._rules = [self.trace_rule(r) for r in self.graph.relations]
        self._kinds = {i: self.relation_kind(r) for i, r in enumerate(self.graph.relations)}
        self.etrace = EligibilityTrace(self._batch(self._init_sample_traces()))
        self._hidden0 = self.graph.mf.values()[1]  # what reset() returns the hidden states to
        self._jit_cache = LRUCache(32)  # compiled drivers, keyed by what the user's functions compute
        self._window_fn = self._make_window()
        self._post_window_fn = self._make_post_window() if self._readout is not None else None
        self._chunk_fns = {}
        return self

    def _readout_slice(self):
        """The readout slice for ``learning_signal='post'`` (None for ``'pre'``), or
        `NotSupportedError` saying why the model's step does not allow it."""
        if self.learning_signal == "pre":
            return None
        sl, why = readout_slice(self.graph)
        if sl is None:
            raise NotSupportedError(f"{type(self).__name__}: learning_signal='post' needs the step's outputs to be a "
                                    f"function of the new hidden state (plus parameters, other states and inputs), "
                                    f"but {why}; use the default learning_signal='pre'")
        return sl

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

    def place(self, placement) -> None:
        """Put hidden states and traces on ``placement``'s batch axis and parameters replicated;
        the drivers keep them there (`put_inputs`, `constrain_carry`)."""
        self._require_graph()
        self.placement = placement
        mf = self.graph.mf
        params, hidden, others = mf.values()
        self._state_sh = placement.state_shardings(hidden, others, mf.batched_other)
        self._trace_sh = placement.trace_shardings(self.etrace.value, [r.kind == "param" for r in self._rules])
        for st, v in zip(mf.param_states, params):
            st.value = placement.constrain(v, jax.tree.map(lambda _: placement.replicated(), v))
        hidden, others, traces = self.constrain_carry(hidden, others, self.etrace.value)
        mf.write(hidden, others)
        self.etrace.value = traces
        self._hidden0 = hidden

    def constrain_carry(self, hidden, others, traces):
        """Hidden states, other states and traces on their placements (unchanged without one)."""
        pl = self.placement
        if pl is None:
            return hidden, others, traces
        hs, os_ = self._state_sh
        hidden = tuple(pl.constrain(h, s) for h, s in zip(hidden, hs))
        others = tuple(pl.constrain(o, s) for o, s in zip(others, os_))
        if jax.tree.structure(traces) == jax.tree.structure(self._trace_sh):
            traces = pl.constrain(traces, self._trace_sh)
        return hidden, others, traces

    def _local_slice(self, got: tuple, want: tuple) -> bool:
        """``got`` is ``want`` with this process's share of the batch (several processes only)."""
        pl = self.placement
        return (pl is not None and jax.process_count() > 1 and bool(got) and bool(want)
                and got[0] == pl.local_batch and got[1:] == want[1:])

    def put_inputs(self, tree, lead: int = 0):
        """Inputs or targets split on the placement's batch axis (axis ``lead``; 1 for sequences)."""
        return tree if self.placement is None else self.placement.put(tree, lead)

    def _require_graph(self):
        if self.graph is None:
            raise ArgumentError(f"{type(self).__name__}: call compile_graph(*example_inputs) first "
                                f"(or use etprop.compile)")

    def prepare_rules(self) -> None:
        """Called at compile time once the graph is known, before `trace_rule` is asked: a learner
        measures here what its rules depend on (ES-D-RTRL's leaks, OSTL's recurrent groups)."""

    def _per_step_reason(self) -> str | None:
        """Why this learner defaults to per-step mode although it has closed-form chunks, or None:
        ``learning_signal='post'`` (the closed form takes the pre-step signal), or an operator that
        declares ``chunkable=False`` (its closed form costs more than single steps)."""
        if self._readout is not None:
            return ("per-step mode: learning_signal='post' (the signal at the post-step state, through the "
                    "readout only)")
        slow = sorted({r.call.primitive.name for r in self.graph.relations if not r.call.primitive.chunkable})
        if not slow or not self.default_chunk:
            return None
        return (f"per-step mode by default: the closed form over a chunk costs more than single steps for "
                f"{', '.join(slow)} (pass closed_form_chunk=K to use it anyway)")

    def trace_rule(self, rel: Relation) -> TraceRule:
        """The trace rule (`etprop.algorithms.traces`) of one relation: what the learner is."""
        raise NotImplementedError

    def rules(self) -> list[TraceRule]:
        """The trace rule of each relation, in the graph's order."""
        return list(self._rules)

    def relation_ops(self) -> list[RelationOps]:
        """Each relation bound to the graph and batch size (what its rule computes with)."""
        return list(self._ops)

    def relation_kind(self, rel: Relation) -> str:
        """The form of a relation's trace: ``'param'`` (per-parameter) or ``'io'`` (factorised)."""
        return self._rules[self.graph.relations.index(rel)].kind

    def _init_sample_traces(self):
        return {"rel": [ops.store(rule.init(ops)) for rule, ops in zip(self._rules, self._ops)],
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

    # -- the relations' trace rules ------------------------------------------------------------

    def relation_history(self, i: int, trace, delta, operands, count):
        """``delta . e``: the gradient of relation ``i``'s parameter through its trace (batch summed)."""
        ops = self._ops[i]
        return self._rules[i].history(ops, ops.load(trace), delta, operands, count)

    def trace_bytes(self, rel: Relation) -> int:
        """Bytes of one relation's trace for one sample."""
        i = self.graph.relations.index(rel)
        t = self._ops[i].store(self._rules[i].init(self._ops[i]))
        return int(sum(np.prod(np.shape(a)) * jnp.result_type(a).itemsize for a in jax.tree.leaves(t)))

    def report(self) -> str:
        """The graph report with each traced weight's algorithm and trace memory."""
        self._require_graph()
        rels = self.graph.relations

        def algo(r):
            kind = self._kinds[rels.index(r)]
            return f"[{type(self).__name__}: {self.describe_kind(r, kind)}]"

        head = f"{type(self).__name__} on {type(self.model).__name__} (batch_size={self.batch_size})"
        tail = "" if self.step_fn_path is None else f"\nlast etrace_grad(..., step_fn=...): {self.step_fn_path}"
        if self.per_step_reason:
            tail = f"\n{self.per_step_reason}" + tail
        return head + "\n" + self.graph.report(algorithm_of=algo, memory_of=self.trace_bytes) + tail

    def describe_kind(self, rel, kind) -> str:
        return {"param": "per-parameter trace (D-RTRL)", "io": "factorised trace (ES-D-RTRL)"}[kind]

    def backward_params(self, p_leaves: list) -> list:
        """Parameter values the backward pass linearises the step at (the forward always uses
        the real ones). Identity here; random-feedback e-prop swaps in its feedback matrix."""
        return p_leaves

    def bsum(self, x):
        """Sum over the batch axis (a no-op without ``batch_size``)."""
        return x if self.batch_size is None else tree_sum0(x)

    def _split(self, params, hidden, others):
        p_leaves = jax.tree.leaves(self.param_tuple(params))
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
        elif self._readout is not None:
            T = a_leaves[0].shape[0] if a_leaves else 1
            if T != 1:  # a window (MultiStepData, chunk_size) would silently take the pre-step signal
                raise ArgumentError(f"a window of {T} steps: a learner compiled with learning_signal='post' "
                                    f"reads the signal after each single step (pass one step at a time, or "
                                    f"compile with learning_signal='pre' for windows)")
            fn = self._post_window_fn  # learning_signal='post', per step
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
        """Write ``{name: value}`` (as `params` gives) into the model's parameters; every name is needed and every
        value keeps its shape (`ArgumentError` naming the parameter otherwise)."""
        self._require_graph()
        mf = self.graph.mf
        names = [mf.name(s) for s in mf.param_states]
        if not hasattr(values, "keys"):
            raise ArgumentError(f"set_params takes a dict {{name: value}} as params() gives, got {type(values).__name__}")
        missing, unknown = [n for n in names if n not in values], sorted(set(values) - set(names))
        if missing or unknown:
            raise ArgumentError(f"set_params: missing parameters {missing}, unknown {unknown}; expected exactly the "
                                f"names of params(): {names}")
        is_q = lambda a: isinstance(a, u.Quantity)
        for s, n in zip(mf.param_states, names):
            got = jax.tree.map(np.shape, values[n], is_leaf=is_q)
            want = jax.tree.map(np.shape, s.value, is_leaf=is_q)
            if got != want:
                raise ArgumentError(f"set_params: '{n}' has shape {got}, expected {want} (the parameter's shape)")
        for s, n in zip(mf.param_states, names):
            s.value = values[n]

    def param_tuple(self, params: dict) -> tuple:
        """Parameter values in the compiled order (the graph's flat-operand order)."""
        return tuple(params[n] for n in self.graph.mf.param_names)

    def _grads_to_dict(self, grad_leaves, params):
        values = self.param_tuple(params)
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
            if lengths == [0]:
                raise ArgumentError(f"{type(self).__name__}: the input sequences have length 0 (shapes "
                                    f"{[tuple(np.shape(x)) for x in leaves]}); give at least one time step")
        if tree != self._arg_tree:
            is_q = lambda a: isinstance(a, u.Quantity)
            want_q = jax.tree.leaves(self._example_sample, is_leaf=is_q)
            got_q = jax.tree.leaves(args, is_leaf=is_q)
            if len(want_q) == len(got_q):
                for i, (g, w) in enumerate(zip(got_q, want_q)):
                    if u.get_unit(g) != u.get_unit(w):
                        unit = lambda a: f"unit {u.get_unit(a)}" if is_q(a) else "no unit (a plain array)"
                        raise OperandError(
                            f"{type(self).__name__}: input {i} has {unit(g)}; compiled for an input with {unit(w)}. "
                            f"Give the input in the unit it was compiled with, or recompile with etprop.compile(...) "
                            f"on an input of that unit")
            raise OperandError(f"{type(self).__name__}: inputs have structure {tree}, compiled for {self._arg_tree}; "
                               f"pass the inputs of one step as at compile time (the same number of arrays, the "
                               f"same nesting)")
        for i, (leaf, want, want_dt) in enumerate(zip(leaves, self._arg_shapes, self._arg_dtypes)):
            got_dt = jnp.result_type(u.get_mantissa(leaf))
            if got_dt != want_dt:
                raise OperandError(
                    f"{type(self).__name__}: input {i} has dtype {got_dt}; compiled for {want_dt}. Cast the input "
                    f"(x.astype({want_dt.name})) or recompile with etprop.compile(...) on an input of that dtype")
            got = tuple(np.shape(leaf))
            core = got[1:] if multi else got
            if core != want and self._local_slice(core, want):
                continue  # one process's slice of the batch (several processes): placed as the global array
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
        captured = step_fn_fast.intercept(self, inputs)  # braintrace's step_fn on the fast path
        if captured is not step_fn_fast.NOT_CAPTURED:
            return captured
        multi = isinstance(inputs, MultiStepData)
        args = as_args(inputs, multi=multi)
        self._check_args(args, multi)
        args = self.put_inputs(args, 1 if multi else 0)
        seq = args if multi else jax.tree.map(lambda a: jnp.expand_dims(a, 0), args)
        mf = self.graph.mf
        params, hidden, others = mf.values()
        params = dict(zip(mf.param_names, params))
        out, h2, o2, tr2 = call_window(self, params, hidden, others, self.etrace.value, seq)  # + finite checks
        h2, o2, tr2 = self.constrain_carry(h2, o2, tr2)
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
        if loss_fn is not None and not callable(loss_fn):
            raise ArgumentError(f"step: 'loss_fn' must be a function loss_fn(out, target) -> scalar for one sample, "
                                f"got {loss_fn!r}")
        if target is not None and self.batch_size is not None:
            for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
                if np.shape(leaf)[:1] != (self.batch_size,):
                    raise ArgumentError(f"step: the target{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; "
                                        f"with batch_size={self.batch_size} every target leaf needs a leading batch "
                                        f"axis of that size")
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
