"""Per-step online gradients computed a chunk of ``K`` steps at a time, in closed form.

Same result as ``K`` single steps (the per-step gradient ``direct_t + delta^t . e^{t-1}``
summed over the chunk), at matmul speed. With ``delta_j = dL^{t0+1+j}/dh^{t0+j}``,
``D_j``, ``Df_j``, ``u_j`` the quantities of step ``j = 0..K-1`` of the chunk and
``e0`` the per-parameter trace at the chunk start (``shared/design/algorithms.md``):

    c_K = 0,   c_j = delta_j + c_{j+1} D_j              (reverse recursion, per position)
    history = c_0 . e0 + sum_j pullback(u_j)(sum_a c_{j+1,a} Df_{j,a})
    e_K[a]  = sum_s P[a][s] e0[s] + sum_j pullback(u_j)(sum_s Q_j[a][s] Df_{j,s})
    Q_{K-1} = I,  Q_{j-1} = Q_j D_j,  P = Q_{-1}

Each ``sum_j pullback(u_j)(.)`` over the chunk (and the batch) is one pullback of
the operator vmapped over steps: for `matmul` one ``(I x K)(K x O)`` product.
The direct terms of all ``K`` steps come from one reverse pass vmapped over the
steps. Factorised (``io``) traces are advanced per step (they are small) and their
history terms are batched over the chunk the same way. The closed forms belong to the rules
(``chunk_record`` / ``chunk_end`` / ``chunk_history`` of `etprop.algorithms.traces`); this
module is the driver around them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from etprop.algorithms.vjp import online_custom_vjp
from etprop.errors import NotSupportedError
from etprop.graph import executor

__all__ = ["make_chunk"]


def make_chunk(algo):
    """A custom-VJP ``chunk(p, h, o, tr, a) -> (outs, h', o', tr')`` with per-step semantics."""
    g = algo.graph
    batched = algo.batch_size is not None
    oax = algo.other_axes()
    rels = g.relations
    rules, rops = algo.rules(), algo.relation_ops()
    if not all(r.has_closed_form for r in rules):
        raise NotSupportedError(f"{type(algo).__name__}: its traces have no closed form over a chunk of steps; "
                                f"set closed_form_chunk=None and default_chunk = 0 (per-step mode)")
    rel_eqns = sorted({r.eqn_index for r in rels})
    etp_ids = sorted(g.etp_eqns)
    ps = g.etp_operand_per_sample

    def sample_fwd(p, h, o, tr, a_seq):
        def body(carry, a):
            hh, oo, trs, count, _ = carry
            tail = list(oo) + list(a)
            outs, hn, on, rec, sig = algo.step_with_signals(p, hh, tail, etp_ids)
            new, recs = [], []
            for rule, ops, trace in zip(rules, rops, trs):
                nt, r = rule.chunk_record(ops, ops.load(trace), sig.of(ops.rel), count)
                new.append(ops.store(nt))
                recs.append(r)
            shared = {i: [None if ps[i][j] else v for j, v in enumerate(rec[i])] for i in rel_eqns}
            per = {i: [v if ps[i][j] else None for j, v in enumerate(rec[i])] for i in rel_eqns}
            return (list(hn), list(on), new, count + 1.0, shared), (outs, list(hh), list(oo), recs, per)

        shared0 = {i: executor.zero_operands(g, i, [not b for b in ps[i]]) for i in rel_eqns}
        init = (list(h), list(o), list(tr["rel"]), tr["count"], shared0)
        (hK, oK, trs, count, shared), (outs, hs, os, recs, per) = jax.lax.scan(body, init, a_seq)
        new_rel = []
        for i, rel in enumerate(rels):
            ops = [sv if pv is None else pv for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            ro = rops[i]
            new_rel.append(ro.store(rules[i].chunk_end(ro, ro.load(tr["rel"][i]), ro.load(trs[i]), recs[i], ops)))
        new_tr = {"rel": new_rel, "count": jnp.minimum(count, 1e30)}
        return outs, hK, oK, new_tr, (hs, os, recs, shared, per)

    def fwd_impl(p, h, o, tr, a):
        if not batched:
            return sample_fwd(p, h, o, tr, a)
        stacked_o = [1 if ax == 0 else None for ax in oax]
        f = jax.vmap(lambda hh, oo, tt, aa: sample_fwd(p, hh, oo, tt, aa), in_axes=(0, oax, 0, 1),
                     out_axes=(1, 0, oax, 0, (1, stacked_o, 1, None, 1)))
        return f(h, o, tr, a)

    def step_outs(pl, hk, ok, ak):
        return g.run(list(pl) + list(hk) + list(ok) + list(ak))[0]

    def all_steps(hs, pl, os, a):
        """Every step's outputs from its own pre-step state (vmapped over steps, then batch)."""
        if batched:
            per_b = lambda hk, ok, ak: jax.vmap(lambda h1, o1, a1: step_outs(pl, h1, o1, a1),
                                                in_axes=(0, oax, 0))(hk, ok, ak)
        else:
            per_b = lambda hk, ok, ak: step_outs(pl, hk, ok, ak)
        return jax.vmap(per_b)(hs, os, a)

    def chunk_bwd(res, cts):
        p, h, o, tr, a, (hs, os, recs, shared, per) = res
        _, pull = jax.vjp(lambda hh, pl: all_steps(hh, pl, os, a), list(hs), algo.backward_params(list(p)))
        delta, grads = pull(cts[0])  # delta: (K[, B], ...) per hidden state
        grads = list(grads)
        K = jax.tree.leaves(a)[0].shape[0]
        n = K * (algo.batch_size or 1)
        for i, rel in enumerate(rels):
            members = g.groups[rel.group].members
            d = [delta[m] for m in members]
            ops = [sv if pv is None else pv for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            flat_ops = [sv if pv is None else pv.reshape((n,) + pv.shape[2:]) if batched else pv
                        for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            hist = rules[i].chunk_history(rops[i], rops[i].load(tr["rel"][i]), recs[i], d, ops, flat_ops, n, batched)
            grads[rel.leaf] = grads[rel.leaf] + hist.astype(grads[rel.leaf].dtype)
        return grads

    return online_custom_vjp(fwd_impl, chunk_bwd)
