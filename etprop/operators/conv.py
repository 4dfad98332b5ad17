"""`conv`: ETP N-D convolution (1-D, 2-D, 3-D), channels-last by default.

Shapes for ``N`` spatial dims with the default layout: ``x`` is ``(*spatial, C_in)``
(unbatched) or ``(B, *spatial, C_in)``; ``kernel`` is ``(*window, C_in / groups, C_out)``;
``bias`` is ``(C_out,)``. A kernel element drives every output position, so conv
parameters use factorised (ES-D-RTRL) traces only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from etprop.errors import OperandError
from etprop.operators import _checks as C
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["conv"]

_DEFAULT_DN = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _forward(x, params, aux, *, strides, padding, lhs_dilation, rhs_dilation,
             feature_group_count, batch_group_count, dimension_numbers, batched):
    lhs_spec, _, out_spec = dimension_numbers
    if not batched:
        x = jnp.expand_dims(x, lhs_spec.index("N"))
    y = lax.conv_general_dilated(
        x, params["kernel"], window_strides=strides, padding=padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count)
    if "bias" in params:
        shape = [1] * y.ndim
        shape[out_spec.index("C")] = -1
        y = y + jnp.reshape(params["bias"], shape)
    if not batched:
        y = jnp.squeeze(y, out_spec.index("N"))
    return y


def _validate(x, params, aux, config):
    k = params["kernel"]
    lhs_spec, rhs_spec, _ = config["dimension_numbers"]
    n = len(lhs_spec) - 2
    C.check_rank("conv", "kernel", k, (n + 2,), f"rank {n + 2} for a {n}-D convolution ({rhs_spec})")
    want = n + 2 if config["batched"] else n + 1
    C.check_rank("conv", "x", x, (want,), f"rank {n + 1} (unbatched) or {n + 2} (batched), layout {lhs_spec}")
    C.check_numeric("conv", "x", x)
    C.check_params_float("conv", params)
    x_shape = C.shape_of(x) if config["batched"] else (None,) + C.shape_of(x)
    spec = lhs_spec if config["batched"] else "N" + lhs_spec.replace("N", "")
    cin = x_shape[spec.index("C")]
    k_in = C.shape_of(k)[rhs_spec.index("I")]
    g = config["feature_group_count"]
    if cin != k_in * g:
        raise OperandError(f"conv: 'x' has {cin} input channels but 'kernel' {C.shape_of(k)} expects "
                           f"{k_in} x feature_group_count={g} = {k_in * g}")
    C.check_bias("conv", params.get("bias"), (C.shape_of(k)[rhs_spec.index("O")],))


CONV = register_primitive(ETPPrimitive("conv", _forward, param_names=("kernel", "bias"), validate=_validate,
                                       doc="y = conv(x, kernel) (+ bias)"))


def _tuple(v, n: int, name: str) -> tuple[int, ...] | None:
    if v is None:
        return None
    given = v
    try:
        v = (int(v),) * n if isinstance(v, (int, np.integer)) else tuple(int(i) for i in v)
    except (TypeError, ValueError):
        raise OperandError(f"conv: '{name}' must be a positive int or a tuple of {n}, got {given!r}") from None
    if len(v) != n:
        raise OperandError(f"conv: '{name}' must have {n} entries for a {n}-D convolution, got {v}")
    if any(i < 1 for i in v):
        raise OperandError(f"conv: '{name}' must be positive, got {given!r}; expected a positive int or a "
                           f"tuple of {n}")
    return v


def _group_count(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise OperandError(f"conv: '{name}' must be a positive int, got {v!r}")
    return int(v)


def conv(x, kernel, bias=None, *, strides: int | Sequence[int] = 1, padding: str | Sequence = "SAME",
         lhs_dilation=None, rhs_dilation=None, feature_group_count: int = 1, batch_group_count: int = 1,
         dimension_numbers=None, kernel_fn=None, bias_fn=None):
    """ETP convolution ``y = conv(x, kernel_fn(kernel)) + bias_fn(bias)``.

    The number of spatial dims is ``kernel.ndim - 2``; a batched input has one more
    axis than an unbatched one. Options are those of `jax.lax.conv_general_dilated`;
    ``dimension_numbers`` defaults to channels-last (``NWC/WIO``, ``NHWC/HWIO``,
    ``NDHWC/DHWIO``) and must be given as three layout strings.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> x = jnp.ones((2, 8, 8, 3))                        # (B, H, W, C), channels last
        >>> kernel, bias = jnp.ones((3, 3, 3, 4)), jnp.zeros(4)   # (KH, KW, C, O)
        >>> etprop.conv(x, kernel, bias, padding="SAME").shape
        (2, 8, 8, 4)
        >>> etprop.conv(x[0], kernel, strides=2, padding="VALID").shape   # unbatched
        (3, 3, 4)
    """
    n = len(C.shape_of(kernel)) - 2
    if n not in _DEFAULT_DN:
        raise OperandError(f"conv: 'kernel' has shape {C.shape_of(kernel)}; expected rank 3, 4 or 5 "
                           f"(1-D, 2-D or 3-D convolution: window..., in, out)")
    dn = _DEFAULT_DN[n] if dimension_numbers is None else tuple(dimension_numbers)
    if len(dn) != 3 or not all(isinstance(s, str) and len(s) == n + 2 for s in dn):
        raise OperandError(f"conv: 'dimension_numbers' must be three layout strings of length {n + 2}, got {dn}")
    try:
        lax.conv_general_permutations(dn)
    except (TypeError, ValueError) as e:
        raise OperandError(f"conv: invalid 'dimension_numbers' {dn}: {e}") from None
    fgc = _group_count(feature_group_count, "feature_group_count")
    bgc = _group_count(batch_group_count, "batch_group_count")
    n_out = C.shape_of(kernel)[dn[1].index("O")]
    for name, g in (("feature_group_count", fgc), ("batch_group_count", bgc)):
        if n_out % g:
            raise OperandError(f"conv: 'kernel' {C.shape_of(kernel)} has {n_out} output channels, which is not a "
                               f"multiple of {name}={g}; expected a kernel whose output channels divide by it")
    x_rank = len(C.shape_of(x))
    if x_rank not in (n + 1, n + 2):
        raise OperandError(f"conv: 'x' has shape {C.shape_of(x)}; a {n}-D convolution expects rank {n + 1} "
                           f"(unbatched) or {n + 2} (batched), layout {dn[0]}")
    if isinstance(padding, str):
        pad = padding.upper()
        if pad not in ("SAME", "VALID", "SAME_LOWER"):
            raise OperandError(f"conv: 'padding' must be 'SAME', 'VALID', 'SAME_LOWER' or pairs, got {padding!r}")
    else:
        try:
            pad = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            raise OperandError(f"conv: 'padding' must be 'SAME', 'VALID', 'SAME_LOWER' or {n} (low, high) "
                               f"integer pairs, got {padding!r}") from None
        if len(pad) != n:
            raise OperandError(f"conv: 'padding' needs {n} (low, high) pairs, got {padding}")
    return CONV.bind(
        x, {"kernel": kernel, "bias": bias}, fns={"kernel": kernel_fn, "bias": bias_fn},
        strides=_tuple(strides, n, "strides"), padding=pad,
        lhs_dilation=_tuple(lhs_dilation, n, "lhs_dilation"), rhs_dilation=_tuple(rhs_dilation, n, "rhs_dilation"),
        feature_group_count=fgc, batch_group_count=bgc,
        dimension_numbers=dn, batched=x_rank == n + 2)
