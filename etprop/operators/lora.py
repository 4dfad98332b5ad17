"""`lora_matmul`: a trainable low-rank update ``alpha * x @ B @ A``."""

from __future__ import annotations

import jax.numpy as jnp

from etprop.errors import OperandError
from etprop.operators import _checks as C
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["lora_matmul"]


def _forward(x, params, aux, *, alpha):
    y = alpha * jnp.matmul(jnp.matmul(x, params["B"]), params["A"])
    return y if "bias" not in params else y + params["bias"]


def _validate(x, params, aux, config):
    B, A = params["B"], params["A"]
    C.check_rank("lora_matmul", "x", x, (1, 2), "(in,) or (batch, in)")
    C.check_rank("lora_matmul", "B", B, (2,), "(in, rank)")
    C.check_rank("lora_matmul", "A", A, (2,), "(rank, out)")
    C.check_numeric("lora_matmul", "x", x)
    C.check_params_float("lora_matmul", params)
    C.check_dim("lora_matmul", "x", C.shape_of(x)[-1], C.shape_of(B)[0], "last dimension (in)",
                shapes={"x": x, "B": B})
    C.check_dim("lora_matmul", "A", C.shape_of(A)[0], C.shape_of(B)[1], "first dimension (rank)",
                shapes={"B": B, "A": A})
    C.check_bias("lora_matmul", params.get("bias"), C.shape_of(A)[1:])


LORA_MATMUL = register_primitive(ETPPrimitive(
    "lora_matmul", _forward,
    param_names=("B", "A", "bias"),
    validate=_validate,
    # B feeds every output through the rank bottleneck: only A and bias are diagonal.
    out_to_param={"A": lambda v, p, a, c: v[..., None, :], "bias": lambda v, p, a, c: v},
    doc="y = alpha * x @ B @ A (+ bias)",
))


def lora_matmul(x, B, A, *, alpha: float = 1.0, bias=None, b_fn=None, a_fn=None, bias_fn=None):
    """ETP low-rank product ``y = alpha * x @ b_fn(B) @ a_fn(A) + bias_fn(bias)``.

    Args:
      x: ``(I,)`` or ``(B, I)``.
      B: ``(I, r)`` down-projection; A: ``(r, O)`` up-projection.
      alpha: static scale.
      bias: optional ``(O,)``.

    Returns:
      ``(O,)`` or ``(B, O)``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> x = jnp.ones((2, 6))
        >>> B, A = jnp.ones((6, 2)), jnp.ones((2, 5)) * 0.1    # rank 2
        >>> y = etprop.lora_matmul(x, B, A, alpha=0.5)
        >>> y.shape, round(float(y[0, 0]), 4)                 # 0.5 * 6 * 2 * 0.1
        ((2, 5), 0.6)
    """
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise OperandError(f"lora_matmul: 'alpha' must be a number (a static scale), got {alpha!r}") from None
    return LORA_MATMUL.bind(x, {"B": B, "A": A, "bias": bias},
                            fns={"B": b_fn, "A": a_fn, "bias": bias_fn}, alpha=alpha)
