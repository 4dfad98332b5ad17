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
history terms are batched over the chunk the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from etprop.algorithms.vjp import online_custom_vjp, sum_terms
from etprop.graph import executor

__all__ = ["make_chunk"]


def _flat2(tree):
    """Merge the two leading axes (chunk, batch) into one."""
    return jax.tree.map(lambda a: a if a is None else a.reshape((-1,) + a.shape[2:]), tree)


def make_chunk(algo):
    """A custom-VJP ``chunk(p, h, o, tr, a) -> (outs, h', o', tr')`` with per-step semantics."""
    g = algo.graph
    mf = g.mf
    batched = algo.batch_size is not None
    oax = [0 if b else None for st, b in zip(mf.other_states, mf.batched_other) for _ in jax.tree.leaves(st.value)]
    rels = g.relations
    kinds = [algo._kinds[i] for i in range(len(rels))]
    rel_eqns = sorted({r.eqn_index for r in rels})
    etp_ids = sorted(g.etp_eqns)
    ps = g.etp_operand_per_sample

    def sample_fwd(p, h, o, tr, a_seq):
        def body(carry, a):
            hh, oo, trs, count, _ = carry
            tail = list(oo) + list(a)
            outs, hn, on, rec = g.run(list(p) + list(hh) + tail, record=etp_ids)
            sig = algo._signals(p, hh, tail, rec)
            new, recs = list(trs), []
            for i, rel in enumerate(rels):
                if kinds[i] == "io":
                    recs.append(algo.io_snapshot(rel, trs[i], count))
                    new[i] = algo.advance_relation(rel, "io", trs[i], sig, count)
                else:
                    recs.append((sig.D[rel.group], sig.Df[rel.eqn_index][rel.group]))
            shared = {i: [None if ps[i][j] else v for j, v in enumerate(rec[i])] for i in rel_eqns}
            per = {i: [v if ps[i][j] else None for j, v in enumerate(rec[i])] for i in rel_eqns}
            return (list(hn), list(on), new, count + 1.0, shared), (outs, list(hh), list(oo), recs, per)

        shared0 = {i: executor.zero_operands(g, i, [not b for b in ps[i]]) for i in rel_eqns}
        init = (list(h), list(o), list(tr["rel"]), tr["count"], shared0)
        (hK, oK, trs, count, shared), (outs, hs, os, recs, per) = jax.lax.scan(body, init, a_seq)
        new_rel = []
        for i, rel in enumerate(rels):
            if kinds[i] == "io":
                new_rel.append(trs[i])
                continue
            D, Df = recs[i]
            ops = [sv if pv is None else pv for sv, pv in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            new_rel.append(_param_chunk_end(algo, rel, tr["rel"][i], D, Df, ops))
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
            if kinds[i] == "io":
                hist = _io_chunk_history(algo, rel, recs[i], d, flat_ops, n, batched)
            else:
                hist = _param_chunk_history(algo, rel, tr["rel"][i], recs[i], d, ops, flat_ops, n, batched)
            grads[rel.leaf] = grads[rel.leaf] + hist.astype(grads[rel.leaf].dtype)
        return grads

    return online_custom_vjp(fwd_impl, chunk_bwd)


def _matmul_rows(M, D, S):
    """(M D)[a][s] = sum_r M[a][r] D[r][s], per position, written out term by term."""
    return [[sum_terms([M[a][r] * D[r][s] for r in range(S)]) for s in range(S)] for a in range(S)]


def _param_chunk_end(algo, rel, e0, D, Df, ops):
    """Per sample: the per-parameter trace at the chunk end, in closed form."""
    S = len(Df)
    K = Df[0].shape[0]
    one, zero = jnp.ones_like(Df[0][0]), jnp.zeros_like(Df[0][0])
    eye = [[one if a == s else zero for s in range(S)] for a in range(S)]

    def rev(M, Dk):
        return _matmul_rows(M, Dk, S), M

    P, Q = jax.lax.scan(rev, eye, D, reverse=True)  # Q[a][s]: (K, P) ; P: products of all D
    gsum = [sum_terms([Q[a][s] * Df[s] for s in range(S)]) for a in range(S)]
    ex = lambda v: algo.expand(rel, ops, v)
    return [sum_terms([ex(P[a][s]) * e0[s] for s in range(S)]) + algo.param_vjp_over(rel, ops, gsum[a], K)
            for a in range(S)]


def _param_chunk_history(algo, rel, e0, rec, delta, ops, flat_ops, n, batched):
    D, Df = rec
    S = len(Df)

    def rev(c, inp):
        dj, Dj = inp
        c_next = c  # c_{j+1}
        cDj = [sum_terms([c[a] * Dj[a][s] for a in range(S)]) for s in range(S)]
        return [dj[s] + cDj[s] for s in range(S)], c_next

    c0 = [jnp.zeros_like(x[0]) for x in delta]
    c_first, c_shift = jax.lax.scan(rev, c0, (delta, D), reverse=True)
    start = algo.bsum_products(rel, ops, c_first, e0)
    cot = sum_terms([c_shift[a] * Df[a] for a in range(S)])
    if batched:
        cot = cot.reshape((n,) + cot.shape[2:])
    return start + algo.param_vjp_over(rel, flat_ops, cot, n)


def _io_chunk_history(algo, rel, rec, delta, flat_ops, n, batched):
    ex_hat, ef = rec
    S = len(ef)
    c = sum_terms([delta[a] * ef[a] for a in range(S)])
    flat = (lambda x: x.reshape((n,) + x.shape[2:])) if batched else (lambda x: x)
    if rel.n_x == 0:
        return algo.param_vjp_over(rel, flat_ops, flat(c), n)
    return algo.param_vjp_over(rel, flat_ops, flat(c), n, x_override=[flat(ex_hat)])
