"""Operand checks shared by the built-in operators; each raises `OperandError` naming the operand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from etprop.errors import OperandError


def shape_of(a) -> tuple[int, ...]:
    return tuple(np.shape(a))


def check_rank(op: str, name: str, a, ranks: tuple[int, ...], expected: str) -> int:
    nd = len(shape_of(a))
    if nd not in ranks:
        raise OperandError(f"{op}: '{name}' has shape {shape_of(a)} (rank {nd}); expected {expected}")
    return nd


def check_dim(op: str, name: str, got: int, want: int, what: str, shapes: dict | None = None) -> None:
    """``shapes``: ``{operand name: operand}`` whose shapes the message quotes."""
    if got != want:
        ctx = "" if not shapes else " (" + ", ".join(f"'{k}' {shape_of(v)}" for k, v in shapes.items()) + ")"
        raise OperandError(f"{op}: {what} of '{name}' is {got}, expected {want}{ctx}")


def check_shape(op: str, name: str, a, want: tuple[int, ...]) -> None:
    if shape_of(a) != tuple(want):
        raise OperandError(f"{op}: '{name}' has shape {shape_of(a)}, expected {tuple(want)}")


def dtype_of(a, op: str = "", name: str = ""):
    """The dtype of an array or quantity; anything else (a list, strings) is an `OperandError`."""
    m = getattr(a, "mantissa", a)
    try:
        return jnp.result_type(m)
    except TypeError:
        where = f"{op}: '{name}'" if op else "an operand"
        kind = f"dtype {np.asarray(m).dtype}" if isinstance(m, np.ndarray) else f"type {type(m).__name__}"
        raise OperandError(f"{where} must be a numeric JAX/NumPy array or brainunit quantity, got {kind}; "
                           f"convert it, e.g. jnp.asarray(x, jnp.float32)") from None


def check_float(op: str, name: str, a) -> None:
    dt = dtype_of(a, op, name)
    if not jnp.issubdtype(dt, jnp.inexact):
        raise OperandError(f"{op}: trainable '{name}' must be a floating-point array, got dtype {dt}; "
                           f"cast it, e.g. jnp.asarray(w, jnp.float32)")


def check_numeric(op: str, name: str, a) -> None:
    dt = dtype_of(a, op, name)
    if not (jnp.issubdtype(dt, jnp.number) or dt == jnp.bool_):
        raise OperandError(f"{op}: '{name}' must be numeric, got dtype {dt}; cast it, e.g. x.astype(jnp.float32)")


def check_int(op: str, name: str, a) -> None:
    dt = dtype_of(a, op, name)
    if not jnp.issubdtype(dt, jnp.integer):
        raise OperandError(f"{op}: '{name}' must be an integer array of indices, got dtype {dt}")


def check_params_float(op: str, params: dict) -> None:
    for k, p in params.items():
        check_float(op, k, p)


def check_bias(op: str, bias, want: tuple[int, ...]) -> None:
    if bias is not None:
        check_shape(op, "bias", bias, want)
