"""D-RTRL (per-parameter traces), ES-D-RTRL (factorised traces) and their hybrid.

Each learner here only chooses, per relation (a parameter driving a hidden group), one of the
trace rules of `etprop.algorithms.traces`:

* D-RTRL: `ParamTrace` (``e[a] ~ dh_a/dtheta``, exact where the hidden Jacobian is block-diagonal
  per position), the factorised trace where no per-parameter trace exists (conv kernels, LoRA's
  ``B``);
* ES-D-RTRL: `IOTrace` (``e ~ ex_hat (x) ef``) with the input-trace decay ``alpha`` given, from a
  rank, or measured per weight (``'auto'``);
* the hybrid: whichever is smaller, per relation.

`TraceLearner` is their common base (also of e-prop, OSTL and three-factor): the report of
what is exact, the measured leaks.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.traces import IOTrace, ParamTrace, TraceRule
from etprop.errors import ArgumentError
from etprop.graph import exactness, executor
from etprop.graph.compiler import Relation

__all__ = ["TraceLearner", "decay_option", "D_RTRL", "ParamDimVjpAlgorithm", "ES_D_RTRL", "IODimVjpAlgorithm",
           "pp_prop", "HybridDimVjpAlgorithm"]


def decay_option(decay_or_rank) -> float | str:
    """The input-trace decay ``alpha`` from ``decay_or_rank``: a float in ``[0, 1)``, an int rank
    ``r >= 1`` (``alpha = (r - 1) / (r + 1)``) or ``'auto'``; anything else is an ArgumentError."""
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


class TraceLearner(OnlineAlgorithm):
    """Learners on per-relation traces (`etprop.algorithms.traces`); subclasses pick the rule."""

    alpha = 0.0
    #: whether ``learning_signal='post'`` applies (a loss's gradient read from the traces)
    takes_post_signal = True
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

    def prepare_rules(self) -> None:
        self._alphas = self._measured_leaks() if self.alpha == "auto" else {}

    def param_or_io(self, rel: Relation) -> TraceRule:
        """The per-parameter trace where one exists (each parameter element drives one position),
        else the factorised one."""
        return ParamTrace() if rel.diagonal else IOTrace(self.alpha_of(rel))

    def alpha_of(self, rel: Relation) -> float:
        """The input-trace decay of a factorised relation."""
        return self._alphas.get(rel, 0.0) if self.alpha == "auto" else float(self.alpha)

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


class D_RTRL(TraceLearner):
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

    def trace_rule(self, rel: Relation) -> TraceRule:
        return self.param_or_io(rel)

    def describe_kind(self, rel, kind):
        if kind == "io":
            return "factorised trace (no per-parameter trace: each element drives several positions)"
        return super().describe_kind(rel, kind)


ParamDimVjpAlgorithm = D_RTRL


class ES_D_RTRL(TraceLearner):
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
        self.alpha = decay_option(decay_or_rank)

    def trace_rule(self, rel: Relation) -> TraceRule:
        return IOTrace(self.alpha_of(rel))

    def describe_kind(self, rel, kind):
        return f"factorised trace (ES-D-RTRL, alpha={self.alpha_of(rel):g}{' measured' if self.alpha == 'auto' else ''})"


IODimVjpAlgorithm = ES_D_RTRL
pp_prop = ES_D_RTRL


class HybridDimVjpAlgorithm(TraceLearner):
    """Per relation, the cheaper trace: per-parameter where it fits (element-wise and
    small weights, always where ``S * |W| <= |x| + S * |y|``), factorised otherwise."""

    name = "hybrid"
    exact_param_trace = True

    def __init__(self, model, decay_or_rank: float | int = 0.9):
        super().__init__(model)
        self.alpha = decay_option(decay_or_rank)

    def trace_rule(self, rel: Relation) -> TraceRule:
        return ParamTrace() if self._param_fits(rel) else IOTrace(self.alpha_of(rel))

    def _param_fits(self, rel: Relation) -> bool:
        if not rel.diagonal:
            return False
        S = self.graph.groups[rel.group].num_states
        w = int(np.prod(self.graph.param_leaf_avals[rel.leaf].shape))
        x = sum(int(np.prod(a.shape)) for a in executor.operand_avals(self.graph, rel.eqn_index)[:rel.n_x])
        y = int(np.prod(executor.output_aval(self.graph, rel.eqn_index).shape))
        return rel.n_x == 0 or S * w <= x + S * y

    def describe_kind(self, rel, kind):
        if kind == "param":
            return "per-parameter trace (smaller than or equal to the factorised one, and exact on the diagonal)"
        why = "no per-parameter trace exists" if not rel.diagonal else "factorised trace is smaller"
        return f"factorised trace, alpha={self.alpha_of(rel):g} ({why})"
