"""The lookup table `Embedding` through `etprop.embedding`, with torch's options (``max_norm``,
``padding_idx``, ...): one of the connection layers of `etprop.nn.linear` (initialisers and
parameter holders as described there)."""

from __future__ import annotations

import math

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError, NotSupportedError
from etprop.nn.compat import accepts_keywords
from etprop.nn.initializers import Init, as_key, init_array, new_param, param_holder, positive_int

__all__ = ["Embedding"]


_RENORM_EPS = 1e-7  # torch's: a row of norm n > max_norm is scaled by max_norm / (n + eps)


@accepts_keywords({"embedding_size": "features", "embedding_init": "w_init"})
class Embedding(brainstate.nn.Module):
    r"""Lookup table :math:`y = W[\text{index}]` through `etprop.embedding`, with torch's options.

    With ``max_norm`` (:math:`m`) a looked-up row whose ``norm_type``-norm (:math:`p`)
    exceeds :math:`m` is scaled down to it:

    .. math::

        y = W_v \cdot s_v, \qquad
        s_v = \begin{cases} m / (\lVert W_v \rVert_p + 10^{-7}) & \lVert W_v \rVert_p > m \\
                            1 & \text{otherwise} \end{cases}

    and the scale is not differentiated (as torch, which renormalises the table in place
    without gradient): :math:`\partial y / \partial W_v = I`. The stored table is not
    rewritten (a parameter stays fixed during a step in etprop), so only the looked-up
    values are bounded; the padding row is never rescaled.

    Args:
      num_embeddings: table size ``V``.
      features: ``F`` (braintrace's ``embedding_size``).
      w_init: initial table ``(V, F)`` (braintrace's ``embedding_init``), default standard
        normal.
      padding_idx: a row ``p`` in ``[-V, V)`` (negative counts from the end, as in torch):
        it starts at zero and its gradient is zero (a lookup of ``p`` contributes none), so
        it stays a fixed pad under training.
      max_norm: :math:`m > 0`, see above; None: no renormalisation.
      norm_type: :math:`p > 0` (``inf`` for the max norm), default 2.
      scale_grad_by_freq: accepted as ``False`` only (the frequency is over a batch, which
        etprop's per-sample trace does not see).
      freeze: hold the table frozen: in a `brainstate.LongTermState` (or a non-trainable
        ``param_type``), so it is a constant of the step and gets no gradient.
      key: seed or PRNG key.
      param_type: the class holding the table (see the module doc); with ``freeze`` it must
        not be a `ParamState`.

    Shapes: integer indices ``()`` or ``(B,)`` -> ``(F,)`` or ``(B, F)``. Concrete
    out-of-range indices raise `etprop.OperandError`; traced ones give NaN rows.

    States: none. Parameters: ``weight`` ``(V, F)`` (none when frozen).

    Online learning: ``W[v, f]`` drives feature ``f`` only, so D-RTRL keeps a
    per-parameter trace when the embedding drives a hidden state of shape ``(F,)``; the
    renormalisation and the padding row's zero gradient act on the looked-up rows, after
    the operator, and leave that structure intact.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> emb = etprop.nn.Embedding(10, 4)                     # 10 tokens, 4 features
        >>> emb(jnp.array([1, 7, 7])).shape                       # (B,) integer indices -> (B, F)
        (3, 4)
    """

    def __init__(self, num_embeddings: int, features: int, w_init: Init = None, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 freeze: bool = False, name: str | None = None, param_type=None, *, key=None):
        super().__init__(name=name)
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings")
        self.features = positive_int(features, "features")
        self.out_size = (self.features,)
        self.padding_idx = self._check_padding_idx(padding_idx)
        self.max_norm, self.norm_type = self._check_max_norm(max_norm, norm_type)
        if scale_grad_by_freq:
            raise NotSupportedError("Embedding: scale_grad_by_freq=True is not supported: the word frequencies are "
                                    "counted over a batch, which etprop's per-sample traces do not see; leave it "
                                    "False")
        self.scale_grad_by_freq = False
        if not isinstance(freeze, (bool, np.bool_)):
            raise ArgumentError(f"Embedding: 'freeze' must be True or False, got {freeze!r}")
        self.freeze = bool(freeze)
        holder = param_holder(brainstate.LongTermState if self.freeze and param_type is None else param_type,
                              "Embedding")
        init = jax.nn.initializers.normal(1.0) if w_init is None else w_init
        table = init_array(init, as_key(key), (self.num_embeddings, self.features), "weight")
        if self.padding_idx is not None:  # the pad starts at zero (torch, brainstate)
            mantissa, unit = u.split_mantissa_unit(table)
            mantissa = mantissa.at[self.padding_idx].set(0)
            table = mantissa if isinstance(table, jax.Array) else u.Quantity(mantissa, unit=unit)
        self.weight = new_param(holder, table, "Embedding", "weight")
        if self.freeze and isinstance(self.weight, brainstate.ParamState):
            raise ArgumentError(f"Embedding: freeze=True with param_type={type(self.weight).__name__} (a trainable "
                                f"ParamState): leave param_type out (the frozen table is then a "
                                f"brainstate.LongTermState) or give a non-trainable one (brainstate.FakeState)")

    def _check_padding_idx(self, padding_idx):
        if padding_idx is None:
            return None
        v = self.num_embeddings
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
                or not -v <= padding_idx < v:
            raise ArgumentError(f"Embedding: 'padding_idx' must be an int in [-{v}, {v}) (a row of the "
                                f"{v}-row table), got {padding_idx!r}")
        return int(padding_idx) % v

    @staticmethod
    def _check_max_norm(max_norm, norm_type):
        real = lambda a: isinstance(a, (int, float, np.integer, np.floating)) and not isinstance(a, bool)
        if max_norm is not None and not (real(max_norm) and max_norm > 0 and math.isfinite(max_norm)):
            raise ArgumentError(f"Embedding: 'max_norm' must be a positive number (or None), got {max_norm!r}")
        if not (real(norm_type) and norm_type > 0):
            raise ArgumentError(f"Embedding: 'norm_type' must be a positive number (inf for the max norm), got "
                                f"{norm_type!r}")
        return (None if max_norm is None else float(max_norm)), float(norm_type)

    def update(self, indices):
        """``indices`` ``()`` or ``(B,)`` integers -> rows ``(F,)`` or ``(B, F)``."""
        y = ops.embedding(indices, self.weight.value)
        if self.max_norm is None and self.padding_idx is None:
            return y
        rows, unit = u.split_mantissa_unit(y)
        pad = None if self.padding_idx is None else (jnp.asarray(indices) == self.padding_idx)[..., None]
        if self.max_norm is not None:
            norm = jnp.linalg.norm(rows, ord=self.norm_type, axis=-1, keepdims=True)
            scale = jnp.where(norm > self.max_norm, self.max_norm / (norm + _RENORM_EPS), 1.0)
            if pad is not None:
                scale = jnp.where(pad, 1.0, scale)
            rows = rows + jax.lax.stop_gradient(rows * scale.astype(rows.dtype) - rows)  # value rows * s, slope 1
        if pad is not None:
            rows = jnp.where(pad, jax.lax.stop_gradient(rows), rows)
        return rows if unit.is_unitless and unit.factor == 1.0 else u.Quantity(rows, unit=unit)
