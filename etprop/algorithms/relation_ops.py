"""What a trace rule may do with one relation: the operator's pullbacks, broadcasts and batch sums.

A *relation* (`etprop.graph.compiler.Relation`) is one ETP operator's parameter driving one
hidden group. `RelationOps` binds a relation to the compiled graph and the batch size, so a
trace rule (`etprop.algorithms.traces`) is written against this small interface only and never
sees the graph, jaxprs or the learner:

* ``param_vjp(operands, c)``: ``c . dy/dtheta`` for one sample (``y`` the operator's output);
* ``param_vjp_over(operands, c, n)``: the same summed over a leading axis of size ``n`` that the
  per-sample operands and ``c`` carry (the batch, or chunk x batch): for `matmul` one
  ``(I x n)(n x O)`` product;
* ``expand(operands, v)``: a per-position array of the group broadcast to the parameter's shape
  (``out_to_param``), for per-parameter traces;
* ``bsum`` / ``bsum_products``: sums over the batch written without reduces over the traces.
"""

from __future__ import annotations

import dataclasses

import brainunit as u
import jax
import jax.numpy as jnp

from etprop.algorithms.vjp import batch_sum, sum_terms, tree_sum0
from etprop.graph import executor
from etprop.graph.compiler import ETraceGraph, Relation

__all__ = ["RelationOps"]


@dataclasses.dataclass(frozen=True, eq=False)
class RelationOps:
    """One relation of a compiled graph, with the operations its trace rule needs.

    Attributes:
      graph: the compiled graph.
      rel: the relation (its parameter leaf, ETP equation and hidden group).
      batch_size: the batch size the learner was compiled for, or None (one sample).
    """

    graph: ETraceGraph
    rel: Relation
    batch_size: int | None
    #: the dtype traces are stored in between steps (e.g. bfloat16), or None: the compute dtype
    storage: object = None

    # -- static facts --------------------------------------------------------------------------

    @property
    def num_states(self) -> int:
        """``S``: the states per position of the relation's hidden group."""
        return self.graph.groups[self.rel.group].num_states

    @property
    def n_x(self) -> int:
        """How many operands of the operator are inputs ``x`` (0 for element-wise weights)."""
        return self.rel.n_x

    @property
    def trace_dtype(self):
        """A trace carries ``dh/dtheta``: the wider of the parameter's and the group's dtypes (a
        float32 weight from braintools may drive float64 hidden states)."""
        p = self.graph.param_leaf_avals[self.rel.leaf]
        return jnp.result_type(p.dtype, self.graph.groups[self.rel.group].dtype)

    def load(self, trace):
        """A stored trace in the compute dtype (`trace_dtype`): rules always compute in it."""
        if self.storage is None:
            return trace
        return jax.tree.map(lambda a: a.astype(jnp.result_type(a.dtype, self.trace_dtype)), trace)

    def store(self, trace):
        """A trace as stored between steps (`storage`; unchanged without one)."""
        if self.storage is None:
            return trace
        return jax.tree.map(lambda a: a.astype(self.storage), trace)

    @property
    def param_shape(self) -> tuple:
        return tuple(self.graph.param_leaf_avals[self.rel.leaf].shape)

    def out_aval(self):
        """Shape and dtype of the operator's output ``y`` (one sample)."""
        return executor.output_aval(self.graph, self.rel.eqn_index)

    def x_avals(self) -> list:
        """Shapes and dtypes of the operator's inputs ``x`` (one sample)."""
        return list(executor.operand_avals(self.graph, self.rel.eqn_index)[:self.rel.n_x])

    # -- pullbacks -----------------------------------------------------------------------------

    def _pos(self) -> int:
        return self.rel.call.operand_positions()[1][self.rel.param]

    def param_vjp(self, operands, cotangent, x_override=None):
        """Per-sample pullback of the operator w.r.t. the relation's parameter operand, with the
        inputs optionally replaced by ``x_override`` (a factorised trace's ``ex_hat``)."""
        g, idx, pos = self.graph, self.rel.eqn_index, self._pos()
        ops = list(operands)
        for j, xv in enumerate(x_override or []):
            ops[j] = xv.astype(jnp.result_type(ops[j]))

        def f(p):
            o = list(ops)
            o[pos] = p
            return executor.bind_etp(g, idx, o)

        _, pull = jax.vjp(f, ops[pos])
        return pull(cotangent.astype(executor.output_aval(g, idx).dtype))[0]

    def param_vjp_over(self, operands, cotangent, n: int, x_override=None):
        """Pullback w.r.t. the parameter, summed over a leading axis of size ``n`` carried by the
        per-sample operands, the cotangent and ``x_override`` (shared operands have none)."""
        g, idx, pos = self.graph, self.rel.eqn_index, self._pos()
        per = g.etp_operand_per_sample[idx]
        ops = list(operands)
        axes = [0 if b else None for b in per]
        for j, xv in enumerate(x_override or []):
            ops[j] = xv.astype(jnp.result_type(ops[j]))
            axes[j] = 0
        axes[pos] = None
        fast = self._param_grad_sum(ops, axes, cotangent)
        if fast is not None:
            return fast

        def f(pv):
            def one(*o):
                o = list(o)
                o[pos] = pv
                return executor.bind_etp(g, idx, o)
            return jax.vmap(one, in_axes=axes, axis_size=n)(*ops)

        _, pull = jax.vjp(f, ops[pos])
        return pull(cotangent.astype(executor.output_aval(g, idx).dtype))[0]

    def _param_grad_sum(self, ops, axes, cotangent):
        """The primitive's own batch-summed parameter gradient (`ETPPrimitive.param_grad_sum`),
        where it has one and applies: ``x`` carries the summed axis, parameters and other operands
        are shared, and the call has no parameter transforms or units (its rule sees mantissas
        after the transforms); else None."""
        call = self.rel.call
        rule = call.primitive.param_grad_sum
        if rule is None or any(fn is not None for _, fn in call.fns):
            return None
        x_pos, p_pos, a_pos = call.operand_positions()
        shared = list(p_pos.values()) + list(a_pos.values())
        quantity = lambda q: isinstance(q, u.Quantity)
        if (any(axes[j] != 0 for j in jax.tree.leaves(x_pos)) or any(axes[j] is not None for j in shared)
                or any(quantity(q) for q in jax.tree.leaves(call.unflatten(list(range(len(ops)))), is_leaf=quantity))):
            return None
        x, params, aux = call.unflatten_leaves(ops)
        dy = cotangent.astype(executor.output_aval(self.graph, self.rel.eqn_index).dtype)
        return rule(x, dy, params, aux, call.config_dict)[self.rel.param]

    def param_vjp_sum(self, operands, cotangent, x_override=None):
        """`param_vjp` summed over the batch (one sample without a batch)."""
        if self.batch_size is None:
            return self.param_vjp(operands, cotangent, x_override)
        return self.param_vjp_over(operands, cotangent, self.batch_size, x_override)

    # -- broadcasts and batch sums -------------------------------------------------------------

    def expand(self, operands, v):
        """Broadcast a per-position array of the group to the parameter's shape."""
        call = self.rel.call
        _, params, aux = call.unflatten(list(operands))
        return call.out_to_param(self.rel.param, v, {k: u.get_mantissa(p) for k, p in params.items()}, aux)

    def bsum(self, x):
        """Sum over the batch axis (a no-op without ``batch_size``)."""
        return x if self.batch_size is None else tree_sum0(x)

    def bsum_products(self, operands, deltas, traces):
        """``bsum(sum_a expand(delta_a) * trace_a)`` over the states with a signal (``delta_a`` not
        None): the learning signal (``(B, *pos)``) times the per-parameter trace (``(B, *param)``).
        The products are formed per sample inside the sum, so XLA fuses everything into one pass
        over the traces instead of writing a ``(B, *param)`` product and reading it back."""
        pairs = [(self.expand(operands, d), e) for d, e in zip(deltas, traces) if d is not None]
        if self.batch_size is None:
            return sum_terms([f * e for f, e in pairs])
        return batch_sum(lambda b: sum_terms([f[b] * e[b] for f, e in pairs]), self.batch_size)
