"""Trace rules as small frozen objects of pure functions over explicit pytrees.

A rule says, for one relation (a parameter driving a hidden group of ``S`` states; per sample
unless noted), how its eligibility trace starts, advances by one step, and turns a learning
signal into a gradient. It sees the relation only through `RelationOps` (the operator's
pullbacks and broadcasts) and the step only through `RelationSignals`:

* ``D[a][s]``: per position, how state ``s`` before the step moves state ``a`` after it
  (ETP inputs cut);
* ``Df[a]``: how the operator's output ``y`` moves state ``a``;
* ``operands``: the operator's operands at the step.

Interface (``trace`` any pytree of arrays, ``count`` the trace step ``n``)::

    init(ops)                                   -> trace
    advance(ops, trace, sig, count)             -> trace after one more step
    history(ops, trace, delta, operands, count) -> sum_b sum_a delta[a] . e[a]   (batch level)

``delta[a]`` (``(B, *positions)``, or None for no signal) is ``dL/dh_a`` at the trace's time.
Rules with a closed form over a chunk of steps (``has_closed_form``) also give
``chunk_record`` / ``chunk_end`` / ``chunk_history`` (see `etprop.algorithms.chunked` and
``shared/design/algorithms.md``). The learners (`etprop.algorithms.etrace`, ...) only choose a
rule per relation; adding a rule is one class here.

The length-``S`` sums are written out term by term (``sum_terms``): XLA:CPU miscompiles the
fused float32 reduce of the einsum form (shared/design/pitfalls.md).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from etprop.algorithms.relation_ops import RelationOps
from etprop.algorithms.vjp import sum_terms
from etprop.errors import NotSupportedError

__all__ = ["RelationSignals", "TraceRule", "NoTrace", "ParamTrace", "IOTrace", "FeedforwardIOTrace", "LowPass"]


@dataclasses.dataclass(frozen=True)
class RelationSignals:
    """One step's signals for one relation, one sample (see the module docstring)."""

    D: list  # [[D[a][s] for s] for a], each of the group's shape
    Df: list  # [Df[a] for a], each of the group's shape
    operands: list  # the ETP operator's operands (mantissas)


def _signal_terms(pairs):
    """``sum`` over the (signal, trace) pairs whose signal is not None (None: no signal)."""
    return sum_terms([d * e for d, e in pairs if d is not None])


class TraceRule:
    """Base of the trace rules: ``kind`` names the trace's form in reports (``'param'``, ``'io'``)."""

    kind: ClassVar[str] = "none"
    #: chunks of per-step gradients in closed form (`etprop.algorithms.chunked`)
    has_closed_form: ClassVar[bool] = False

    def init(self, ops: RelationOps):
        raise NotImplementedError

    def advance(self, ops: RelationOps, trace, sig: RelationSignals, count):
        raise NotImplementedError

    def history(self, ops: RelationOps, trace, delta: list, operands, count):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NoTrace(TraceRule):
    """No per-relation trace: learners whose gradient is not read from relation traces (BPTT's
    reverse mode, the influence learners' whole-state influence) give every relation this rule."""

    def init(self, ops):
        return []

    def advance(self, ops, trace, sig, count):
        return trace

    def history(self, ops, trace, delta, operands, count):
        raise NotSupportedError(f"{ops.rel.leaf_name}: no per-relation trace to read a gradient from")


@dataclasses.dataclass(frozen=True)
class ParamTrace(TraceRule):
    """D-RTRL's per-parameter trace ``e[a] ~ dh_a/dtheta`` (the parameter's shape, per state)::

        e'[a]  = sum_s D[a][s] e[s] + pullback_{y -> theta}(Df[a])
        grad  += sum_a delta[a] * e[a]                  (delta broadcast by out_to_param)
    """

    kind: ClassVar[str] = "param"
    has_closed_form: ClassVar[bool] = True

    def init(self, ops):
        return [jnp.zeros(ops.param_shape, ops.trace_dtype) for _ in range(ops.num_states)]

    def advance(self, ops, trace, sig, count):
        D, Df, S = sig.D, sig.Df, len(sig.Df)
        ex = lambda v: ops.expand(sig.operands, v)
        return [sum_terms([ex(D[a][s]) * trace[s] for s in range(S)]) + ops.param_vjp(sig.operands, Df[a])
                for a in range(S)]

    def history(self, ops, trace, delta, operands, count):
        return ops.bsum_products(operands, delta, trace)

    # -- closed form over a chunk of K steps -----------------------------------------------------

    def chunk_record(self, ops, trace, sig, count):
        """Inside the chunk the trace is not advanced: the step's ``(D, Df)`` are recorded."""
        return trace, (sig.D, sig.Df)

    def chunk_end(self, ops, e0, trace, rec, operands):
        """Per sample: ``e_K[a] = sum_s P[a][s] e0[s] + sum_j pullback(u_j)(sum_s Q_j[a][s] Df_j[s])``
        with ``Q_{K-1} = I``, ``Q_{j-1} = Q_j D_j`` and ``P = Q_{-1}``."""
        D, Df = rec
        S = len(Df)
        K = Df[0].shape[0]
        one, zero = jnp.ones_like(Df[0][0]), jnp.zeros_like(Df[0][0])
        eye = [[one if a == s else zero for s in range(S)] for a in range(S)]

        def rev(M, Dk):
            return [[sum_terms([M[a][r] * Dk[r][s] for r in range(S)]) for s in range(S)] for a in range(S)], M

        P, Q = jax.lax.scan(rev, eye, D, reverse=True)
        gsum = [sum_terms([Q[a][s] * Df[s] for s in range(S)]) for a in range(S)]
        ex = lambda v: ops.expand(operands, v)
        return [sum_terms([ex(P[a][s]) * e0[s] for s in range(S)]) + ops.param_vjp_over(operands, gsum[a], K)
                for a in range(S)]

    def chunk_history(self, ops, e0, rec, delta, operands, flat_ops, n, batched):
        """``c_0 . e0 + sum_j pullback(u_j)(sum_a c_{j+1,a} Df_{j,a})`` with the reverse recursion
        ``c_K = 0``, ``c_j = delta_j + c_{j+1} D_j`` (per position)."""
        D, Df = rec
        S = len(Df)

        def rev(c, inp):
            dj, Dj = inp
            cDj = [sum_terms([c[a] * Dj[a][s] for a in range(S)]) for s in range(S)]
            return [dj[s] + cDj[s] for s in range(S)], c

        c0 = [jnp.zeros_like(x[0]) for x in delta]
        c_first, c_shift = jax.lax.scan(rev, c0, (delta, D), reverse=True)
        start = ops.bsum_products(operands, c_first, e0)
        cot = sum_terms([c_shift[a] * Df[a] for a in range(S)])
        if batched:
            cot = cot.reshape((n,) + cot.shape[2:])
        return start + ops.param_vjp_over(flat_ops, cot, n)


@dataclasses.dataclass(frozen=True)
class IOTrace(TraceRule):
    """ES-D-RTRL's factorised trace ``e ~ ex_hat (x) ef``: an input trace ``ex`` (x's shape) and
    output traces ``ef[a]`` (y's shape, per state)::

        ex'    = alpha ex + (1 - alpha) x                (normalised average)
        ef'[a] = sum_s D[a][s] ef[s] + Df[a]             (the exact output-side recursion)
        grad  += pullback_{x := ex_hat}(sum_a delta[a] * ef[a])

    ``ex_hat = ex / (1 - alpha^n)`` corrects the zero start by the trace step ``n``. With a shared
    leak ``d`` and ``alpha = d`` the product is the exact trace; in steady state it has no
    magnitude bias.
    """

    alpha: float = 0.0
    kind: ClassVar[str] = "io"
    has_closed_form: ClassVar[bool] = True

    def init(self, ops):
        if ops.n_x > 1:
            raise NotSupportedError(f"{ops.rel.leaf_name}: factorised traces need a single-array input x, "
                                    f"{ops.rel.call.primitive.name} has {ops.n_x}")
        y = ops.out_aval()
        ex = [jnp.zeros(a.shape, a.dtype) for a in ops.x_avals()]
        return {"ex": ex, "ef": [jnp.zeros(y.shape, jnp.result_type(y.dtype, ops.trace_dtype))
                                 for _ in range(ops.num_states)]}

    def advance_output(self, trace, sig):
        D, Df, S = sig.D, sig.Df, len(sig.Df)
        return [sum_terms([D[a][s] * trace["ef"][s] for s in range(S)]) + Df[a] for a in range(S)]

    def advance_input(self, ex_old, x):
        return self.alpha * ex_old + (1.0 - self.alpha) * x.astype(ex_old.dtype)

    def advance(self, ops, trace, sig, count):
        ef = self.advance_output(trace, sig)
        if ops.n_x == 0:
            return {"ex": [], "ef": ef}
        return {"ex": [self.advance_input(trace["ex"][0], sig.operands[0])], "ef": ef}

    def snapshot(self, ops, trace, count):
        """``(ex_hat, ef)``: the factorised trace as the history term uses it."""
        if ops.n_x == 0:
            return None, trace["ef"]
        ex = trace["ex"][0]
        # bias correction by trace step n; alpha^n underflows to 0 and never overflows
        corr = 1.0 - jnp.power(jnp.asarray(self.alpha, ex.dtype), count.astype(ex.dtype))
        return jnp.where(count > 0, ex / jnp.where(count > 0, corr, 1.0), 0.0), trace["ef"]

    def readout(self, ops, snapshot, delta, operands, n=None):
        """``pullback_{x := ex_hat}(sum_a delta[a] * ef[a])`` summed over the batch (or over a
        leading axis of size ``n`` the operands carry)."""
        ex_hat, ef = snapshot
        c = _signal_terms(zip(delta, ef))
        over = [] if ops.n_x == 0 else [ex_hat]
        if n is None:
            return ops.param_vjp_sum(operands, c, x_override=over)
        return ops.param_vjp_over(operands, c, n, x_override=over)

    def history(self, ops, trace, delta, operands, count):
        return self.readout(ops, self.snapshot(ops, trace, count), delta, operands)

    # -- chunks: the factorised trace is small, so it is advanced per step; its history terms are
    #    batched over the chunk ----------------------------------------------------------------

    def chunk_record(self, ops, trace, sig, count):
        return self.advance(ops, trace, sig, count), self.snapshot(ops, trace, count)

    def chunk_end(self, ops, e0, trace, rec, operands):
        return trace

    def chunk_history(self, ops, e0, rec, delta, operands, flat_ops, n, batched):
        flat = (lambda x: x.reshape((n,) + x.shape[2:])) if batched else (lambda x: x)
        ex_hat, ef = rec
        c = _signal_terms(zip(delta, ef))
        over = [] if ops.n_x == 0 else [flat(ex_hat)]
        return ops.param_vjp_over(flat_ops, flat(c), n, x_override=over)


@dataclasses.dataclass(frozen=True)
class FeedforwardIOTrace(IOTrace):
    """OSTL's feed-forward trace: the current input (``alpha = 0``) and a per-state diagonal
    output recursion ``ef'[a] = D[a][a] ef[a] + Df[a]`` (no coupling between states)."""

    def advance_output(self, trace, sig):
        return [sig.D[a][a] * trace["ef"][a] + sig.Df[a] for a in range(len(sig.Df))]


@dataclasses.dataclass(frozen=True)
class LowPass(TraceRule):
    """e-prop's filtered trace: ``inner``'s trace ``e`` and a low-pass ``f' = kappa f + e'`` of its
    per-parameter part (the output-side part of a factorised trace); the gradient reads ``f``."""

    inner: TraceRule
    kappa: float

    @property
    def kind(self) -> str:  # noqa: D401  (the inner trace's form)
        return self.inner.kind

    def _filtered(self, e):
        return e if self.inner.kind == "param" else e["ef"]

    def init(self, ops):
        e = self.inner.init(ops)
        return {"e": e, "f": [jnp.zeros_like(a) for a in self._filtered(e)]}

    def advance(self, ops, trace, sig, count):
        e = self.inner.advance(ops, trace["e"], sig, count)
        return {"e": e, "f": [self.kappa * f + n for f, n in zip(trace["f"], self._filtered(e))]}

    def history(self, ops, trace, delta, operands, count):
        if self.inner.kind == "param":
            return ops.bsum(_signal_terms((ops.expand(operands, d), f) if d is not None else (None, f)
                                          for d, f in zip(delta, trace["f"])))
        ex_hat, _ = self.inner.snapshot(ops, trace["e"], count)
        return self.inner.readout(ops, (ex_hat, trace["f"]), delta, operands)
