"""`element_wise`: a per-neuron parameter used element-wise (time constants, thresholds, gains)."""

from __future__ import annotations

from etprop.operators import _checks as C
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["element_wise"]


def _forward(x, params, aux):
    return params["weight"]


def _validate(x, params, aux, config):
    C.check_float("element_wise", "weight", params["weight"])


ELEMENT_WISE = register_primitive(ETPPrimitive(
    "element_wise", _forward,
    param_names=("weight",),
    validate=_validate,
    out_to_param={"weight": lambda v, p, a, c: v},
    param_grad=lambda x, dy, p, a, c: {"weight": dy},
    doc="y = weight_fn(weight), one value per output position",
))


def element_wise(weight, *, weight_fn=None):
    """ETP element-wise parameter: returns ``weight_fn(weight)`` (``weight`` if None).

    The result has the parameter's shape (one value per neuron) and is used by the
    model element-wise, e.g. ``v = v * element_wise(decay)``. Each element drives
    only its own position, so D-RTRL traces for it are exact and small.

    Args:
      weight: any-shape floating array or quantity.
      weight_fn: an element-wise transform, e.g. ``jax.nn.sigmoid`` to keep a decay in (0, 1).

    Examples:
        >>> import jax, jax.numpy as jnp, etprop
        >>> decay = etprop.element_wise(jnp.zeros(3), weight_fn=jax.nn.sigmoid)   # one leak per unit
        >>> decay.tolist()
        [0.5, 0.5, 0.5]
    """
    return ELEMENT_WISE.bind(None, {"weight": weight}, fns={"weight": weight_fn})
