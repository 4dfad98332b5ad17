"""SnAp-n: sparse RTRL (Menick et al. 2020), an influence learner (`etprop.algorithms.rtrl`).

SnAp-n (Menick et al. 2020) keeps ``M`` only on a fixed sparsity pattern: for SnAp-1 the
pattern of the immediate influence ``I``; for SnAp-n that of ``(|J| + 1)^(n-1) |I|``
(the units reachable from a parameter's immediate targets in ``n - 1`` more steps).
On a vanilla RNN SnAp-1 keeps ``dh_k/dW_ij`` only for ``k = j``. Entries are stored
compressed, ``(|theta|, k)`` values with the ``k`` kept hidden indices of every
parameter element; once the pattern stops growing with ``n`` ("saturated") SnAp is RTRL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.rtrl import InfluenceAlgorithm
from etprop.errors import ArgumentError

__all__ = ["SnAp", "greedy_coloring", "snap_pattern", "saturation_order"]


# -- SnAp ----------------------------------------------------------------------------------------


def greedy_coloring(conflict: np.ndarray) -> np.ndarray:
    """Colours of the nodes of a graph (boolean adjacency ``conflict``, n x n) such that
    adjacent nodes differ; largest degree first."""
    n = conflict.shape[0]
    colors = np.full(n, -1, np.int64)
    for i in np.argsort(-conflict.sum(1), kind="stable"):
        used = set(colors[conflict[i] & (colors >= 0)].tolist())
        c = 0
        while c in used:
            c += 1
        colors[i] = c
    return colors


def snap_pattern(pat_J: np.ndarray, pat_I: np.ndarray, n: int) -> np.ndarray:
    """Kept entries of SnAp-n, ``(N, |theta|)`` boolean: the pattern of ``(|J| + 1)^(n-1) |I|``."""
    reach = (pat_J | np.eye(pat_J.shape[0], dtype=bool)).astype(np.int64)
    p = pat_I.copy()
    for _ in range(n - 1):
        nxt = (reach @ p.astype(np.int64)) > 0
        if np.array_equal(nxt, p):
            break
        p = nxt
    return p


def saturation_order(pat_J: np.ndarray, pat_I: np.ndarray) -> int:
    """The smallest n from which SnAp-n keeps the whole reachable pattern (= RTRL)."""
    reach = (pat_J | np.eye(pat_J.shape[0], dtype=bool)).astype(np.int64)
    p, n = pat_I.copy(), 1
    while True:
        nxt = (reach @ p.astype(np.int64)) > 0
        if np.array_equal(nxt, p):
            return n
        p, n = nxt, n + 1


class SnAp(InfluenceAlgorithm):
    """SnAp-n: RTRL with the influence kept only on the ``n``-step sparsity pattern.

    Args:
      model: the brainstate model.
      n: the order, an int >= 1. SnAp-1 keeps the immediate influence pattern (``dh_k/dW_ij``
        with ``k = j`` for a dense layer): exact where the hidden Jacobian is per-unit
        (block-)diagonal, as D-RTRL. Larger ``n`` keeps more; once the pattern is saturated
        (see the report) SnAp equals RTRL.
      mode: how ``J M`` is formed on the kept entries. ``'compressed'``: the entries of
        ``J`` that the pattern needs, from one JVP per colour of a column colouring of
        ``J``'s sparsity, then a gathered product (cost ~ ``|theta| k^2``); ``'jvp'``: the
        kept entries scattered into dense tangents, ``|theta|`` JVPs (like RTRL, memory
        transient). ``'auto'`` (default) picks ``'compressed'`` when ``k^2 <= N``.
      probe_points: random points (besides the current state) at which the sparsity of
        ``J`` and ``dF/dtheta`` is measured at compile time; the pattern is their union.
      seed: seed of the probe points.

    Sparsity is found numerically (an entry is structural if it is nonzero at any probe
    point): a derivative that is exactly zero at every probe point (e.g. a ReLU dead at all
    of them) is treated as structurally zero. Compile time holds the dense ``N x |theta|``
    pattern once; the carried influence is ``(|theta|, k)`` values, ``k`` the largest
    number of kept hidden entries of one parameter element.
    """

    name = "SnAp"

    def __init__(self, model, n: int = 1, *, mode: str = "auto", probe_points: int = 8, seed: int = 0):
        super().__init__(model)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArgumentError(f"SnAp order n must be an int >= 1, got {n!r}")
        if mode not in ("auto", "compressed", "jvp"):
            raise ArgumentError(f"SnAp mode must be 'auto', 'compressed' or 'jvp', got {mode!r}")
        if isinstance(probe_points, bool) or not isinstance(probe_points, int) or probe_points < 0:
            raise ArgumentError(f"probe_points must be an int >= 0, got {probe_points!r}")
        self.n, self.mode, self.probe_points, self.seed = n, mode, probe_points, seed

    # -- compile time: patterns, colourings, gather indices ------------------------------------

    def probe_sparsity(self):
        """``(pat_J (N, N), pat_I (N, |theta|))``: union of nonzero patterns over the current
        point and ``probe_points`` random ones (hidden states and float inputs moved by
        ``N(0, 1 + rms)``, reaching parameters by ``0.1 (rms + 0.1) N(0, 1)``); one jitted call."""
        lay, g = self._layout, self.graph
        mf = g.mf
        params, hidden, others = mf.values()
        if self.batch_size is not None:
            hidden = tuple(v[0] for v in hidden)
            others = tuple(v[0] if b else v for v, b in zip(others, mf.batched_other))
        p0, h0 = jax.tree.leaves(params), jax.tree.leaves(hidden)
        o0, a0 = jax.tree.leaves(others), jax.tree.leaves(self._example_sample)
        is_float = lambda x: jnp.issubdtype(jnp.result_type(x), jnp.floating)
        rms = lambda x: float(np.sqrt(np.mean(np.square(np.asarray(x))))) if np.size(x) else 0.0
        # the points are drawn with NumPy: random bits inside the jitted probe compile slowly
        rng = np.random.default_rng(self.seed)
        m = self.probe_points + 1

        def points(xs, scale, moved):
            out = []
            for i, x in enumerate(xs):
                x = np.asarray(x)
                noise = rng.standard_normal((m,) + x.shape) * scale(x)
                noise[0] = 0.0  # point 0 is the current one
                out.append(jnp.asarray(x + noise, x.dtype) if moved(i, x) else jnp.broadcast_to(x, (m,) + x.shape))
            return out

        h = points(h0, lambda x: 1.0 + rms(x), lambda i, x: True)
        p = points(p0, lambda x: 0.1 * (rms(x) + 0.1), lambda i, x: i in lay.theta_leaves)
        a = points(a0, lambda x: 1.0 + rms(x), lambda i, x: is_float(x))

        @jax.jit
        def probe(p, h, a):
            def jacs(p, h, a):
                step = self.sample_step(p, h, list(o0) + list(a))
                # NaN counts as nonzero: never drop an entry on a bad probe
                return jax.jacfwd(step.f_h)(step.h) != 0, jax.jacrev(step.f_theta)(step.theta) != 0
            J, I = jax.vmap(jacs)(p, h, a)
            return jnp.any(J, 0), jnp.any(I, 0)

        J, I = probe(p, h, a)
        return np.array(J), np.array(I)

    def _setup(self):
        lay = self._layout
        pat_J, pat_I = self.probe_sparsity()
        P = snap_pattern(pat_J, pat_I, self.n)  # (N, |theta|)
        self._saturation = saturation_order(pat_J, pat_I)
        counts = P.sum(0)
        k = max(int(counts.max()), 1)
        order = np.argsort(~P, axis=0, kind="stable")[:k]  # kept rows first, ascending
        valid = np.take_along_axis(P, order, 0).T  # (|theta|, k)
        K = np.where(valid, order.T, 0)  # padding points at row 0 with weight 0
        self._k, self._kept = k, int(counts.sum())
        self._per_leaf_kept = {leaf: int(counts[a:b].sum()) for leaf, a, b in lay.leaf_slices()}
        self._K = jnp.asarray(K, jnp.int32)
        self._valid = jnp.asarray(valid, lay.dtype)
        n_theta, N = lay.n_theta, lay.N
        cols = np.arange(n_theta)[:, None]
        # immediate influence: one VJP per colour of rows whose dF/dtheta patterns are disjoint
        row_color = greedy_coloring((pat_I.astype(np.int64) @ pat_I.T.astype(np.int64)) > 0)
        self._n_colors_I = int(row_color.max()) + 1
        self._seeds_I = jnp.asarray(np.eye(self._n_colors_I)[row_color].T, lay.dtype)  # (colours, N)
        self._imm_idx = jnp.asarray(row_color[K] * n_theta + cols, jnp.int32)
        self._imm_mask = jnp.asarray(valid & pat_I[K, cols], lay.dtype)
        mode = self.mode
        if mode == "auto":
            mode = "compressed" if k * k <= N else "jvp"
        self._mode = mode
        self._n_colors_J = None
        if mode == "compressed":
            # J's entries on the pattern: one JVP per colour of columns with disjoint row patterns
            col_color = greedy_coloring((pat_J.T.astype(np.int64) @ pat_J.astype(np.int64)) > 0)
            self._n_colors_J = int(col_color.max()) + 1
            self._seeds_J = jnp.asarray(np.eye(self._n_colors_J)[col_color].T, lay.dtype)
            rows, cols_ = K[:, :, None], K[:, None, :]  # (|theta|, k, k): entry J[K_a, K_b]
            self._J_idx = jnp.asarray(col_color[cols_] * N + rows, jnp.int32)
            self._J_mask = jnp.asarray(valid[:, :, None] & valid[:, None, :] & pat_J[rows, cols_], lay.dtype)

    # -- run time --------------------------------------------------------------------------------

    def init_influence(self):
        return jnp.zeros((self.layout.n_theta, self._k), self.layout.dtype)

    def advance_influence(self, step, M):
        lay = self.layout
        # kept entries of the immediate influence, from the compressed VJPs
        Ic = step.vjp_theta(self._seeds_I)  # (colours, |theta|)
        imm = jnp.take(jnp.ravel(Ic), self._imm_idx) * self._imm_mask
        if self._mode == "compressed":
            Jc = jnp.ravel(step.jvp_h(self._seeds_J))  # (colours * N,): Jc[c, r] = J[r, col of colour c]
            # (J M)[K_a] = sum_b J[K_a, K_b] M[b]; the length-k sum written out (XLA:CPU
            # miscompiles the fused float32 reduce form, shared/design/pitfalls.md)
            jm = None
            for b in range(self._k):
                term = jnp.take(Jc, self._J_idx[:, :, b]) * self._J_mask[:, :, b] * M[:, b:b + 1]
                jm = term if jm is None else jm + term
        else:
            rows = jnp.arange(lay.n_theta)[:, None]
            dense = jnp.zeros((lay.n_theta, lay.N), lay.dtype).at[rows, self._K].add(M * self._valid)
            jm = jnp.take_along_axis(step.jvp_h(dense), self._K, 1) * self._valid
        return jm + imm

    def influence_grad(self, M, delta):
        # sum_a delta[K_a] M[a], written out over the k kept entries
        d = jnp.take(delta, self._K)
        g = d[:, 0] * M[:, 0]
        for a in range(1, self._k):
            g = g + d[:, a] * M[:, a]
        return g

    # -- report ----------------------------------------------------------------------------------

    def kept_entries(self) -> dict:
        """``{parameter leaf name: influence entries kept per sample}`` (the pattern's size)."""
        names = self.graph.param_leaf_names
        self.layout  # noqa: B018
        return {names[leaf]: n for leaf, n in self._per_leaf_kept.items()}

    @property
    def saturation(self) -> int:
        """The smallest order from which SnAp keeps the whole reachable pattern (= RTRL)."""
        self.layout  # noqa: B018
        return self._saturation

    def describe_leaf(self, leaf):
        n = int(np.prod(self.graph.param_leaf_avals[leaf].shape))
        kept = self._per_leaf_kept[leaf]
        return (f"SnAp-{self.n} influence, {kept} of N x {n} = {self.layout.N * n} entries kept "
                f"({100.0 * kept / max(self.layout.N * n, 1):.3g}%)")

    def memory_lines(self):
        lay = self.layout
        sat = self.n >= self._saturation
        lines = super().memory_lines()
        lines.append(f"SnAp-{self.n}: {self._kept} influence entries on the pattern, stored as |theta| x k = "
                     f"{lay.n_theta} x {self._k} (padded); pattern saturates at n = {self._saturation}"
                     + (" (this learner equals RTRL)" if sat else ""))
        how = (f"compressed J from {self._n_colors_J} JVPs (column colouring)" if self._mode == "compressed"
               else f"{lay.n_theta} JVPs on dense tangents")
        lines.append(f"per step: {how}; immediate influence from {self._n_colors_I} VJPs (row colouring)")
        return lines
