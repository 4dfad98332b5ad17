"""Convolution layers `Conv1d`, `Conv2d`, `Conv3d` through `etprop.conv` (channels last). The
kernel's elements drive several output positions, so every algorithm gives it the factorised
(ES-D-RTRL) trace."""

from __future__ import annotations

import brainstate
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn.compat import accepts_keywords
from etprop.nn.initializers import (LECUN, Init, bias_init, init_array, maybe_param, new_param, param_holder,
                                    positive_int, split_keys, value_of)

__all__ = ["Conv1d", "Conv2d", "Conv3d"]


def _ntuple(v, n: int, name: str) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v),) * n
    v = tuple(v)
    if len(v) != n or not all(isinstance(i, (int, np.integer)) and i >= 1 for i in v):
        raise ArgumentError(f"'{name}' must be a positive int or {n} positive ints, got {v!r}")
    return tuple(int(i) for i in v)


@accepts_keywords({"in_size": "in_channels"})
class _ConvNd(brainstate.nn.Module):
    num_spatial = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="SAME",
                 dilation=1, groups: int = 1, bias: bool = True, *, w_init: Init = None, b_init: Init = None,
                 key=None, name: str | None = None, channel_first: bool = False, param_type=None):
        super().__init__(name=name)
        n = self.num_spatial
        if channel_first:
            raise ArgumentError(f"{type(self).__name__}: channel_first=True is not supported; etprop's convolutions "
                                f"are channels last, (..., *spatial, channels)")
        if isinstance(in_channels, (tuple, list)):  # braintrace's in_size: the input shape, channels last
            if len(in_channels) not in (1, n + 1):
                raise ArgumentError(f"{type(self).__name__}: in_size {tuple(in_channels)} must be (channels,) or "
                                    f"({', '.join(['length'] * n)}, channels)")
            in_channels = in_channels[-1]
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ArgumentError(f"{type(self).__name__}: in_channels={in_channels} and out_channels="
                                f"{out_channels} must both be divisible by groups={groups}")
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.dilation = _ntuple(dilation, n, "dilation")
        self.padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
        shape = self.kernel_size + (self.in_channels // self.groups, self.out_channels)
        layer = type(self).__name__
        holder = param_holder(param_type, layer)
        k_w, k_b = split_keys(key, 2)
        self.weight = new_param(holder, init_array(LECUN if w_init is None else w_init, k_w, shape, "weight"), layer,
                                "weight")
        self.bias = maybe_param(bias, bias_init(b_init, self.weight.value), k_b, (self.out_channels,), "bias",
                                holder, layer)

    def update(self, x):
        """``x``: ``(*spatial, C_in)`` or ``(B, *spatial, C_in)`` (channels last)."""
        return ops.conv(x, self.weight.value, value_of(self.bias), strides=self.stride, padding=self.padding,
                           rhs_dilation=self.dilation, feature_group_count=self.groups)


class Conv1d(_ConvNd):
    r"""1-D convolution, channels last, through `etprop.conv` (`Conv2d`, `Conv3d`: the same in 2-D, 3-D).

    .. math::

        y[p, o] = \sum_{k, c} x[s\,p + d\,k, c]\; W[k, c, o] + b[o]

    (``s`` stride, ``d`` dilation, ``k`` over the window; ``groups`` splits the channels
    into independent blocks.)

    Args:
      in_channels, out_channels: ``C_in`` and ``C_out`` (both divisible by ``groups``).
      kernel_size: int or 1 ints.
      stride, dilation: int or 1 ints.
      padding: ``'SAME'``, ``'VALID'``, ``'SAME_LOWER'`` or 1 ``(low, high)`` pairs.
      groups: feature groups.
      bias: learn a bias ``(C_out,)``.
      w_init: initial kernel ``(*kernel_size, C_in / groups, C_out)``, default LeCun normal
        (std ``1/sqrt(fan_in)``, fan_in = window size x ``C_in / groups``).
      b_init: initial bias, default zeros.
      key: seed or PRNG key.
      param_type: the class holding ``weight`` and ``bias`` (braintrace's keyword), default
        `brainstate.ParamState`; `brainstate.FakeState` / `LongTermState` hold them frozen
        (see `etprop.nn.linear`).

    Shapes: ``x`` is ``(W, C_in)`` or with a leading batch axis; ``y`` likewise with ``C_out``.

    States: none. Parameters: ``weight`` (the kernel), ``bias``.

    Online learning: a kernel element (and a bias element) drives every output position of
    its channel, so neither has a per-parameter trace: when the output drives a hidden
    state of the same shape, both are traced with the factorised (ES-D-RTRL) trace under
    every algorithm, D-RTRL included.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> conv = etprop.nn.Conv1d(3, 4, kernel_size=5)           # channels last: (B, L, C)
        >>> conv(jnp.ones((2, 16, 3))).shape
        (2, 16, 4)
    """
    num_spatial = 1


class Conv2d(_ConvNd):
    r"""2-D convolution, channels last, through `etprop.conv`: `Conv1d` over two spatial axes.

    The formula, the arguments, the parameters and the online learning are those of `Conv1d`,
    with ``kernel_size``, ``stride`` and ``dilation`` an int or 2 ints and ``padding``
    ``'SAME'``, ``'VALID'``, ``'SAME_LOWER'`` or 2 ``(low, high)`` pairs.

    Shapes: ``x`` is ``(H, W, C_in)`` or with a leading batch axis; ``y`` likewise with ``C_out``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> conv = etprop.nn.Conv2d(3, 4, kernel_size=3, stride=2, padding="VALID")   # (B, H, W, C)
        >>> conv(jnp.ones((2, 9, 9, 3))).shape
        (2, 4, 4, 4)
    """
    num_spatial = 2


class Conv3d(_ConvNd):
    r"""3-D convolution, channels last, through `etprop.conv`: `Conv1d` over three spatial axes
    (``x`` is ``(D, H, W, C_in)``, or with a leading batch axis), its sizes given as for `Conv2d`
    but with 3 ints and 3 ``(low, high)`` padding pairs.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> conv = etprop.nn.Conv3d(1, 2, kernel_size=3)             # (B, D, H, W, C)
        >>> y = conv(jnp.ones((2, 4, 4, 4, 1)))                     # 'SAME' padding keeps D, H, W
        >>> y.shape, conv.weight.value.shape                       # kernel (3, 3, 3, C_in, C_out)
        ((2, 4, 4, 4, 2), (3, 3, 3, 1, 2))
    """
    num_spatial = 3
