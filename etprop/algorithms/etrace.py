"""D-RTRL (per-parameter traces), ES-D-RTRL (factorised traces) and their hybrid.

Per relation (one parameter, one hidden group of ``S`` states, per sample), with
``delta[a] = dL^t/dh_a^{t-1}`` and the direct gradient through step ``t`` held by the
base class:

D-RTRL, trace ``e[a] ~ dh_a/dtheta`` of the parameter's shape for each state ``a``::

    grad  += sum_a delta[a] * e[a]                   (delta broadcast by out_to_param)
    e'[a]  = sum_s D[a][s] * e[s] + pullback_y->param(Df[a])

ES-D-RTRL, ``e ~ ex_hat (x) ef``: input trace ``ex`` (x's shape), output traces ``ef[a]``::

    grad  += pullback(x := ex_hat)(sum_a delta[a] * ef[a])
    ex'    = alpha ex + (1 - alpha) x                (normalised average)
    ef'[a] = sum_s D[a][s] ef[s] + Df[a]             (the exact output-side recursion)

``ex_hat = ex / (1 - alpha^n)`` corrects the zero start by the trace step ``n``. With a
shared leak ``d`` and ``alpha = d`` the product is the exact trace; in steady state it
has no magnitude bias. The length-S sums are written out term by term (see
shared/design/pitfalls.md: XLA:CPU miscompiles the fused float32 reduce of the
einsum form).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import OnlineAlgorithm, StepSignals
from etprop.algorithms.vjp import sum_terms
from etprop.errors import ArgumentError, NotSupportedError
from etprop.graph import exactness, executor
from etprop.graph.compiler import Relation

__all__ = ["D_RTRL", "ParamDimVjpAlgorithm", "ES_D_RTRL", "IODimVjpAlgorithm", "pp_prop",
           "HybridDimVjpAlgorithm"]


def _decay(decay_or_rank) -> float | str:
    if decay_or_rank == "auto":
        return "auto"
    if isinstance(decay_or_rank, bool):
        raise ArgumentError(f"decay_or_rank must be a float in [0, 1) or an int rank >= 1, got {decay_or_rank!r}")
    if isinstance(decay_or_rank, int):
        if decay_or_rank < 1:
            raise ArgumentError(f"decay_or_rank as a rank must be >= 1, got {decay_or_rank}")
        return (decay_or_rank - 1) / (decay_or_rank + 1)
    if isinstance(decay_or_rank, float):
        if not 0.0 <= decay_or_rank < 1.0:
            raise ArgumentError(f"decay_or_rank as a decay must lie in [0, 1), got {decay_or_rank}")
        return decay_or_rank
    raise ArgumentError(f"decay_or_rank must be a float in [0, 1), an int rank >= 1 or 'auto', "
                        f"got {decay_or_rank!r}")


class _TraceRules(OnlineAlgorithm):
    """Both trace kinds; subclasses pick one per relation."""

    alpha = 0.0
    #: whether this rule's per-parameter trace is D-RTRL's recursion with the single-step
    #: learning signal, exact (= BPTT) wherever the model's structure allows
    exact_param_trace = False

    def approximations(self) -> dict[str, str]:
        """``{parameter: why its online gradient is not BPTT's}``. A parameter absent gets the exact
        gradient, by the model's structure (`etprop.graph.exactness`: no dense recurrence, no state
        with memory downstream of its group, no plain op carrying it into a state) and the rule's
        trace (the per-parameter trace of D-RTRL; factorised traces and e-prop's are approximations)."""
        self._require_graph()
        out = dict(exactness.gaps(self.graph))
        for i, r in enumerate(self.graph.relations):
            kind = self._kinds[i]
            if kind != "param" or not self.exact_param_trace:
                out.setdefault(r.leaf_name, f"{self.describe_kind(r, kind)}: an approximation of the trace")
        return out

    def report(self) -> str:
        """The graph report, then which parameters get BPTT's gradient and which an approximation."""
        gaps = self.approximations()
        exact = [n for n in self.graph.param_leaf_names if n not in gaps]
        lines = ["online gradient against BPTT:"]
        if exact:
            lines.append("  exact: " + ", ".join(exact))
        lines += [f"  approximate: {n}: {why}" for n, why in gaps.items()]
        return super().report() + "\n" + "\n".join(lines)

    def compile_graph(self, *example_inputs, batch_size=None):
        super().compile_graph(*example_inputs, batch_size=batch_size)
        self._alphas = {}
        if self.alpha == "auto":
            self._alphas = self._measured_leaks()
        return self

    def alpha_of(self, rel: Relation) -> float:
        """The input-trace decay of a factorised relation."""
        return self._alphas.get(rel, 0.0) if self.alpha == "auto" else self.alpha

    def _measured_leaks(self) -> dict:
        """``alpha = d`` per relation, ``d`` the leak of the group at the example point: the
        mean of the diagonal of ``D`` over positions, weighted over states by how strongly
        the operator's output drives each state (``|Df|``). Exact when every unit shares one
        leak and ``Df`` is constant (shared/design/algorithms.md)."""
        sig = self.probe_signals()
        out = {}
        for rel in self.graph.relations:
            D = sig.D[rel.group]
            Df = sig.Df[rel.eqn_index][rel.group]
            w = [float(jnp.mean(jnp.abs(f))) for f in Df]
            d = [float(jnp.mean(D[a][a])) for a in range(len(Df))]
            tot = sum(w)
            leak = sum(wi * di for wi, di in zip(w, d)) / tot if tot > 0 else max(d)
            out[rel] = min(max(leak, 0.0), 0.999)
        return out

    def _param_shape(self, rel: Relation):
        return tuple(self.graph.param_leaf_avals[rel.leaf].shape), self.graph.param_leaf_avals[rel.leaf].dtype

    def init_relation_trace(self, rel: Relation, kind: str):
        S = self.graph.groups[rel.group].num_states
        # a trace carries dh/dtheta: it needs the wider of the two dtypes (a float32 weight
        # from braintools may drive float64 hidden states)
        h_dtype = self.graph.groups[rel.group].dtype
        if kind == "param":
            shape, dtype = self._param_shape(rel)
            return [jnp.zeros(shape, jnp.result_type(dtype, h_dtype)) for _ in range(S)]
        y = executor.output_aval(self.graph, rel.eqn_index)
        if rel.n_x > 1:
            raise NotSupportedError(f"{rel.leaf_name}: factorised traces need a single-array input x, "
                                    f"{rel.call.primitive.name} has {rel.n_x}")
        ex = [jnp.zeros(a.shape, a.dtype) for a in executor.operand_avals(self.graph, rel.eqn_index)[:rel.n_x]]
        return {"ex": ex, "ef": [jnp.zeros(y.shape, jnp.result_type(y.dtype, h_dtype)) for _ in range(S)]}

    def advance_relation(self, rel: Relation, kind: str, trace, sig: StepSignals, count):
        D = sig.D[rel.group]
        Df = sig.Df[rel.eqn_index][rel.group]
        ops = sig.operands[rel.eqn_index]
        S = len(Df)
        if kind == "param":
            ex = lambda v: self.expand(rel, ops, v)
            return [sum_terms([ex(D[a][s]) * trace[s] for s in range(S)]) + self.param_vjp(rel, ops, Df[a])
                    for a in range(S)]
        ef = [sum_terms([D[a][s] * trace["ef"][s] for s in range(S)]) + Df[a] for a in range(S)]
        if rel.n_x == 0:
            return {"ex": [], "ef": ef}
        ex_old = trace["ex"][0]
        alpha = self.alpha_of(rel)
        ex = alpha * ex_old + (1.0 - alpha) * ops[0].astype(ex_old.dtype)
        return {"ex": [ex], "ef": ef}

    def io_snapshot(self, rel: Relation, trace, count):
        """``(ex_hat, ef)``: the factorised trace as the history term uses it."""
        if rel.n_x == 0:
            return None, trace["ef"]
        ex = trace["ex"][0]
        # bias correction by trace step n; alpha^n underflows to 0 and never overflows
        corr = 1.0 - jnp.power(jnp.asarray(self.alpha_of(rel), ex.dtype), count.astype(ex.dtype))
        return jnp.where(count > 0, ex / jnp.where(count > 0, corr, 1.0), 0.0), trace["ef"]

    def relation_history(self, rel: Relation, kind: str, trace, delta, operands, count):
        # batch level: delta and traces lead with the batch axis when batch_size is set
        S = len(delta)
        if kind == "param":
            return self.bsum_products(rel, operands, delta, trace)
        ex_hat, ef = self.io_snapshot(rel, trace, count)
        c = sum_terms([delta[a] * ef[a] for a in range(S)])
        if rel.n_x == 0:
            return self.param_vjp_sum(rel, operands, c)
        return self.param_vjp_sum(rel, operands, c, x_override=[ex_hat])


class D_RTRL(_TraceRules):
    """Diagonal RTRL in parameter dimension: one trace per parameter element and state.

    Memory per sample ``O(|theta| * S)``. Equals BPTT when the model's hidden Jacobian
    is block-diagonal per position (feed-forward spiking layers, element-wise
    recurrence, leaky integrators); with dense recurrent weights it drops the
    off-diagonal influence. Parameters whose elements drive several positions (conv
    kernels, LoRA's ``B``) have no per-parameter trace and use the factorised trace;
    the report says so.
    """

    name = "D-RTRL"
    exact_param_trace = True

    def relation_kind(self, rel: Relation) -> str:
        return "param" if rel.diagonal else "io"

    def describe_kind(self, rel, kind):
        if kind == "io":
            return "factorised trace (no per-parameter trace: each element drives several positions)"
        return super().describe_kind(rel, kind)


ParamDimVjpAlgorithm = D_RTRL


class ES_D_RTRL(_TraceRules):
    """Exponentially smoothed D-RTRL: trace factorised into input and output traces.

    Args:
      model: the brainstate model.
      decay_or_rank: the input trace's decay ``alpha`` in ``[0, 1)``, an int rank
        ``r`` giving ``alpha = (r - 1) / (r + 1)``, or ``'auto'``: per weight, the leak of
        the hidden group it drives, measured at compile time (exact for a layer whose units
        share one leak, see `_measured_leaks`).

    Memory per sample ``O(I + O * S)``. The input trace is a normalised, bias-corrected
    average and the output trace follows the exact recursion, so there is no
    steady-state magnitude bias.
    """

    name = "ES-D-RTRL"

    def __init__(self, model, decay_or_rank: float | int = 0.9):
        super().__init__(model)
        self.alpha = _decay(decay_or_rank)

    def relation_kind(self, rel: Relation) -> str:
        return "io"

    def describe_kind(self, rel, kind):
        return f"factorised trace (ES-D-RTRL, alpha={self.alpha_of(rel):g}{' measured' if self.alpha == 'auto' else ''})"


IODimVjpAlgorithm = ES_D_RTRL
pp_prop = ES_D_RTRL


class HybridDimVjpAlgorithm(_TraceRules):
    """Per relation, the cheaper trace: per-parameter where it fits (element-wise and
    small weights, always where ``S * |W| <= |x| + S * |y|``), factorised otherwise."""

    name = "hybrid"
    exact_param_trace = True

    def __init__(self, model, decay_or_rank: float | int = 0.9):
        super().__init__(model)
        self.alpha = _decay(decay_or_rank)

    def relation_kind(self, rel: Relation) -> str:
        if not rel.diagonal:
            return "io"
        S = self.graph.groups[rel.group].num_states
        w = int(np.prod(self.graph.param_leaf_avals[rel.leaf].shape))
        x = sum(int(np.prod(a.shape)) for a in executor.operand_avals(self.graph, rel.eqn_index)[:rel.n_x])
        y = int(np.prod(executor.output_aval(self.graph, rel.eqn_index).shape))
        return "param" if rel.n_x == 0 or S * w <= x + S * y else "io"

    def describe_kind(self, rel, kind):
        if kind == "param":
            return "per-parameter trace (smaller than or equal to the factorised one, and exact on the diagonal)"
        why = "no per-parameter trace exists" if not rel.diagonal else "factorised trace is smaller"
        return f"factorised trace, alpha={self.alpha_of(rel):g} ({why})"
