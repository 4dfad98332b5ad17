"""The compiler's position check: a hidden group's within-step Jacobian, and each operator's
``y -> h`` tail, must keep positions apart (block-diagonal per position), or per-position traces
would be wrong. A random probe of the linearised step finds the groups and relations that mix
positions (a normalisation, a roll, a plain matmul between units); they lose their relations,
and the report says why.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # for the annotations only: the compiler imports this module
    from etprop.graph.compiler import ETraceGraph

__all__ = ["check_positions"]


def check_positions(graph: ETraceGraph, leaves, seed: int) -> None:
    """Random-probe check that within-group Jacobians and y -> h tails preserve positions.

    A position-mixing block would make the per-position JVPs return row sums, i.e.
    wrong traces; such groups lose their relations (reported) instead.
    """
    n_p, n_h = graph.n_param_leaves, graph.n_hidden
    key = jax.random.key(seed)
    leaves = list(leaves)
    # move hidden values off special points (zeros, resets) so the probe sees generic Jacobians
    for i in range(n_h):
        key, sub = jax.random.split(key)
        h = leaves[n_p + i]
        leaves[n_p + i] = h + 0.1 * jax.random.normal(sub, jnp.shape(h), jnp.result_type(h))
    eqn_ids = sorted(graph.etp_eqns)
    zeros_y = {i: jnp.zeros(graph.etp_out_avals[i].shape, graph.etp_out_avals[i].dtype) for i in eqn_ids}

    def dyn(h, py):
        lv = leaves[:n_p] + list(h) + leaves[n_p + n_h:]
        return graph.run(lv, etp_pert=py, cut=True)[1]

    h0 = leaves[n_p:n_p + n_h]
    _, lin = jax.linearize(dyn, h0, zeros_y)
    zero_h = [jnp.zeros_like(h) for h in h0]
    zero_py = dict(zeros_y)
    bad_groups, key = _mixing_groups(graph, lin, h0, zero_h, zero_py, key)
    bad_rel = _mixing_tails(graph, lin, zero_h, zero_py, zeros_y, bad_groups, key)
    if not bad_groups and not bad_rel:
        return
    keep = []
    for ri, rel in enumerate(graph.relations):
        if rel.group in bad_groups:
            why = (f"hidden group [{rel.group}] ({', '.join(graph.groups[rel.group].names)}) mixes positions "
                   f"through plain (non-ETP) operations, so per-position traces would be wrong")
        elif ri in bad_rel:
            why = (f"the path from {rel.call.primitive.name}'s output to group [{rel.group}] mixes positions "
                   f"(e.g. a normalisation or roll), so per-position traces would be wrong")
        else:
            keep.append(rel)
            continue
        graph.untraced.setdefault(rel.leaf_name, why)
        warnings.warn(f"etprop: {rel.leaf_name} is not traced: {why}", stacklevel=3)
    graph.relations = tuple(keep)


def _mixing_groups(graph: ETraceGraph, lin, h0, zero_h, zero_py, key):
    """The groups whose within-step Jacobian (``lin``: the linearised step) mixes positions, by a
    random probe against its per-state columns: ``(bad_groups, key)``."""
    bad_groups = set()
    for g in graph.groups:
        cols = []
        for s in g.members:
            t = list(zero_h)
            t[s] = jnp.ones_like(h0[s])
            cols.append(lin(t, zero_py))
        key, sub = jax.random.split(key)
        r = {s: jax.random.normal(jax.random.fold_in(sub, s), jnp.shape(h0[s]), jnp.result_type(h0[s]))
             for s in g.members}
        t = list(zero_h)
        for s in g.members:
            t[s] = r[s]
        got = lin(t, zero_py)
        for a in g.members:
            want = sum(cols[si][a] * r[s] for si, s in enumerate(g.members))
            if not _close(got[a], want):
                bad_groups.add(g.index)
    return bad_groups, key


def _mixing_tails(graph: ETraceGraph, lin, zero_h, zero_py, zeros_y, bad_groups: set, key) -> set:
    """The relations (by index) outside ``bad_groups`` whose ``y -> h`` tail mixes positions, by a
    random probe of ``lin`` (the linearised step)."""
    bad_rel = set()
    for ri, rel in enumerate(graph.relations):
        if rel.group in bad_groups:
            continue
        ones = dict(zero_py)
        ones[rel.eqn_index] = jnp.ones_like(zeros_y[rel.eqn_index])
        col = lin(zero_h, ones)
        key, sub = jax.random.split(key)
        rv = jax.random.normal(sub, zeros_y[rel.eqn_index].shape, zeros_y[rel.eqn_index].dtype)
        pr = dict(zero_py)
        pr[rel.eqn_index] = rv
        got = lin(zero_h, pr)
        for a in graph.groups[rel.group].members:
            if not _close(got[a], col[a] * rv):
                bad_rel.add(ri)
    return bad_rel


def _close(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return bool(np.all(np.abs(a - b) <= 1e-4 * scale))
