"""Sign-constrained and weight-standardised dense layers (braintrace's ``SignedWLinear`` and
``ScaledWSLinear``), through `etprop.matmul` with the constraint as its ``weight_fn``: the
trace and the gradient are with respect to the raw weight."""

from __future__ import annotations

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn.initializers import (LECUN, Init, as_key, bias_init, default_float, init_array, new_param, param_holder,
                                    positive_int, split_keys)

__all__ = ["SignedWLinear", "ScaledWSLinear"]


class SignedWLinear(brainstate.nn.Module):
    r"""braintrace's sign-constrained layer: :math:`y = x\,(|W| \odot s)`, no bias.

    Args:
      in_size, out_size: ``I`` and ``O``.
      w_init: initialiser of the raw weight ``W`` (default LeCun normal; see the module doc).
      w_sign: ``s``, broadcastable to ``(I, O)`` (e.g. ``(I, 1)`` of +-1 for Dale's law);
        None is all +1.
      param_type: the class holding ``W`` (braintrace's keyword), default `brainstate.ParamState`;
        `brainstate.FakeState` / `LongTermState` hold it frozen (see `etprop.nn.linear`).

    The trace and the gradient are with respect to the raw ``W`` (the transform runs inside
    `etprop.matmul`), so an update never flips an effective weight's sign.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> layer = etprop.nn.SignedWLinear(3, 2, w_sign=jnp.array([[1.], [1.], [-1.]]))
        >>> y = layer(jnp.array([0., 0., 1.]))          # only the inhibitory input is active
        >>> y.shape, bool((y <= 0).all())
        ((2,), True)
    """

    def __init__(self, in_size: int, out_size: int, w_init: Init = None, w_sign=None, *, key=None,
                 name: str | None = None, param_type=None):
        super().__init__(name=name)
        self.in_features, self.out_features = positive_int(in_size, "in_size"), positive_int(out_size, "out_size")
        self.in_size, self.out_size = (self.in_features,), (self.out_features,)
        shape = (self.in_features, self.out_features)
        self.weight = new_param(param_holder(param_type, "SignedWLinear"),
                                init_array(LECUN if w_init is None else w_init, as_key(key), shape, "weight"),
                                "SignedWLinear", "weight")
        if w_sign is not None:
            try:
                np.broadcast_shapes(np.shape(w_sign), shape)
            except ValueError:
                raise ArgumentError(f"SignedWLinear: 'w_sign' has shape {np.shape(w_sign)}, which does not "
                                    f"broadcast to the weight's {shape}") from None
        self.w_sign = None if w_sign is None else jnp.asarray(w_sign)

    def _signed(self, w):
        return u.math.abs(w) if self.w_sign is None else u.math.abs(w) * self.w_sign

    def update(self, x):
        """``x`` ``(I,)`` or ``(B, I)`` -> ``(O,)`` / ``(B, O)``."""
        return ops.matmul(x, self.weight.value, weight_fn=self._signed)


class ScaledWSLinear(brainstate.nn.Module):
    r"""Linear layer with weight standardisation (Qiao et al. 2019), braintrace's ``ScaledWSLinear``.

    .. math::

        \hat W_{:, o} = \frac{W_{:, o} - \mathrm{mean}_i W_{i, o}}
                             {\sqrt{\max(I \cdot \mathrm{var}_i W_{i, o}, \epsilon)}} \odot M_{:, o},
        \qquad y = g \odot (x\, \hat W) + b

    The standardisation runs inside `etprop.matmul` as its ``weight_fn`` (each output column is
    standardised over its inputs, so every raw element still drives one output position and
    D-RTRL keeps its per-parameter trace of the raw ``W``); the gain ``g`` (``ws_gain``) and the
    bias go through `etprop.element_wise`, so they are traced too.

    Args:
      in_size, out_size: ``I`` and ``O``.
      w_init, b_init: initialisers (see the module doc); ``b_init=None`` gives a zero bias.
      w_mask: optional ``(I, O)`` (or broadcastable) connectivity mask, applied after the
        standardisation.
      ws_gain: whether to learn the gain ``g`` ``(O,)`` (starts at 1).
      eps: :math:`\epsilon`.
      param_type: the class holding ``W``, ``b`` and ``g`` (braintrace's keyword), default
        `brainstate.ParamState`; `brainstate.FakeState` / `LongTermState` hold them frozen.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> layer = etprop.nn.ScaledWSLinear(3, 4)           # standardised weight, learned gain and bias
        >>> layer(jnp.ones((2, 3))).shape
        (2, 4)
    """

    def __init__(self, in_size: int, out_size: int, w_init: Init = None, b_init: Init = None, w_mask=None,
                 ws_gain: bool = True, eps: float = 1e-4, *, key=None, name: str | None = None, param_type=None):
        super().__init__(name=name)
        self.in_features, self.out_features = positive_int(in_size, "in_size"), positive_int(out_size, "out_size")
        self.in_size, self.out_size = (self.in_features,), (self.out_features,)
        shape = (self.in_features, self.out_features)
        holder = param_holder(param_type, "ScaledWSLinear")
        k_w, k_b = split_keys(key, 2)
        self.weight = new_param(holder, init_array(LECUN if w_init is None else w_init, k_w, shape, "weight"),
                                "ScaledWSLinear", "weight")
        self.bias = new_param(holder, init_array(bias_init(b_init, self.weight.value), k_b, (self.out_features,),
                                                 "bias"), "ScaledWSLinear", "bias")
        self.gain = new_param(holder, jnp.ones((self.out_features,), default_float()), "ScaledWSLinear",
                              "gain") if ws_gain else None
        if not eps > 0:
            raise ArgumentError(f"ScaledWSLinear: eps must be > 0, got {eps!r}")
        self.eps = float(eps)
        self.w_mask = None if w_mask is None else jnp.asarray(w_mask)

    def _standardise(self, w):
        mean = u.math.mean(w, axis=0, keepdims=True)
        var = u.math.var(w, axis=0, keepdims=True)
        m = u.get_mantissa(var) * self.in_features
        scale = jax.lax.rsqrt(jnp.maximum(m, self.eps))
        w_hat = (w - mean) * scale
        return w_hat if self.w_mask is None else w_hat * self.w_mask

    def update(self, x):
        """``x`` ``(I,)`` or ``(B, I)`` -> ``(O,)`` / ``(B, O)``."""
        y = ops.matmul(x, self.weight.value, weight_fn=self._standardise)
        if self.gain is not None:
            y = y * ops.element_wise(self.gain.value)
        return y + ops.element_wise(self.bias.value)
