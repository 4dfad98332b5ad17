"""Influence-matrix learners: exact `RTRL` (the reference oracle) and `SnAp` (sparse RTRL).

Per sample, flatten every hidden state of the model into one vector ``h`` of ``N``
numbers and every trainable parameter that structurally reaches it into ``theta``
(``|theta|`` numbers). One step is ``h^t = F(h^{t-1}, theta; others, x^t)``. The
influence matrix ``M^t = dh^t/dtheta`` (``N x |theta|``) obeys

    M^t = J^t M^{t-1} + I^t,      J^t = dF/dh (N x N),   I^t = dF/dtheta (N x |theta|)

and the per-step gradient is ``dL^t/dtheta = (dL^t/dh^{t-1}) M^{t-1} + (direct term)``.
The learners reuse the base class's window: exact reverse mode inside a window with the
window's first hidden state held fixed gives the direct term (so parameters that never
reach the hidden state, like a readout, get their exact instantaneous gradient) and the
learning signal ``delta = dL/dh^{t0}``; the history term is ``delta . M^{t0}``.

Layout: the influence is stored transposed, ``(|theta|, N)`` (one row per parameter
element, a "column" of ``M``), so ``J M`` is a `jax.vmap` of one linearised step over
rows: ``|theta|`` JVPs, never a dense ``N x N`` Jacobian.

SnAp-n (Menick et al. 2020) keeps ``M`` only on a fixed sparsity pattern: for SnAp-1 the
pattern of the immediate influence ``I``; for SnAp-n that of ``(|J| + 1)^(n-1) |I|``
(the units reachable from a parameter's immediate targets in ``n - 1`` more steps).
On a vanilla RNN SnAp-1 keeps ``dh_k/dW_ij`` only for ``k = j``. Entries are stored
compressed, ``(|theta|, k)`` values with the ``k`` kept hidden indices of every
parameter element; once the pattern stops growing with ``n`` ("saturated") SnAp is RTRL.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.vjp import online_custom_vjp, tree_sum0
from etprop.errors import ArgumentError, CompilationError
from etprop.graph import executor

__all__ = ["InfluenceAlgorithm", "RTRL", "SnAp"]


# -- flat layout of hidden state and parameters --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InfluenceLayout:
    """Per-sample flattening: hidden leaves -> ``h`` (N,), reaching param leaves -> ``theta``."""

    h_shapes: tuple
    h_dtypes: tuple
    theta_leaves: tuple[int, ...]  # indices into the graph's parameter leaves
    theta_shapes: tuple
    theta_dtypes: tuple
    dtype: object  # dtype of h, theta and the influence

    @property
    def N(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.h_shapes))

    @property
    def n_theta(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.theta_shapes))

    def leaf_slices(self):
        """``[(leaf index, start, stop)]`` of each parameter leaf inside ``theta``."""
        out, start = [], 0
        for leaf, shp in zip(self.theta_leaves, self.theta_shapes):
            n = int(np.prod(shp))
            out.append((leaf, start, start + n))
            start += n
        return out

    def flat_h(self, leaves):
        return jnp.concatenate([jnp.ravel(x).astype(self.dtype) for x in leaves])

    def unflat_h(self, v):
        out, start = [], 0
        for shp, dt in zip(self.h_shapes, self.h_dtypes):
            n = int(np.prod(shp))
            out.append(v[start:start + n].reshape(shp).astype(dt))
            start += n
        return out

    def flat_theta(self, p_leaves):
        return jnp.concatenate([jnp.ravel(p_leaves[i]).astype(self.dtype) for i in self.theta_leaves])

    def with_theta(self, p_leaves, v):
        """``p_leaves`` with the reaching leaves replaced by the pieces of ``v``."""
        out = list(p_leaves)
        for (leaf, a, b), shp, dt in zip(self.leaf_slices(), self.theta_shapes, self.theta_dtypes):
            out[leaf] = v[a:b].reshape(shp).astype(dt)
        return out

    def split_theta(self, v):
        """``{leaf: array of the leaf's shape}`` from a flat ``theta``-sized vector."""
        return {leaf: v[a:b].reshape(shp) for (leaf, a, b), shp in zip(self.leaf_slices(), self.theta_shapes)}


def influence_layout(graph) -> InfluenceLayout:
    """The parameters that structurally reach a hidden state (a jaxpr dependency walk:
    conservative, so a parameter is never dropped) and the hidden leaves, per sample."""
    _, reach, _ = executor.params_reaching(graph)
    avals = graph.param_leaf_avals
    theta = tuple(sorted(i for i in reach if jnp.issubdtype(avals[i].dtype, jnp.floating)))
    if not theta:
        raise CompilationError("no trainable parameter reaches the hidden state: there is no influence to carry")
    h_avals = executor.hidden_avals(graph)
    dtype = jnp.result_type(*[a.dtype for a in h_avals])
    return InfluenceLayout(tuple(tuple(a.shape) for a in h_avals), tuple(a.dtype for a in h_avals), theta,
                           tuple(tuple(avals[i].shape) for i in theta), tuple(avals[i].dtype for i in theta), dtype)


@dataclasses.dataclass
class SampleStep:
    """One step of one sample as functions of the flat hidden state and parameters.

    ``f_h(h) -> h'`` (theta fixed) and ``f_theta(theta) -> h'`` (h fixed), both ``(N,)``.
    """

    h: jax.Array
    theta: jax.Array
    f_h: object
    f_theta: object

    def jvp_h(self, tangents):
        """``J t`` for each row ``t`` of ``tangents`` (m, N): m JVPs of one linearisation."""
        _, lin = jax.linearize(self.f_h, self.h)
        return jax.vmap(lin)(tangents)

    def vjp_theta(self, seeds):
        """``s^T dF/dtheta`` for each row ``s`` of ``seeds`` (m, N): m VJPs -> (m, |theta|)."""
        _, pull = jax.vjp(self.f_theta, self.theta)
        return jax.vmap(lambda s: pull(s)[0])(seeds)


# -- the learner base ------------------------------------------------------------------------------


class InfluenceAlgorithm(OnlineAlgorithm):
    """Base of learners that carry (an estimate of) ``dh/dtheta`` for the whole hidden state.

    Subclasses define `init_influence` (one sample's carried state), `advance_influence`
    (one step) and `influence_grad` (``delta . M`` for one sample).
    """

    name = "influence"
    default_chunk = 0  # no closed-form chunks: every step advances the influence
    exact_across_groups = True  # the influence spans every hidden state, whatever its shape
    exact_influence = False  # True: the carried influence is dh/dtheta itself (RTRL)

    def approximations(self) -> dict[str, str]:
        """``{parameter: why its online gradient is not BPTT's}``: none for exact RTRL (the full
        influence of every parameter reaching the hidden state); the estimate's for the others."""
        lay = self.layout
        if self.exact_influence:
            return {}
        return {self.graph.param_leaf_names[leaf]: f"{self.describe_leaf(leaf)}: an approximation of dh/dtheta"
                for leaf in lay.theta_leaves}

    def compile_graph(self, *example_inputs, batch_size=None):
        self._layout = None
        return super().compile_graph(*example_inputs, batch_size=batch_size)

    @property
    def layout(self) -> InfluenceLayout:
        self._require_graph()
        if self._layout is None:
            self._layout = influence_layout(self.graph)
            try:
                self._setup()
            except Exception:
                self._layout = None  # a refused or failed setup leaves nothing half-built
                raise
        return self._layout

    def _setup(self):
        """Called once the layout is known, before the first influence is allocated."""

    # the per-relation hooks of the trace learners are unused here
    def relation_kind(self, rel):
        return "influence"

    def init_relation_trace(self, rel, kind):
        return []

    def advance_relation(self, rel, kind, trace, sig, count):
        raise AssertionError("influence learners advance the whole influence, not per relation")

    def relation_history(self, rel, kind, trace, delta, operands, count):
        raise AssertionError("influence learners compute the history term in influence_grad")

    def _init_sample_traces(self):
        self.layout  # noqa: B018  (builds the layout and the subclass's static structures)
        return self.init_influence()

    # -- subclass interface ------------------------------------------------------------------

    def init_influence(self):
        raise NotImplementedError

    def advance_influence(self, step: SampleStep, influence):
        """The influence after one more step (one sample)."""
        raise NotImplementedError

    def influence_grad(self, influence, delta):
        """``delta (N,) . M (N x |theta|)`` for one sample -> ``(|theta|,)``."""
        raise NotImplementedError

    def influence_entries(self) -> int:
        """Numbers carried per sample for the influence (for the report; keys not counted)."""
        return int(sum(np.prod(np.shape(a)) for a in jax.tree.leaves(self.init_influence())
                       if jnp.issubdtype(jnp.result_type(a), jnp.floating)))

    # -- one sample ------------------------------------------------------------------------------

    def sample_step(self, p_leaves, h_leaves, tail) -> SampleStep:
        lay, g = self.layout, self.graph
        p_leaves, h_leaves, tail = list(p_leaves), list(h_leaves), list(tail)

        def f_h(hv):
            return lay.flat_h(g.run(p_leaves + lay.unflat_h(hv) + tail)[1])

        def f_theta(th):
            return lay.flat_h(g.run(lay.with_theta(p_leaves, th) + h_leaves + tail)[1])

        return SampleStep(lay.flat_h(h_leaves), lay.flat_theta(p_leaves), f_h, f_theta)

    def _sample_window_fwd(self, p_leaves, h_leaves, o_leaves, infl, args_seq):
        g = self.graph

        def body(carry, a_leaves):
            h, o, m = carry
            tail = list(o) + list(a_leaves)
            outs, hn, on, _ = g.run(list(p_leaves) + list(h) + tail)
            m2 = self.advance_influence(self.sample_step(p_leaves, h, tail), m)
            return (list(hn), list(on), m2), outs

        (h, o, m), outs = jax.lax.scan(body, (list(h_leaves), list(o_leaves), infl), args_seq)
        return outs, h, o, m, None

    def _make_window(self):
        mf = self.graph.mf
        oax = [0 if b else None for st, b in zip(mf.other_states, mf.batched_other)
               for _ in jax.tree.leaves(st.value)]
        batched = self.batch_size is not None
        lay = self.layout

        def fwd_impl(p, h, o, tr, a):
            if not batched:
                return self._sample_window_fwd(p, h, o, tr, a)
            f = jax.vmap(lambda hh, oo, tt, aa: self._sample_window_fwd(p, hh, oo, tt, aa),
                         in_axes=(0, oax, 0, 1), out_axes=(1, 0, oax, 0, None))
            return f(h, o, tr, a)

        def plain(hh, pl, o, a):
            if not batched:
                return self._sample_window_plain(pl, hh, o, a)
            return jax.vmap(lambda h1, o1, a1: self._sample_window_plain(pl, h1, o1, a1),
                            in_axes=(0, oax, 1), out_axes=1)(hh, o, a)

        def window_bwd(res, cts):
            p, h, o, tr, a, _ = res
            # exact reverse mode inside the window with h^{t0} fixed: the direct term of every
            # parameter (summed over the batch) and the learning signal delta = dL/dh^{t0}
            _, pull = jax.vjp(lambda hh, pl: plain(hh, pl, o, a), list(h), list(p))
            delta, grads = pull(cts[0])
            grads = list(grads)
            if batched:
                d = jnp.concatenate([jnp.reshape(x, (x.shape[0], -1)).astype(lay.dtype) for x in delta], 1)
                # a halving tree of adds: XLA:CPU's reduce over a leading axis is several times slower
                hist = tree_sum0(jax.vmap(self.influence_grad)(tr, d))
            else:
                hist = self.influence_grad(tr, lay.flat_h(delta))
            for leaf, gv in lay.split_theta(hist).items():
                grads[leaf] = grads[leaf] + gv.astype(grads[leaf].dtype)
            return grads

        return online_custom_vjp(fwd_impl, window_bwd)

    # -- report ------------------------------------------------------------------------------

    def describe_leaf(self, leaf: int) -> str:
        return "influence"

    def memory_lines(self) -> list[str]:
        lay = self.layout
        n = self.influence_entries()
        item = jnp.dtype(lay.dtype).itemsize
        b = self.batch_size or 1
        return [f"influence memory: {n} entries per sample ({n * item} bytes; x batch {b} = {n * item * b} bytes); "
                f"dense N x |theta| = {lay.N} x {lay.n_theta} = {lay.N * lay.n_theta}"]

    def report(self) -> str:
        """Hidden state size, which parameters carry influence, and the influence memory."""
        lay, g = self.layout, self.graph
        lines = [f"{type(self).__name__} on {type(self.model).__name__} (batch_size={self.batch_size})",
                 f"hidden state: N = {lay.N} per sample: " + ", ".join(
                     f"{n} {s}" for n, s in zip(g.mf.hidden_names, lay.h_shapes)),
                 "parameters:"]
        for leaf, name in enumerate(g.param_leaf_names):
            shape = tuple(g.param_leaf_avals[leaf].shape)
            if leaf in lay.theta_leaves:
                lines.append(f"  {name} {shape}: {self.describe_leaf(leaf)}")
            else:
                lines.append(f"  {name} {shape}: does not reach the hidden state; exact gradient through "
                             f"the current step")
        return "\n".join(lines + self.memory_lines())


# -- exact RTRL ----------------------------------------------------------------------------------


class RTRL(InfluenceAlgorithm):
    """Exact real-time recurrent learning: carries the full influence ``dh/dtheta``.

    Equal to BPTT on any model (dense recurrence, several layers, any mix of states),
    with memory ``O(N |theta|)`` per sample and ``|theta|`` JVPs plus ``N`` VJPs of the
    step per time step: a reference oracle for small models.

    Args:
      model: the brainstate model.
      max_influence_entries: refuse (``ArgumentError``) models whose per-sample influence
        ``N x |theta|`` exceeds this many numbers (default ``2**22``, 16 MiB in float32
        per sample); raise it to run anyway.
    """

    name = "RTRL"
    exact_influence = True
    default_max_influence_entries = 2 ** 22

    def __init__(self, model, max_influence_entries: int | None = None):
        super().__init__(model)
        if max_influence_entries is None:
            max_influence_entries = self.default_max_influence_entries
        if isinstance(max_influence_entries, bool) or not isinstance(max_influence_entries, int) \
                or max_influence_entries < 1:
            raise ArgumentError(f"max_influence_entries must be a positive int, got {max_influence_entries!r}")
        self.max_influence_entries = max_influence_entries

    def _setup(self):
        lay = self._layout
        n = lay.N * lay.n_theta
        if n > self.max_influence_entries:
            raise ArgumentError(
                f"RTRL on {type(self.model).__name__}: the influence matrix has |theta| x N = {lay.n_theta} x "
                f"{lay.N} = {n} entries per sample (x batch {self.batch_size or 1}), above "
                f"max_influence_entries={self.max_influence_entries}. Use etprop.D_RTRL or etprop.SnAp(model, n=1) "
                f"for a model of this size, or pass a larger max_influence_entries to RTRL")

    def init_influence(self):
        lay = self.layout
        return jnp.zeros((lay.n_theta, lay.N), lay.dtype)

    def advance_influence(self, step, M):
        # M' = J M + I: |theta| JVPs over the rows of M (columns of dh/dtheta), N VJPs for I
        eye = jnp.eye(self.layout.N, dtype=self.layout.dtype)
        return step.jvp_h(M) + step.vjp_theta(eye).T

    def influence_grad(self, M, delta):
        return M @ delta

    def describe_leaf(self, leaf):
        n = int(np.prod(self.graph.param_leaf_avals[leaf].shape))
        return f"exact influence dh/dtheta (RTRL), N x {n} = {self.layout.N * n} entries/sample"


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
