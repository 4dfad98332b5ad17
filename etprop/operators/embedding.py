"""`embedding`: a trainable lookup table indexed by integer tokens."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from etprop.errors import OperandError

from etprop.operators import _checks as C
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["embedding"]


def _forward(x, params, aux):
    # Out-of-range indices give NaN rows instead of JAX's silent clamping; negative indices
    # are out of range too (jnp.take would wrap them to rows from the end).
    y = jnp.take(params["weight"], x, axis=0, mode="fill", fill_value=jnp.nan)
    return jnp.where(jnp.expand_dims(x < 0, -1), jnp.nan, y)


def _validate(x, params, aux, config):
    w = params["weight"]
    C.check_rank("embedding", "indices", x, (0, 1), "() or (batch,)")
    C.check_int("embedding", "indices", x)
    C.check_rank("embedding", "weight", w, (2,), "(num_embeddings, features)")
    C.check_float("embedding", "weight", w)
    try:  # concrete indices can be range-checked now; traced ones give NaN rows
        idx = np.asarray(x)
    except Exception:
        return
    n = C.shape_of(w)[0]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise OperandError(f"embedding: 'indices' must lie in [0, {n}), got values in [{idx.min()}, {idx.max()}]")


EMBEDDING = register_primitive(ETPPrimitive(
    "embedding", _forward,
    param_names=("weight",),
    validate=_validate,
    out_unit=lambda xu, units: units["weight"],
    out_to_param={"weight": lambda v, p, a, c: v[..., None, :]},
    doc="y = weight[indices]",
))


def embedding(indices, weight, *, weight_fn=None):
    """ETP embedding lookup ``y = weight_fn(weight)[indices]``.

    Args:
      indices: integer ``()`` or ``(B,)``.
      weight: ``(V, F)`` table.

    Returns:
      ``(F,)`` or ``(B, F)``. Out-of-range indices raise when concrete, else give NaN rows.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> table = jnp.arange(12.).reshape(4, 3)       # (V, F): 4 tokens, 3 features
        >>> etprop.embedding(jnp.array([2, 0]), table).tolist()
        [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    """
    return EMBEDDING.bind(indices, {"weight": weight}, fns={"weight": weight_fn})
