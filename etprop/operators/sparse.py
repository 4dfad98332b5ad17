"""`sparse_matmul`: trainable values of a fixed sparsity structure.

Format: `jax.experimental.sparse` BCOO (BCSR accepted and converted). Why this
rather than brainevent CSR: it ships with JAX (no extra dependency whose version
must track jaxlib), its ``bcoo_dot_general`` has JVP, transpose and batching rules
on CPU and GPU, and the COO column index of each stored value is exactly the
output position the value drives, which is what the per-parameter trace needs.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from etprop.errors import OperandError
from etprop.operators import _checks as C
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["sparse_matmul"]


def _forward(x, params, aux, *, shape):
    mat = jsparse.BCOO((params["weight"], aux["indices"]), shape=shape)
    y = x @ mat
    return y if "bias" not in params else y + params["bias"]


def _validate(x, params, aux, config):
    shape = config["shape"]
    w = params["weight"]
    nse = C.shape_of(aux["indices"])[0]
    C.check_rank("sparse_matmul", "x", x, (1, 2), "(in,) or (batch, in)")
    C.check_numeric("sparse_matmul", "x", x)
    C.check_params_float("sparse_matmul", params)
    C.check_shape("sparse_matmul", "weight", w, (nse,))
    C.check_dim("sparse_matmul", "x", C.shape_of(x)[-1], shape[0], "last dimension (in)")
    C.check_bias("sparse_matmul", params.get("bias"), (shape[1],))


SPARSE_MATMUL = register_primitive(ETPPrimitive(
    "sparse_matmul", _forward,
    validate=_validate,
    # stored value k drives output column indices[k, 1] only
    out_to_param={"weight": lambda v, p, a, c: jnp.take(v, a["indices"][:, 1], axis=-1),
                  "bias": lambda v, p, a, c: v},
    doc="y = x @ BCOO(weight, structure) (+ bias)",
))


def _as_bcoo(sparse_mat) -> jsparse.BCOO:
    if isinstance(sparse_mat, jsparse.BCSR):
        sparse_mat = sparse_mat.to_bcoo()
    if not isinstance(sparse_mat, jsparse.BCOO):
        raise OperandError("sparse_matmul: 'sparse_mat' must be a jax.experimental.sparse BCOO or BCSR "
                           f"matrix giving the structure, got {type(sparse_mat).__name__}")
    if sparse_mat.ndim != 2 or sparse_mat.n_batch or sparse_mat.n_dense:
        raise OperandError(f"sparse_matmul: 'sparse_mat' must be a plain 2-D (in, out) BCOO, got shape "
                           f"{sparse_mat.shape} with n_batch={sparse_mat.n_batch}, n_dense={sparse_mat.n_dense}")
    return sparse_mat


def sparse_matmul(x, weight, *, sparse_mat, bias=None, weight_fn=None, bias_fn=None):
    """ETP sparse product ``y = x @ S`` where ``S`` has ``sparse_mat``'s structure and values ``weight``.

    Args:
      x: ``(I,)`` or ``(B, I)``.
      weight: ``(nse,)`` trainable stored values, in the order of ``sparse_mat.indices``
        (initialise with ``sparse_mat.data``).
      sparse_mat: BCOO/BCSR of shape ``(I, O)``: only its structure is used.
      bias: optional ``(O,)``.

    Returns:
      ``(O,)`` or ``(B, O)``.
    """
    mat = _as_bcoo(sparse_mat)
    return SPARSE_MATMUL.bind(x, {"weight": weight, "bias": bias}, aux={"indices": mat.indices},
                              fns={"weight": weight_fn, "bias": bias_fn}, shape=tuple(mat.shape))
