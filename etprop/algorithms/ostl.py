"""OSTL (Bohnstingl et al. 2022, online spatio-temporal learning), two regimes.

OSTL splits the gradient of a layer into a *spatial* learning signal (the loss at step
``t`` back-propagated through the layers at step ``t`` only: here ``delta^t = dL^t/dh^{t-1}``
over all paths of one step, as in every learner of this package) and a *temporal*
eligibility trace ``e^t = dh^t/dtheta`` carried forward. The two regimes differ in how much
of the one-step hidden Jacobian ``J^t = dh^t/dh^{t-1}`` the trace recursion keeps.

`OSTLRecurrent` ("with H": the recurrent self-terms are kept). Per-parameter trace

    e^t[a] = sum_s Dfull^t[a][s] e^{t-1}[s] + dh_a^t/dtheta|_now ,

``Dfull^t`` the per-position ``S x S`` block of the FULL one-step Jacobian: the unit's own
dynamics (leak, reset, adaptation, gates; for multi-state units like ALIF the whole block,
not only its diagonal) PLUS the self-terms that go through the operators, e.g. the
diagonal ``H[p, p]`` of a recurrent weight. D-RTRL's ``D`` cuts every path through an
operator input, so it drops those self-terms. Hence:

* no hidden state feeds an operator input (feed-forward spiking layers, leaky
  integrators, element-wise recurrence): ``Dfull = D``, OSTLRecurrent = D-RTRL = BPTT;
* a recurrent weight whose Jacobian is per-position (a diagonal ``H``): ``J`` is
  block-diagonal, the trace is the true influence, OSTLRecurrent = BPTT while D-RTRL is not;
* a dense recurrent weight: cross-unit terms ``p != q`` are still dropped (an
  approximation; the cost of keeping them is RTRL's ``O(n^3)`` memory).

The blocks of the full Jacobian are read with one JVP per position and state (the
Jacobian mixes positions, so the all-ones JVP would give row sums): ``O(P S)`` linearised
step evaluations per step, only for groups with such recurrent paths (found at compile
time); elsewhere it reuses D-RTRL's ``D`` at no cost. Memory: D-RTRL's ``O(S |W|)``.

`OSTLFeedforward` ("without H": no temporal recursion between units, and within a unit
only its own diagonal). Factorised trace with an instantaneous input factor

    e^t[i, o, a] ~ x^t[i] ef^t[o, a],      ef^t[a] = D^t[a][a] ef^{t-1}[a] + Df^t[a] ,

i.e. ES-D-RTRL with ``alpha = 0`` (the input trace is the current input, no input
history) and the output-side recursion restricted to each state's own diagonal ``D[a][a]``
(per unit and per state: no state-to-state coupling such as ALIF's ``v -> b``). The true
per-unit trace is ``sum_tau P(tau, t) x^tau Df^tau``; the rule replaces ``x^tau`` by
``x^t``, so it is exact when the input is constant over the trace's memory, when the unit
has no memory (``D = 0``), or for weights without an input (element-wise weights: then it
is D-RTRL's trace on the diagonal). For single-state groups it equals
``ES_D_RTRL(decay_or_rank=0.0)``. Memory ``O(I + S O)`` per weight, time like ES-D-RTRL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import StepSignals
from etprop.algorithms.etrace import TraceLearner
from etprop.algorithms.traces import FeedforwardIOTrace, TraceRule
from etprop.graph import executor
from etprop.graph.compiler import Relation

__all__ = ["OSTLRecurrent", "OSTLFeedforward"]


class OSTLRecurrent(TraceLearner):
    """OSTL with the recurrent self-terms: D-RTRL's per-parameter trace with the per-position
    blocks of the full one-step Jacobian (see the module docstring)."""

    name = "OSTL-recurrent"
    _rec_groups: tuple = ()

    def prepare_rules(self) -> None:
        super().prepare_rules()
        self._rec_groups = executor.groups_with_operator_recurrence(self.graph)

    def trace_rule(self, rel: Relation) -> TraceRule:
        return self.param_or_io(rel)

    def refine_signals(self, sig: StepSignals, p_leaves, h_leaves, tail) -> StepSignals:
        if not self._rec_groups:
            return sig
        D = dict(sig.D)
        D.update(self._full_blocks(p_leaves, h_leaves, tail))
        return StepSignals(D, sig.Df, sig.operands)

    def _full_blocks(self, p_leaves, h_leaves, tail) -> dict:
        """``{group: [[Dfull[a][s]]]}``: per-position blocks of ``dh^t/dh^{t-1}`` with no cut,
        one vmapped JVP per (state, position)."""
        g = self.graph

        def dyn(h):
            return g.run(list(p_leaves) + list(h) + list(tail))[1]

        _, lin = jax.linearize(dyn, list(h_leaves))
        zero = [jnp.zeros_like(h) for h in h_leaves]
        out = {}
        for gi in self._rec_groups:
            grp = g.groups[gi]
            n = int(np.prod(grp.shape))
            cols = []
            for s in grp.members:
                eye = jnp.eye(n, dtype=h_leaves[s].dtype).reshape((n,) + tuple(grp.shape))

                def col(e, s=s):
                    t = list(zero)
                    t[s] = e
                    r = lin(t)
                    return [r[a] for a in grp.members]

                res = jax.vmap(col)(eye)  # per state a: (n, *shape), row q = d h_a / d h_s[q]
                cols.append([jnp.diagonal(r.reshape(n, n)).reshape(grp.shape) for r in res])
            S = len(grp.members)
            out[gi] = [[cols[si][ai] for si in range(S)] for ai in range(S)]
        return out

    def describe_kind(self, rel, kind):
        src = ("blocks of the full Jacobian (recurrent self-terms kept)" if rel.group in self._rec_groups
               else "blocks of the unit dynamics (no operator recurrence here: = D-RTRL)")
        if kind == "param":
            return f"OSTL recurrent: per-parameter trace, per-position {src}"
        return f"OSTL recurrent: factorised trace (no per-parameter trace exists), {src}"


class OSTLFeedforward(TraceLearner):
    """OSTL without recurrence: input x output factorised trace, instantaneous input factor,
    per-state diagonal output recursion (see the module docstring)."""

    name = "OSTL-feedforward"
    alpha = 0.0

    def trace_rule(self, rel: Relation) -> TraceRule:
        return FeedforwardIOTrace()

    def describe_kind(self, rel, kind):
        return "OSTL feedforward: factorised trace, current input x per-state diagonal output trace"
