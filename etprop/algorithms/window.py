"""The window of a trace learner: ``K >= 1`` steps as one custom-VJP function, and its pieces.

Forward (per sample; batched by `jax.vmap`): run the steps, and at each step linearise it with
ETP inputs cut (`step_signals`: the per-position blocks ``D`` of the hidden Jacobian and the
``y -> h`` sensitivities ``Df``), and advance every relation's trace by its rule. Backward:
exact reverse mode inside the window with the window's initial hidden state held fixed
(`window_reverse`: every parameter's gradient through the window, and the learning signal
``delta = dL/dh^{t0}``), then each relation's history term ``delta . e^{t0}``
(`window_history`). A mixin of `etprop.algorithms.base.OnlineAlgorithm`; the influence learners
override `window_history`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from etprop.algorithms.traces import RelationSignals
from etprop.algorithms.vjp import online_custom_vjp
from etprop.graph import executor
from etprop.graph.compiler import Relation
from etprop.graph.readout import eval_readout

__all__ = ["StepSignals", "WindowFunctions"]


@dataclasses.dataclass(frozen=True)
class StepSignals:
    """Per-step, per-sample quantities the trace rules consume."""

    D: dict  # group -> [[D_as for s] for a], each of the group's shape
    Df: dict  # eqn index -> {group -> [Df_a]}
    operands: dict  # eqn index -> operand values (mantissas)

    def of(self, rel: Relation) -> RelationSignals:
        """The signals of one relation (see `etprop.algorithms.traces`)."""
        return RelationSignals(self.D[rel.group], self.Df[rel.eqn_index][rel.group], self.operands[rel.eqn_index])



class WindowFunctions:
    """`step_signals`, the per-sample window and the batch-level custom-VJP window (see above)."""

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
        return self.step_signals(leaves[:n_p], leaves[n_p:n_p + n_h], leaves[n_p + n_h:], rec)

    # -- per-sample pieces ---------------------------------------------------------------------

    def step_signals(self, p_leaves, h_leaves, tail, rec) -> StepSignals:
        """``D`` and ``Df`` by JVPs of the step linearised with ETP inputs cut."""
        zeros_y = self._zero_etp_outputs()
        _, lin = jax.linearize(lambda h, py: self.graph.run(list(p_leaves) + list(h) + list(tail), etp_pert=py,
                                                            cut=True)[1], list(h_leaves), zeros_y)
        return self.refine_signals(self._signals(lin, h_leaves, zeros_y, rec), p_leaves, h_leaves, tail)

    def step_with_signals(self, p_leaves, h_leaves, tail, record):
        """``(outs, h', o', recorded operands, StepSignals)`` of one step from ONE evaluation of
        the model: the step linearised with ETP inputs cut computes the step's values as its
        primal (a cut changes no value) and ``D``, ``Df`` as its JVPs, so the operators' products
        run once per step, not once for the step and again for the signals. No relations (BPTT):
        the plain step and no signals."""
        g = self.graph
        if not g.relations:
            outs, hn, on, rec = g.run(list(p_leaves) + list(h_leaves) + list(tail), record=record)
            return outs, hn, on, rec, None
        zeros_y = self._zero_etp_outputs()

        def dyn(h, py):
            outs, hn, on, rec = g.run(list(p_leaves) + list(h) + list(tail), etp_pert=py, cut=True, record=record)
            return hn, (outs, on, rec)

        hn, lin, (outs, on, rec) = jax.linearize(dyn, list(h_leaves), zeros_y, has_aux=True)
        sig = self.refine_signals(self._signals(lin, h_leaves, zeros_y, rec), p_leaves, h_leaves, tail)
        return outs, list(hn), on, rec, sig

    def refine_signals(self, sig: StepSignals, p_leaves, h_leaves, tail) -> StepSignals:
        """A learner's change to the step's signals (OSTL: the uncut recurrent blocks); default none."""
        return sig

    def _zero_etp_outputs(self) -> dict:
        return {i: jnp.zeros(a.shape, a.dtype) for i, a in self.graph.etp_out_avals.items()}

    def _signals(self, lin, h_leaves, zeros_y, rec) -> StepSignals:
        """``D`` (per group, one JVP per state) and ``Df`` (per operator, one JVP) from ``lin``,
        the step linearised in ``(h, etp output perturbations)``."""
        g = self.graph
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
            outs, hn, on, rec, sig = self.step_with_signals(p_leaves, h, tail, etp_ids)
            count = tr["count"]
            new_rel = [ops.store(rule.advance(ops, ops.load(trace), sig.of(ops.rel), count))
                       for rule, ops, trace in zip(self._rules, self._ops, tr["rel"])]
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

    #: ``out_axes`` over the batch of what the per-sample forward returns besides outputs, states
    #: and traces (the recorded operands: shared ones, then per-sample ones)
    window_residual_axes = (None, 0)

    def other_axes(self) -> list:
        mf = self.graph.mf
        return [0 if b else None for st, b in zip(mf.other_states, mf.batched_other)
                for _ in jax.tree.leaves(st.value)]

    def window_forward(self, p, h, o, tr, a):
        """`_sample_window_fwd` over the batch: ``(outs, h', o', traces', residuals)``."""
        if self.batch_size is None:
            return self._sample_window_fwd(p, h, o, tr, a)
        oax = self.other_axes()
        f = jax.vmap(lambda hh, oo, tt, aa: self._sample_window_fwd(p, hh, oo, tt, aa),
                     in_axes=(0, oax, 0, 1), out_axes=(1, 0, oax, 0, self.window_residual_axes))
        return f(h, o, tr, a)

    def window_outputs(self, h, p, o, a):
        """The window's outputs from its initial state (no traces), over the batch."""
        if self.batch_size is None:
            return self._sample_window_plain(p, h, o, a)
        return jax.vmap(lambda h1, o1, a1: self._sample_window_plain(p, h1, o1, a1),
                        in_axes=(0, self.other_axes(), 1), out_axes=1)(h, o, a)

    def window_reverse(self, res, cts):
        """Exact reverse mode inside the window with ``h^{t0}`` held fixed: the learning signal
        ``delta = dL/dh^{t0}`` and every parameter's gradient through the window (batch summed)."""
        p, h, o, _, a, _ = res
        _, pull = jax.vjp(lambda hh, pl: self.window_outputs(hh, pl, o, a), list(h),
                          self.backward_params(list(p)))
        delta, grads = pull(cts[0])
        return delta, list(grads)

    def window_history(self, res, delta, grads: list) -> list:
        """``grads`` plus each relation's history term ``delta . e^{t0}`` (`TraceRule.history`)."""
        _, _, _, tr, _, (shared, per) = res
        g = self.graph
        count = tr["count"][0] if self.batch_size is not None else tr["count"]
        for i, rel in enumerate(g.relations):
            ops = [sv if pv is None else pv for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            members = g.groups[rel.group].members
            hist = self.relation_history(i, tr["rel"][i], [delta[m] for m in members], ops, count)
            grads[rel.leaf] = grads[rel.leaf] + hist.astype(grads[rel.leaf].dtype)
        return grads

    def readout_outputs(self, h_new, p, o, a):
        """The step's outputs from its *new* hidden state (`etprop.graph.readout`), over the batch;
        ``a`` has a window axis of one step."""
        g, sl = self.graph, self._readout

        def one(h1, o1, a1):
            return [x[None] for x in eval_readout(g, sl, p, h1, list(o1) + [x[0] for x in a1])]

        if self.batch_size is None:
            return one(h_new, o, a)
        return jax.vmap(one, in_axes=(0, self.other_axes(), 1), out_axes=1)(h_new, o, a)

    def _make_post_window(self):
        """One step with the learning signal at the post-step state (``learning_signal='post'``,
        braintrace's convention): forward as `window_forward`; backward: the VJP of the readout
        alone gives ``delta = dL^t/dh^t`` and the readout's direct gradients, and each relation
        reads its gradient from the trace *after* the step (`window_history` with the advanced
        traces). No VJP through the step itself (its recurrent products included)."""
        def fwd(p, h, o, tr, a):
            outs, h2, o2, tr2, res = self.window_forward(p, h, o, tr, a)
            return outs, h2, o2, tr2, (h2, tr2, res)

        def bwd(res_all, cts):
            p, _, o, _, a, (h2, tr2, res) = res_all
            _, pull = jax.vjp(lambda hh, pl: self.readout_outputs(hh, pl, o, a), list(h2),
                              self.backward_params(list(p)))
            delta, grads = pull(cts[0])
            return self.window_history((p, None, o, tr2, a, res), delta, list(grads))

        return online_custom_vjp(fwd, bwd)

    def _make_window(self):
        """The window as one custom-VJP function (`online_custom_vjp`): forward `window_forward`,
        backward `window_reverse` then `window_history`."""
        return online_custom_vjp(self.window_forward, lambda res, cts: self.window_history(
            res, *self.window_reverse(res, cts)))
