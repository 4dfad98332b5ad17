"""e-prop (Bellec et al. 2020): eligibility traces x a learning signal from the readout error.

Per relation (one weight ``W``, one hidden group of ``S`` states, per sample) e-prop is

    grad W = sum_t  L^t . ebar^t                      (summed over positions and states)

with three ingredients, each a choice here:

* the eligibility trace ``e^t[a] = sum_s D^t[a][s] e^{t-1}[s] + dh_a^t/dW|_now``: the
  per-position (``S x S`` block) recursion with operator inputs cut -- exactly D-RTRL's
  per-parameter trace (`etprop.D_RTRL`), so e-prop inherits its trace code and memory
  ``O(S |W|)`` per sample;
* the learning signal ``L^t``: the error ``err^t = dL^t/d out^t`` sent back to the hidden
  states through the readout. ``feedback='symmetric'`` uses the readout's own transposed
  Jacobian (the exact one-step signal D-RTRL uses); ``feedback='random'`` (random e-prop /
  feedback alignment) uses a FIXED random matrix ``B`` of shape ``(n_out, n_hidden)`` in
  place of the transposed readout weight ``W_out^T``;
* an optional low-pass filter of the trace, ``ebar^t = kappa ebar^{t-1} + e^t`` (``kappa``
  in ``[0, 1)``; Bellec et al. use the readout's leak). ``kappa = 0`` is no filter.

How the random learning signal is injected (the design choice). The learner never forms
``dL/dh`` by hand: the backward pass linearises the step (exact reverse mode through the
step or window) and reads ``delta = dL^t/dh^{t-1}`` and the direct gradients from one
pullback. Random feedback runs that SAME pullback with the readout weight's value replaced
by ``B^T`` (`backward_params`); the forward pass still uses the real weight. For a readout
``out = z(h) @ W_out (+ b)`` the cotangent reaching ``z`` is then ``err @ B`` instead of
``err @ W_out^T``, and everything downstream is unchanged: the per-state sensitivity
``dz/dh_a`` (e-prop's pseudo-derivative ``psi``, e.g. ``tanh'(v)`` and the surrogate of a
spike read out in the same step), multi-state groups, several readout paths, windows of
``K > 1`` steps and the closed-form chunks all stay exact for the substituted matrix. The
alternative -- overwrite ``dL/dh`` of one state with ``err @ B`` -- would have to guess which
state the readout reads and drop ``psi``. The readout weight's own gradient from this
pullback is ``z^T err``, which does not involve the weight's value, so it stays the exact
instantaneous gradient. For that to hold the output must depend on the readout weight
linearly (matmul, bias, sums, reshapes); a nonlinearity after it (``tanh(z @ W)``) would be
linearised at ``z @ B^T``, so it is refused at compile time (apply it in the loss).

Readouts with memory. Bellec et al.'s output neurons are leaky integrators,
``r^t = d r^{t-1} + (1 - d) z^t W_out`` (`etprop.nn.LeakyRateReadout`): ``W_out`` then drives
a hidden state, ``r``, and is traced. The same substitution applies -- the cotangent reaching
``z^t`` is ``(1 - d) err^t @ B`` instead of ``(1 - d) err^t @ W_out^T``, and neither ``r``'s
own recursion nor ``W_out``'s trace (``z^T``-driven, exact for a readout) involves
``W_out``'s value -- so such a weight is taken as the readout when it is the only 2-D
parameter the output depends on linearly. With ``B = W_out^T`` the gradient is exactly
D-RTRL's.

Filter and forward pass. The filtered trace is part of the trace state and advances in
`advance_relation`, i.e. with the forward step: `etrace_evolve` (a warm-up without
gradients) advances it like any trace. The per-step gradient is
``direct_t + delta^t . ebar^{t-1}``: the filter acts on the trace that meets the learning
signal, the current step's own term is exact (with ``kappa = 0`` this is D-RTRL's formula).
Factorised (``io``) relations -- weights without a per-parameter trace, like conv
kernels -- filter their output-side trace ``ef`` (the filter of a product is not a
product: an approximation, stated in the report).
"""

from __future__ import annotations

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.etrace import TraceLearner
from etprop.algorithms.traces import LowPass, TraceRule
from etprop.errors import ArgumentError
from etprop.graph import executor
from etprop.graph.compiler import Relation

__all__ = ["EProp"]

def _check_kappa(kappa) -> float:
    if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not 0.0 <= float(kappa) < 1.0:
        raise ArgumentError(f"EProp: kappa (trace low-pass factor) must be a float in [0, 1), got {kappa!r}; "
                            f"use 0.0 for no filter")
    return float(kappa)


class EProp(TraceLearner):
    """e-prop: D-RTRL's eligibility traces, a symmetric or fixed random learning signal, and
    an optional low-pass trace filter (see the module docstring for the maths).

    Args:
      model: the brainstate model.
      feedback: ``'symmetric'`` (the readout's transposed Jacobian: with ``kappa=0`` this is
        exactly `D_RTRL`), ``'random'`` (a fixed Gaussian ``B`` of shape ``(n_out, n_hidden)``,
        i.e. the readout weight's shape reversed, drawn once at compile time from ``seed``
        with the readout weight's RMS, or ``1/sqrt(n_hidden)`` if that is 0), or an array
        ``B`` of that shape.
      kappa: low-pass factor of the trace in ``[0, 1)``; the filtered trace advances with
        the forward step. ``kappa > 0`` computes per step (no closed-form chunks).
      seed: seed of the random feedback matrix.
      readout: with random feedback, the name of the readout weight (as in
        ``learner.params()``, e.g. ``'w_out'``); found automatically when exactly one 2-D
        untraced parameter reaches the output and no hidden state, or else when exactly one
        2-D parameter enters the output linearly (a leaky readout's traced weight, or the
        last matrix when several output-only ones are chained).

    Memory per sample ``O(S |W|)`` per traced weight (twice that with ``kappa > 0``) plus
    ``|B|`` once.
    """

    name = "e-prop"

    def __init__(self, model, feedback="symmetric", kappa: float = 0.0, seed: int = 0, readout: str | None = None):
        super().__init__(model)
        if isinstance(feedback, str):
            if feedback not in ("symmetric", "random"):
                raise ArgumentError(f"EProp: feedback must be 'symmetric', 'random' or an array B of shape "
                                    f"(n_out, n_hidden), got {feedback!r}")
            self._given_b = None
        else:
            self._given_b = jnp.asarray(feedback)
            feedback = "given"
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ArgumentError(f"EProp: seed must be an int, got {seed!r}")
        if readout is not None and not isinstance(readout, str):
            raise ArgumentError(f"EProp: readout must be a parameter name (str) such as 'w_out', got {readout!r}")
        self.feedback = feedback
        self.kappa = _check_kappa(kappa)
        self.seed = int(seed)
        self.readout = readout
        self.readout_leaf = None
        self.feedback_matrix = None
        if self.kappa > 0:
            self.default_chunk = 0  # the closed form has no filter state: per-step mode

    # -- compile: find the readout, draw B -----------------------------------------------------

    def compile_graph(self, *example_inputs, batch_size=None):
        super().compile_graph(*example_inputs, batch_size=batch_size)
        if self.feedback != "symmetric":
            self.readout_leaf = self._find_readout()
            w = self.graph.param_leaf_avals[self.readout_leaf]
            shape = tuple(w.shape)[::-1]
            if self._given_b is not None:
                b = self._given_b
                if tuple(b.shape) != shape:
                    raise ArgumentError(f"EProp: the feedback matrix must have shape {shape} (the readout "
                                        f"'{self.graph.param_leaf_names[self.readout_leaf]}' {tuple(w.shape)} "
                                        f"reversed), got {tuple(b.shape)}")
            else:
                b = self._draw_feedback(shape, w.dtype)
            # a non-trainable state: fixed across calls, visible in learner.states()
            self.feedback_matrix = brainstate.State(jnp.asarray(b, w.dtype))
        return self

    def _draw_feedback(self, shape, dtype):
        value = u.get_mantissa(jax.tree.leaves(self.graph.mf.values()[0])[self.readout_leaf])
        rms = float(jnp.sqrt(jnp.mean(jnp.square(jnp.asarray(value, jnp.float32)))))
        scale = rms if rms > 0 else 1.0 / np.sqrt(shape[-1])
        return jax.random.normal(jax.random.key(self.seed), shape, dtype) * scale

    def _find_readout(self) -> int:
        g = self.graph
        names = g.param_leaf_names
        reach_out, _, reach_state = executor.params_reaching(g)
        traced = set(g.traced_leaves)
        cands = [i for i in sorted(reach_out) if i not in reach_state and i not in traced]
        if self.readout is not None:
            by_name = [i for i, n in enumerate(names) if n == self.readout or n.split("[")[0] == self.readout]
            if len(by_name) != 1:
                raise ArgumentError(f"EProp: readout={self.readout!r} names {len(by_name)} parameter leaves; "
                                    f"choose one of {list(names)}")
            leaf = by_name[0]
            if leaf not in reach_out:
                raise ArgumentError(f"EProp: readout {names[leaf]!r} cannot carry random feedback: the output does "
                                    f"not depend on it. Readout candidates: {[names[i] for i in cands]}")
        else:
            leaf = self._guess_readout(cands, reach_out)
        bad = executor.param_enters_nonlinearly(g, leaf)
        if bad:
            raise ArgumentError(f"EProp(feedback='random'): the output depends on readout {names[leaf]!r} "
                                f"non-linearly (through {bad}); random feedback replaces only the weight's "
                                f"transpose, so put that nonlinearity into the loss or use feedback='symmetric'")
        return leaf

    def _guess_readout(self, cands: list, reach_out) -> int:
        """The readout leaf when none is named: the one 2-D untraced parameter that reaches only
        the output; failing that, the one 2-D parameter the output depends on linearly (a leaky
        readout's traced weight, or the last of several output-only matrices)."""
        g = self.graph
        two_d = lambda leaves: [i for i in leaves if len(g.param_leaf_avals[i].shape) >= 2]
        plain = two_d(cands)
        if len(plain) == 1:
            return plain[0]
        linear = [i for i in two_d(sorted(reach_out)) if not executor.param_enters_nonlinearly(g, i)]
        if len(linear) == 1:
            return linear[0]
        names = g.param_leaf_names
        raise ArgumentError(f"EProp(feedback='random'): cannot tell the readout weight; untraced parameters that "
                            f"reach only the output: {[names[i] for i in cands]}, 2-D parameters the output "
                            f"depends on linearly: {[names[i] for i in linear]}. Pass readout='name' (one of "
                            f"them) or use feedback='symmetric'")

    def backward_params(self, p_leaves: list) -> list:
        if self.feedback_matrix is None:
            return p_leaves
        p = list(p_leaves)
        p[self.readout_leaf] = jnp.transpose(self.feedback_matrix.value).astype(p[self.readout_leaf].dtype)
        return p

    # -- traces: D-RTRL's, plus the filter ------------------------------------------------------

    def trace_rule(self, rel: Relation) -> TraceRule:
        rule = self.param_or_io(rel)
        return rule if self.kappa == 0 else LowPass(rule, self.kappa)

    def filter_state(self):
        """The filtered traces ``ebar`` per relation (batch leading), or None without a filter."""
        self._require_graph()
        if self.kappa == 0:
            return None
        return [t["f"] for t in self.etrace.value["rel"]]

    def describe_kind(self, rel, kind):
        sig = {"symmetric": "symmetric feedback", "random": f"random feedback (seed {self.seed})",
               "given": "given feedback matrix"}[self.feedback]
        filt = f", trace low-pass kappa={self.kappa:g}" if self.kappa else ""
        if kind == "param":
            return f"e-prop: per-parameter eligibility trace, {sig}{filt}"
        extra = " (filter on the output-side trace: approximate)" if self.kappa else ""
        return f"e-prop: factorised trace (no per-parameter trace exists), {sig}{filt}{extra}"

    def report(self) -> str:
        rep = super().report()
        if self.feedback_matrix is not None:
            name = self.graph.param_leaf_names[self.readout_leaf]
            rep += (f"\nlearning signal: error @ B, B {tuple(self.feedback_matrix.value.shape)} fixed, in place of "
                    f"{name}^T; {name} itself gets its exact instantaneous gradient")
        return rep
