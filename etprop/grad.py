"""Gradient utilities: a leaky running sum of per-step gradients."""

from __future__ import annotations

import math
from typing import Any

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp

from etprop.errors import ArgumentError

__all__ = ["GradExpon"]


def _decay_from(tau_or_decay, dt) -> float:
    if isinstance(tau_or_decay, u.Quantity):
        if dt is None:
            dt = brainstate.environ.get_dt()
        tau_u, dt_u = u.get_unit(tau_or_decay), u.get_unit(dt)
        if not tau_u.has_same_dim(u.second) or not dt_u.has_same_dim(u.second):
            raise ArgumentError(f"GradExpon: a time constant and dt must be times, got tau={tau_or_decay}, dt={dt}")
        ratio = float(u.maybe_decimal(dt / tau_or_decay))
        if not (ratio > 0 and math.isfinite(ratio)):
            raise ArgumentError(f"GradExpon: tau and dt must be positive and finite, got tau={tau_or_decay}, dt={dt}")
        return math.exp(-ratio)
    if isinstance(tau_or_decay, bool) or not isinstance(tau_or_decay, (int, float)):
        raise ArgumentError(f"GradExpon: tau_or_decay must be a float decay in [0, 1) or a brainunit time "
                            f"constant, got {type(tau_or_decay).__name__} {tau_or_decay!r}")
    decay = float(tau_or_decay)
    if not 0.0 <= decay < 1.0:
        raise ArgumentError(f"GradExpon: decay must lie in [0, 1), got {decay}; pass a time constant "
                            f"(e.g. 20 * u.ms) to derive it from dt")
    if dt is not None:
        raise ArgumentError("GradExpon: dt is only used with a time constant, not with a decay factor")
    return decay


def _zeros_like(x):
    # jnp.zeros_like drops a Quantity's unit; keep it so the sum has the gradients' unit.
    return u.math.zeros_like(x) if u.math.is_quantity(x) else jnp.zeros_like(x)


class GradExpon(brainstate.nn.Module):
    r"""Accumulate gradients with an exponential (leaky) running sum.

    .. math::
        g_t = \lambda g_{t-1} + c\, \nabla_t, \qquad c = 1 \text{ (sum) or } 1-\lambda \text{ (normalised)}

    Unnormalised (default), a constant gradient settles at ``grad / (1 - decay)``:
    the sum over roughly the last ``1 / (1 - decay)`` steps. Normalised, it settles
    at ``grad`` itself: a running *average*, whose scale does not depend on the decay.

    Args:
      grad_shape: pytree whose leaves give the gradients' shapes and dtypes (e.g.
        the parameters); the sum starts at zero.
      tau_or_decay: decay factor in ``[0, 1)``, or a time constant (`brainunit`
        quantity) giving ``decay = exp(-dt / tau)``.
      dt: the step for a time constant; defaults to ``brainstate.environ.get_dt()``.
      normalized: average instead of sum (see above).

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> acc = etprop.GradExpon({"w": jnp.zeros(2)}, 0.5)        # decay 0.5
        >>> for _ in range(20):
        ...     g = acc.update({"w": jnp.ones(2)})
        >>> [round(v, 3) for v in g["w"].tolist()]                   # settles at grad / (1 - decay)
        [2.0, 2.0]
        >>> avg = etprop.GradExpon({"w": jnp.zeros(2)}, 0.5, normalized=True)
        >>> for _ in range(20):
        ...     g = avg.update({"w": jnp.ones(2)})
        >>> [round(v, 3) for v in g["w"].tolist()]                   # a running average
        [1.0, 1.0]
    """

    def __init__(self, grad_shape: Any, tau_or_decay, *, dt=None, normalized: bool = False):
        super().__init__()
        self.decay = _decay_from(tau_or_decay, dt)
        self.normalized = bool(normalized)
        self._tree = jax.tree.structure(grad_shape, is_leaf=u.math.is_quantity)
        self.gradients = brainstate.LongTermState(
            jax.tree.map(_zeros_like, grad_shape, is_leaf=u.math.is_quantity))

    def update(self, grads: Any):
        """Fold ``grads`` (same tree as ``grad_shape``) into the sum; returns the new sum."""
        tree = jax.tree.structure(grads, is_leaf=u.math.is_quantity)
        if tree != self._tree:
            raise ArgumentError(f"GradExpon.update: gradient tree {tree} does not match the accumulator's {self._tree}")
        scale = 1.0 - self.decay if self.normalized else 1.0
        self.gradients.value = jax.tree.map(lambda g, d: g * self.decay + d * scale,
                                            self.gradients.value, grads, is_leaf=u.math.is_quantity)
        return self.gradients.value

    def reset(self):
        """Set the sum back to zero."""
        self.gradients.value = jax.tree.map(_zeros_like, self.gradients.value, is_leaf=u.math.is_quantity)
