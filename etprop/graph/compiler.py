"""Compile a model's step into hidden groups and weight-to-hidden relations.

The model is traced *per sample* (batching is added by `jax.vmap` in the
algorithms), which makes every hidden state's positions its own shape.

Vocabulary (see ``shared/design/algorithms.md``):

* hidden group: hidden states of one shape that depend on each other within a
  step (paths through ETP operator inputs cut); ``S`` states per position;
* relation: one ETP operator's parameter leaf and one group that the operator's
  output ``y`` drives through an operator-free tail, with ``y.shape`` equal to the
  group's shape. Such a parameter is *traced*; every other parameter gets its exact
  gradient through the current step.
"""

from __future__ import annotations

import dataclasses

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import CompilationError, NotSupportedError
from etprop.graph import _jaxpr
from etprop.graph.positions import check_positions
from etprop.graph.report import report_text
from etprop.graph.model_fn import ModelFunction
from etprop.primitive import ETPCall

__all__ = ["HiddenGroup", "Relation", "ETraceGraph", "compile_graph"]


@dataclasses.dataclass(frozen=True)
class HiddenGroup:
    """Hidden states ``members`` (indices into the model's hidden states) of one ``shape``."""

    index: int
    members: tuple[int, ...]
    names: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: object

    @property
    def num_states(self) -> int:
        return len(self.members)


@dataclasses.dataclass(frozen=True)
class Relation:
    """ETP equation ``eqn_index``'s parameter ``param`` (flat leaf ``leaf``) drives ``group``."""

    eqn_index: int
    call: ETPCall
    param: str
    leaf: int
    leaf_name: str
    group: int
    n_x: int
    diagonal: bool  # the primitive declares out_to_param for this parameter


@dataclasses.dataclass
class ETraceGraph:
    """The compiled description of one model step (per sample)."""

    mf: ModelFunction
    closed: object  # ClosedJaxpr of the flat per-sample step
    in_tree: object
    out_tree: object
    n_param_leaves: int
    n_hidden: int
    n_out: int
    param_leaf_names: tuple[str, ...]
    param_leaf_avals: tuple
    groups: tuple[HiddenGroup, ...]
    hidden_group: tuple[int, ...]  # group index of each hidden state
    relations: tuple[Relation, ...]
    etp_eqns: dict  # eqn index -> ETPCall
    etp_n_x: dict  # eqn index -> number of x operands
    etp_out_avals: dict  # eqn index -> aval of its output
    etp_operand_per_sample: dict  # eqn index -> tuple(bool): operand depends on per-sample data
    untraced: dict  # param leaf name -> reason it has no trace
    notes: list
    batched: bool
    cross_shape_paths: tuple = ()  # (source hidden name, target hidden name): dependencies no group holds
    readout_paths: tuple = ()  # (source, target) of a different shape that nothing upstream depends on
    carried: tuple = ()  # (name, dtype) of non-float states the step writes: carried, not differentiated
    truncated: tuple = ()  # untraced parameter leaves that reach a hidden state: current-step gradient only

    # -- evaluation ---------------------------------------------------------------------------

    def run(self, leaves, **hooks):
        """Evaluate the flat step; returns ``(out leaves, hidden' leaves, others' leaves, recorded)``."""
        outs, rec = _jaxpr.eval_hooked(self.closed, leaves, etp_n_x=self.etp_n_x, **hooks)
        n_o, n_h = self.n_out, self.n_hidden
        return outs[:n_o], outs[n_o:n_o + n_h], outs[n_o + n_h:], rec

    def unflatten_out(self, out_leaves):
        n = self.out_tree.num_leaves
        dummy = [None] * n
        dummy[:len(out_leaves)] = out_leaves
        return jax.tree.unflatten(self.out_tree, dummy)[0]

    @property
    def traced_leaves(self) -> tuple[int, ...]:
        return tuple(sorted({r.leaf for r in self.relations}))

    def report(self, algorithm_of=None, memory_of=None) -> str:
        """Readable summary: groups, each parameter traced or not and why (`etprop.graph.report`)."""
        return report_text(self, algorithm_of, memory_of)


def _carried_states(mf: ModelFunction) -> tuple:
    """Short-term states with non-float values (a boolean refractory flag, an int counter) that
    the step writes: they are carried from step to step like any state, but have no derivative,
    so no trace or learning signal flows through them."""
    out = []
    for st in mf.other_states[:-1]:  # the last is etprop's clock
        if not isinstance(st, brainstate.ShortTermState) or type(st).__name__ == "RandomState":
            continue
        for leaf in jax.tree.leaves(st.value, is_leaf=u.math.is_quantity):
            dt = jnp.result_type(u.get_mantissa(leaf))
            if not jnp.issubdtype(dt, jnp.inexact):
                out.append((mf.name(st), str(dt)))
                break
    return tuple(out)


def _aval_shape(x):
    return tuple(np.shape(x))


@dataclasses.dataclass(frozen=True)
class _Step:
    """The traced step of one sample, as `compile_graph`'s helpers read it."""

    mf: ModelFunction
    jaxpr: object  # the step's jaxpr (``closed.jaxpr``)
    n_p: int  # parameter leaves: the first operands
    n_h: int  # hidden-state leaves: the next operands, and the results after the outputs
    n_out: int  # output leaves: the first results
    leaf_names: list  # of the parameter leaves
    etp: dict  # equation index -> ETPCall
    etp_n_x: dict  # equation index -> number of its x leaves
    etp_out_avals: dict  # equation index -> its output's aval


def compile_graph(model, *example_args, batch_size: int | None = None, probe_seed: int = 0) -> ETraceGraph:
    """Compile ``model.update`` into an `ETraceGraph`.

    Args:
      model: a brainstate module whose ``update(*args)`` advances one step.
      *example_args: inputs of one call (with a leading batch axis if ``batch_size``).
      batch_size: if given, the model's short-term states and the inputs carry a
        leading batch axis of this size; the graph is built for one sample.
    """
    mf, batched, sample_args, (params, hidden, others) = _sample_state(model, example_args, batch_size)

    closed, leaves, in_tree, out_tree = _trace_step(mf, params, hidden, others, sample_args)
    jaxpr = closed.jaxpr

    n_p = len(jax.tree.leaves(params))
    n_h = len(jax.tree.leaves(hidden))
    if n_h != len(mf.hidden_states):
        raise NotSupportedError("every hidden state must hold a single array (or quantity)")
    n_out = out_tree.num_leaves - n_h - len(jax.tree.leaves(jax.tree.unflatten(
        out_tree, [0] * out_tree.num_leaves)[2]))

    leaf_names = _param_leaf_names(mf, params)
    param_avals = tuple(jaxpr.invars[i].aval for i in range(n_p))

    etp, etp_n_x, etp_out_avals = _etp_operators(model, jaxpr, n_p, n_h)

    step = _Step(mf, jaxpr, n_p, n_h, n_out, leaf_names, etp, etp_n_x, etp_out_avals)
    groups, hidden_group, notes, cross, readout, dep = _hidden_groups(step)
    relations, untraced, pdep = _relations(step, dep, groups, hidden_group)
    per_sample = _per_sample_operands(step, others)

    graph = ETraceGraph(mf, closed, in_tree, out_tree, n_p, n_h, n_out, tuple(leaf_names), param_avals,
                        tuple(groups), tuple(hidden_group), tuple(relations), etp, etp_n_x, etp_out_avals,
                        per_sample, untraced, notes, batched, tuple(cross), tuple(readout),
                        _carried_states(mf))
    check_positions(graph, leaves, probe_seed)
    _mark_untraced(step, graph, pdep)
    return graph


def _sample_state(model, example_args, batch_size):
    """The model as a function and one sample's values: ``(mf, batched, sample_args, (params,
    hidden, others))``, after checking the batch axes and that the step writes a hidden state."""
    batched = batch_size is not None
    if batched:
        for a in jax.tree.leaves(example_args):
            if not np.shape(a) or np.shape(a)[0] != batch_size:
                raise CompilationError(f"with batch_size={batch_size} every input needs a leading batch axis "
                                       f"of that size; got an input of shape {np.shape(a)}")
        sample_args = jax.tree.map(lambda a: a[0], example_args)
    else:
        sample_args = example_args
    mf = ModelFunction.discover(model, sample_args if not batched else example_args, batched=batched)
    params, hidden, others = mf.values()
    if batched:
        for st, v in zip(mf.hidden_states, hidden):
            if np.shape(v)[:1] != (batch_size,):
                raise CompilationError(f"hidden state '{mf.name(st)}' has shape {np.shape(v)} but batch_size="
                                       f"{batch_size}; initialise states with that batch size "
                                       f"(brainstate.nn.init_all_states(model, batch_size={batch_size}))")
        hidden = tuple(v[0] for v in hidden)
        others = tuple(v[0] if b else v for v, b in zip(others, mf.batched_other))
    if not mf.hidden_states:
        raise CompilationError(f"{type(model).__name__}.update writes no floating-point ShortTermState/"
                               f"HiddenState: there is nothing to carry traces for")
    return mf, batched, sample_args, (params, hidden, others)


def _trace_step(mf: ModelFunction, params, hidden, others, sample_args):
    """The step of one sample as a jaxpr over its flat operands: ``(closed, leaves, in_tree,
    out_tree)``."""
    operands = (params, hidden, others, sample_args)
    leaves, in_tree = jax.tree.flatten(operands)
    out_tree_box = {}

    def flat_step(*lv):
        p, h, o, a = jax.tree.unflatten(in_tree, lv)
        out, h2, o2 = mf(p, h, o, a)
        ol, out_tree_box["tree"] = jax.tree.flatten((out, h2, o2))
        return ol

    closed = jax.make_jaxpr(flat_step)(*leaves)
    out_tree = out_tree_box["tree"]
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != len(leaves):  # the executor pairs invars with the step's operands
        raise CompilationError(f"the traced step has {len(jaxpr.invars)} inputs for {len(leaves)} operands (jax "
                               f"{jax.__version__} lays out jaxprs differently from the versions etprop is tested "
                               f"with: see pyproject.toml's ranges)")
    return closed, leaves, in_tree, out_tree


def _param_leaf_names(mf: ModelFunction, params) -> list[str]:
    """The name of every parameter leaf."""
    # names of parameter leaves: state name + key path inside the state's value
    leaf_names = []
    for st, v in zip(mf.param_states, params):
        # a quantity is one leaf (its mantissa): its unit is no part of the name
        for path, _ in jax.tree_util.tree_flatten_with_path(v, is_leaf=u.math.is_quantity)[0]:
            suffix = jax.tree_util.keystr(path)
            leaf_names.append(mf.name(st) + suffix)
    return leaf_names


def _etp_operators(model, jaxpr, n_p: int, n_h: int):
    """The step's ETP equations, each one's number of ``x`` leaves and output aval: ``(etp,
    etp_n_x, etp_out_avals)``, after checking that they stand at the top level of the step, that
    no while loop must be differentiated and that there is one at least."""
    nested = _jaxpr.nested_etp_primitives(jaxpr)
    if nested:
        outer, prim = nested[0]
        raise NotSupportedError(f"an ETP operator ({prim}) is called inside '{outer}' within update(); online "
                                f"learning needs ETP operators at the top level of the step. Move the loop or "
                                f"branch out of update() or use a plain JAX op for that weight")

    if _jaxpr.differentiable_while_loops(jaxpr, jaxpr.invars[:n_p + n_h]):
        raise NotSupportedError(
            f"{type(model).__name__}.update runs a lax.while_loop (or a fori_loop with traced bounds) over values "
            f"that depend on the parameters or hidden states; JAX cannot differentiate it in reverse mode, and "
            f"every learner needs the step's VJP. Use lax.scan or a fori_loop with static bounds "
            f"(brainstate.transform.for_loop) for sub-steps inside update()")

    etp = dict(_jaxpr.etp_equations(jaxpr))
    if not etp:
        raise CompilationError(f"{type(model).__name__}.update uses no ETP operator: no weight can learn "
                               f"online. Replace `x @ w` by `etprop.matmul(x, w)` (or another etprop "
                               f"operator) for the weights that should be trained by eligibility traces")
    etp_n_x, etp_out_avals = {}, {}
    for idx, call in etp.items():
        x, _, _ = call.operand_positions()
        etp_n_x[idx] = len(jax.tree.leaves(x))
        eqn = jaxpr.eqns[idx]
        etp_out_avals[idx] = eqn.outvars[0].aval
    return etp, etp_n_x, etp_out_avals


def _hidden_groups(step: _Step):
    """The hidden groups (states of one shape that depend on each other within the step, ETP
    inputs cut) and the notes on the paths between states of different shapes: ``(groups,
    hidden_group, notes, cross, readout, dep)``, ``dep`` the step's structural dependences."""
    mf, jaxpr, n_p, n_h, n_out = step.mf, step.jaxpr, step.n_p, step.n_h, step.n_out
    etp, etp_n_x = step.etp, step.etp_n_x
    # structural dependence with ETP inputs cut
    h_in = jaxpr.invars[n_p:n_p + n_h]
    sources = {v: {("h", k)} for k, v in enumerate(h_in)}
    for idx in etp:
        sources[idx] = {("y", idx)}
    dep = _jaxpr.dependencies(jaxpr, sources, cut_x=etp_n_x)
    h_out = jaxpr.outvars[n_out:n_out + n_h]

    def deps_of(v):
        return deps_of_in(dep, v)

    h_shapes = [tuple(v.aval.shape) for v in h_in]
    parent = list(range(n_h))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    notes, cross, readout = [], [], []
    h_edges = {j: {k for kind, k in deps_of(v) if kind == "h" and k != j} for j, v in enumerate(h_out)}
    reach = _reachability(h_edges, n_h)  # reach[a]: states whose new value depends on a, transitively
    for j in range(n_h):
        for k in sorted(h_edges[j]):
            if h_shapes[k] == h_shapes[j]:
                parent[find(k)] = find(j)
            elif k in reach[j]:
                # part of a loop: the traces of the states upstream would miss a feedback path
                note = (f"hidden '{mf.hidden_names[k]}' {h_shapes[k]} drives '{mf.hidden_names[j]}' "
                        f"{h_shapes[j]}: states of different shapes cannot share a group, so diagonal traces "
                        f"drop that path (an approximation; compare with etprop.BPTT, or give both states one shape)")
                notes.append(note)
                cross.append((mf.hidden_names[k], mf.hidden_names[j]))
            else:
                # downstream only (a leaky readout integrating the network's output through a plain op):
                # nothing upstream depends on it, so the traces are unchanged; the learning signal of a
                # step holds the readout's response within the step, not its memory of earlier steps
                notes.append(f"hidden '{mf.hidden_names[j]}' {h_shapes[j]} integrates '{mf.hidden_names[k]}' "
                             f"{h_shapes[k]} through plain ops (a readout with memory): the online gradient of the "
                             f"weights upstream uses the readout's response within each step and misses its memory "
                             f"of earlier steps (an approximation; a memoryless readout is exact)")
                readout.append((mf.hidden_names[k], mf.hidden_names[j]))
    roots = sorted({find(i) for i in range(n_h)})
    members = {r: tuple(i for i in range(n_h) if find(i) == r) for r in roots}
    groups, hidden_group = [], [0] * n_h
    for gi, r in enumerate(roots):
        mem = members[r]
        for i in mem:
            hidden_group[i] = gi
        groups.append(HiddenGroup(gi, mem, tuple(mf.hidden_names[i] for i in mem), h_shapes[mem[0]],
                                  h_in[mem[0]].aval.dtype))
    return groups, hidden_group, notes, cross, readout, dep


def _relations(step: _Step, dep: dict, groups: list, hidden_group: list):
    """The relations (an ETP operator's parameter leaf and a group its output drives, of the
    group's shape) and why the other parameters of the operators are not traced: ``(relations,
    untraced, pdep)``, ``pdep`` the step's dependences on the parameter leaves."""
    jaxpr, n_p, n_h, n_out, leaf_names = step.jaxpr, step.n_p, step.n_h, step.n_out, step.leaf_names
    etp, etp_n_x, etp_out_avals = step.etp, step.etp_n_x, step.etp_out_avals
    h_out = jaxpr.outvars[n_out:n_out + n_h]
    relations, untraced = [], {}
    invar_index = {v: i for i, v in enumerate(jaxpr.invars)}
    pdep = _jaxpr.dependencies(jaxpr, {v: {i} for i, v in enumerate(jaxpr.invars[:n_p])})
    drives = {idx: set() for idx in etp}
    for j, v in enumerate(h_out):
        for kind, k in deps_of_in(dep, v):
            if kind == "y":
                drives[k].add(hidden_group[j])
    # ETP outputs that reach another ETP operator's operands (e.g. a gate feeding a matmul's input)
    ydep = _jaxpr.dependencies(jaxpr, {i: {i} for i in etp})
    feeds_etp = set()
    for j in etp:
        for v in jaxpr.eqns[j].invars:
            feeds_etp |= set(deps_of_in(ydep, v))
    for idx in sorted(etp):
        call = etp[idx]
        eqn = jaxpr.eqns[idx]
        _, p_ops, _ = call.unflatten_leaves(list(eqn.invars))
        y_shape = tuple(etp_out_avals[idx].shape)
        for pname in sorted(p_ops):
            var = p_ops[pname]
            leaf = invar_index.get(var)
            if leaf is None or leaf >= n_p:
                # computed outside the operator: name the parameters it came from
                for src in sorted(deps_of_in(pdep, var)):
                    fn_kw = "kernel_fn" if pname == "kernel" else f"{pname}_fn" if pname != "weight" else "weight_fn"
                    untraced.setdefault(leaf_names[src], (
                        f"transformed outside {call.primitive.name} before use as its '{pname}'; pass the "
                        f"transform as {fn_kw}=... so the operator sees the raw parameter"))
                continue
            lname = leaf_names[leaf]
            gs = sorted(drives[idx])
            if not gs:
                if idx in feeds_etp:
                    why = (f"output of {call.primitive.name} reaches no hidden state without passing another ETP "
                           f"operator")
                else:
                    why = f"output of {call.primitive.name} reaches no hidden state (a readout)"
                untraced.setdefault(lname, why)
                continue
            for g in gs:
                if groups[g].shape != y_shape:
                    untraced.setdefault(lname, f"{call.primitive.name} output shape {y_shape} differs from hidden "
                                               f"group [{g}] shape {groups[g].shape}")
                    continue
                diag = (pname in call.primitive.out_to_param and _declares_diag(call, pname, eqn))
                relations.append(Relation(idx, call, pname, leaf, lname, g, etp_n_x[idx], diag))
    return relations, untraced, pdep


def _per_sample_operands(step: _Step, others) -> dict:
    """Which operands of each ETP equation vary per sample (hidden states, inputs, batched
    others): the rest (parameters, constants) stay unbatched in the batched backward pass."""
    mf, jaxpr, n_p, n_h, etp = step.mf, step.jaxpr, step.n_p, step.n_h, step.etp
    n_o = len(jax.tree.leaves(others))
    o_batched = [b for st, v, b in zip(mf.other_states, others, mf.batched_other) for _ in jax.tree.leaves(v)]
    sample_src = {v: {"s"} for v in jaxpr.invars[n_p:n_p + n_h]}
    sample_src.update({v: {"s"} for v, b in zip(jaxpr.invars[n_p + n_h:n_p + n_h + n_o], o_batched) if b})
    sample_src.update({v: {"s"} for v in jaxpr.invars[n_p + n_h + n_o:]})
    sdep = _jaxpr.dependencies(jaxpr, sample_src)
    per_sample = {idx: tuple(bool(deps_of_in(sdep, v)) for v in jaxpr.eqns[idx].invars) for idx in etp}
    return per_sample


def _mark_untraced(step: _Step, graph: ETraceGraph, pdep: dict) -> None:
    """Give every parameter leaf left without a relation its reason in ``graph.untraced`` (and
    ``graph.truncated`` where a plain op carries it into a hidden state)."""
    mf, leaf_names = step.mf, step.leaf_names
    h_out = step.jaxpr.outvars[step.n_out:step.n_out + step.n_h]
    traced = {r.leaf for r in graph.relations}
    # an untraced parameter that reaches a hidden state: its gradient is the current step's term
    # only, the state's memory of it is dropped (e.g. the weight of a leaky readout written with a
    # plain op); one that reaches only the outputs gets its exact gradient
    drives_state = {}
    for j, v in enumerate(h_out):
        for leaf in deps_of_in(pdep, v):
            drives_state.setdefault(leaf, []).append(mf.hidden_names[j])
    for leaf, name in enumerate(leaf_names):
        if leaf in traced:
            continue
        if leaf in drives_state:
            graph.truncated = graph.truncated + (name,)
            states = ", ".join(f"'{h}'" for h in drives_state[leaf])
            graph.untraced.setdefault(name, f"a plain JAX op carries it into hidden state {states}")
        elif name not in graph.untraced:
            graph.untraced[name] = "not consumed by an ETP operator (plain JAX op)"


def _reachability(edges: dict, n: int) -> list[set]:
    """``reach[a]``: every state whose new value depends on ``a`` through a chain of steps'
    dependencies (``edges[j]`` holds the states ``j`` reads)."""
    out_edges = {a: {j for j in range(n) if a in edges[j]} for a in range(n)}
    reach = []
    for a in range(n):
        seen, todo = set(), list(out_edges[a])
        while todo:
            b = todo.pop()
            if b not in seen:
                seen.add(b)
                todo.extend(out_edges[b])
        reach.append(seen)
    return reach


def deps_of_in(dep: dict, v) -> frozenset:
    if type(v).__name__ == "Literal":
        return frozenset()
    return dep.get(v, frozenset())


def _declares_diag(call: ETPCall, pname: str, eqn) -> bool:
    """Whether the rule gives a result for this call (rules may return None per config)."""
    x, params, aux = call.unflatten([jnp.zeros(v.aval.shape, v.aval.dtype) if hasattr(v, "aval") else v.val
                                     for v in eqn.invars])
    y = jnp.zeros(eqn.outvars[0].aval.shape, eqn.outvars[0].aval.dtype)
    p_m = {k: u.get_mantissa(v) for k, v in params.items()}
    try:
        return call.out_to_param(pname, y, p_m, aux) is not None
    except Exception:
        return False
