"""Influence-matrix learners: their base and exact `RTRL` (the reference oracle); SnAp in `etprop.algorithms.snap`.

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
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.traces import NoTrace
from etprop.algorithms.vjp import tree_sum0
from etprop.errors import ArgumentError, CompilationError
from etprop.graph import executor

__all__ = ["InfluenceLayout", "SampleStep", "InfluenceAlgorithm", "RTRL", "influence_layout"]


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

    # the influence spans the whole hidden state: no per-relation traces
    def trace_rule(self, rel):
        return NoTrace()

    def relation_kind(self, rel):
        return "influence"

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

    window_residual_axes = None  # the influence learners record no operands

    def window_history(self, res, delta, grads: list) -> list:
        """``grads`` plus the history term ``delta . M`` of every parameter the influence carries."""
        tr, lay = res[3], self.layout
        if self.batch_size is not None:
            d = jnp.concatenate([jnp.reshape(x, (x.shape[0], -1)).astype(lay.dtype) for x in delta], 1)
            # a halving tree of adds: XLA:CPU's reduce over a leading axis is several times slower
            hist = tree_sum0(jax.vmap(self.influence_grad)(tr, d))
        else:
            hist = self.influence_grad(tr, lay.flat_h(delta))
        for leaf, gv in lay.split_theta(hist).items():
            grads[leaf] = grads[leaf] + gv.astype(grads[leaf].dtype)
        return grads

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
