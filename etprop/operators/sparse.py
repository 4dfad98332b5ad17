"""`sparse_matmul`: trainable values of a fixed sparsity structure.

Format: `jax.experimental.sparse` BCOO (BCSR accepted and converted). Why this
rather than brainevent CSR: it ships with JAX (no extra dependency whose version
must track jaxlib), and the COO column index of each stored value is exactly the
output position the value drives, which is what the per-parameter trace needs.

The product is the COO matrix-vector product written with the structure's
``(row, col)`` indices: a gather of ``x`` at the rows, times the values, summed into
the columns by `jax.ops.segment_sum`. ``x @ bcoo`` (``bcoo_dot_general``) computes
the same, but its transpose rule in JAX 0.10 fails under `jax.vmap` when the values
are shared across the mapped axis, which is how the online learners take
parameter gradients over a batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from etprop.errors import OperandError
from etprop.operators import _checks as C
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["sparse_matmul"]


def _forward(x, params, aux, *, shape):
    rows, cols = aux["indices"][:, 0], aux["indices"][:, 1]
    contrib = jnp.take(x, rows, axis=-1) * params["weight"]  # (..., nse)
    y = jax.ops.segment_sum(jnp.moveaxis(contrib, -1, 0), cols, num_segments=shape[1])
    y = jnp.moveaxis(y, 0, -1)
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
