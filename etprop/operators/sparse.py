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

import weakref

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

from etprop.errors import OperandError
from etprop.operators import _checks as C
from etprop.operators import event as _event
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["sparse_matmul", "as_bcoo"]


def _forward(x, params, aux, *, shape, in_bounds=False):
    rows, cols = aux["indices"][:, 0], aux["indices"][:, 1]
    # in_bounds: every index was checked on the host (`structure_of`), so the gather and the
    # scatter skip the out-of-bounds masking, whose select_n's the learners' nested
    # derivatives would carry (traced structures keep the masks)
    mode = "promise_in_bounds" if in_bounds else None
    contrib = x.at[..., rows].get(mode=mode or "fill") * params["weight"]  # (..., nse)
    y = jax.ops.segment_sum(jnp.moveaxis(contrib, -1, 0), cols, num_segments=shape[1], mode=mode)
    y = jnp.moveaxis(y, 0, -1)
    return y if "bias" not in params else y + params["bias"]


def _param_grad_sum(x, dy, params, aux, config):
    """``sum_n dy[n, cols[k]] * x[n, rows[k]]`` per stored value ``k`` (and ``sum_n dy`` for the
    bias), ``x`` ``(n, in)`` and ``dy`` ``(n, out)`` (more leading axes are summed too).

    Written as a sum of ``n`` gathered products, up to 16 rows unrolled and beyond that eight
    rows at a time, so that XLA makes one pass over the stored values per block: the vmapped
    pullback forms the ``(n, nse)`` products and reduces them afterwards, 12x slower on a CPU
    at ``n = 8``."""
    rows, cols = aux["indices"][:, 0], aux["indices"][:, 1]
    mode = "promise_in_bounds" if config.get("in_bounds") else "fill"
    w = params["weight"]
    x, dy = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # every leading axis is summed

    def rows_sum(xb, db):  # a static handful of rows: unrolled into one fusion
        acc = db[0].at[cols].get(mode=mode) * xb[0].at[rows].get(mode=mode)
        for i in range(1, xb.shape[0]):
            acc = acc + db[i].at[cols].get(mode=mode) * xb[i].at[rows].get(mode=mode)
        return acc

    n, block = x.shape[0], 8
    if n <= 2 * block:
        g = rows_sum(x, dy)
    else:
        full, rest = divmod(n, block)
        g = rows_sum(x[full * block:], dy[full * block:]) if rest else jnp.zeros(w.shape, jnp.result_type(x, dy))
        split = lambda a: a[:full * block].reshape((full, block) + a.shape[1:])
        xb, db = split(x), split(dy)
        g = jax.lax.fori_loop(0, full, lambda i, acc: acc + rows_sum(xb[i], db[i]), g)
    out = {"weight": g.astype(w.dtype)}
    if "bias" in params:
        out["bias"] = jnp.sum(dy, axis=0).astype(params["bias"].dtype)
    return out


def _validate(x, params, aux, config):
    shape = config["shape"]
    w = params["weight"]
    nse = C.shape_of(aux["indices"])[0]
    C.check_rank("sparse_matmul", "x", x, (1, 2), "(in,) or (batch, in)")
    C.check_numeric("sparse_matmul", "x", x)
    C.check_params_float("sparse_matmul", params)
    C.check_shape("sparse_matmul", "weight", w, (nse,))
    if C.shape_of(x)[-1] != shape[0]:
        raise OperandError(f"sparse_matmul: last dimension (in) of 'x' is {C.shape_of(x)[-1]}, expected {shape[0]} "
                           f"('x' {C.shape_of(x)}, 'sparse_mat' {tuple(shape)})")
    C.check_bias("sparse_matmul", params.get("bias"), (shape[1],))


SPARSE_MATMUL = register_primitive(ETPPrimitive(
    "sparse_matmul", _forward,
    validate=_validate,
    # stored value k drives output column indices[k, 1] only
    out_to_param={"weight": lambda v, p, a, c: jnp.take(v, a["indices"][:, 1], axis=-1),
                  "bias": lambda v, p, a, c: v},
    param_grad_sum=_param_grad_sum,
    # a chunk's pullback would gather (K, nse) products: per-step is 3-5x faster (benchmarks/scale.py)
    chunkable=False,
    doc="y = x @ BCOO(weight, structure) (+ bias)",
))

# event=True (config ``event``, ``event_csr``): brainevent's CSR event-driven kernel (etprop/operators/event.py);
# the wrapper hands every other call to the forward above unchanged
SPARSE_MATMUL.forward = _event.with_event_forward(SPARSE_MATMUL.forward, _event.sparse_forward)


def _compressed_to_coo(mat, kind: str) -> jsparse.BCOO:
    """A CSR / CSC structure (brainevent's or brainunit's: ``indices``, ``indptr``, ``shape``) as a
    BCOO with the stored values in the same order, so ``weight`` keeps meaning ``mat.data``."""
    indptr = np.asarray(mat.indptr)
    inner = np.asarray(mat.indices)
    outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rows, cols = (outer, inner) if kind == "CSR" else (inner, outer)
    idx = np.stack([rows, cols], axis=1).astype(np.int32)
    checked = _check_in_bounds(idx, tuple(mat.shape))
    return jsparse.BCOO((jnp.asarray(u.get_mantissa(mat.data)), jnp.asarray(idx)), shape=tuple(mat.shape)), checked


def _foreign_structure(mat):
    """brainevent ``CSR``/``CSC`` and brainunit ``CSR``/``CSC``/``COO`` (what braintrace users pass),
    read through their public ``indices``/``indptr``/``row``/``col`` fields; None for anything else."""
    module = type(mat).__module__.split(".")[0]
    kind = type(mat).__name__
    if module not in ("brainevent", "brainunit", "saiunit") or kind not in ("CSR", "CSC", "COO"):
        return None
    if kind == "COO":
        idx = jnp.stack([jnp.asarray(mat.row), jnp.asarray(mat.col)], axis=1).astype(jnp.int32)
        checked = _check_in_bounds(idx, tuple(mat.shape))
        return jsparse.BCOO((jnp.asarray(u.get_mantissa(mat.data)), idx), shape=tuple(mat.shape)), checked
    return _compressed_to_coo(mat, kind)


def as_bcoo(sparse_mat) -> jsparse.BCOO:
    """The structure as a plain 2-D BCOO (its stored values in the order of the input's), or
    `OperandError` naming what is accepted (also for indices outside the shape)."""
    return structure_of(sparse_mat)[0]


def structure_of(sparse_mat) -> tuple[jsparse.BCOO, bool]:
    """`as_bcoo` and whether every index was checked in bounds on the host (False only for a
    structure built from traced indices, which cannot be checked)."""
    if isinstance(sparse_mat, jsparse.BCSR):
        sparse_mat = sparse_mat.to_bcoo()
    foreign = _foreign_structure(sparse_mat)
    if foreign is not None:
        return foreign
    if not isinstance(sparse_mat, jsparse.BCOO):
        raise OperandError("sparse_matmul: 'sparse_mat' must give the structure as a jax.experimental.sparse "
                           "BCOO/BCSR, a brainevent CSR/CSC or a brainunit CSR/CSC/COO matrix, got "
                           f"{type(sparse_mat).__name__}")
    if sparse_mat.ndim != 2 or sparse_mat.n_batch or sparse_mat.n_dense:
        raise OperandError(f"sparse_matmul: 'sparse_mat' must be a plain 2-D (in, out) BCOO, got shape "
                           f"{sparse_mat.shape} with n_batch={sparse_mat.n_batch}, n_dense={sparse_mat.n_dense}")
    return sparse_mat, _check_in_bounds(sparse_mat.indices, sparse_mat.shape)


_CHECKED: dict = {}  # id -> weakref of index arrays already checked (a structure is reused every step)


def _check_in_bounds(indices, shape) -> bool:
    """True once every ``(row, col)`` is found inside ``shape``, `OperandError` if one is not (BCOO
    pads with out-of-range indices: the product would silently drop them); False for traced
    indices (nothing to check: the product keeps its bounds masks)."""
    if isinstance(indices, jax.core.Tracer):
        return False
    ref = _CHECKED.get(id(indices))
    if ref is not None and ref() is indices:
        return True
    idx = np.asarray(indices)
    bad = (idx < 0) | (idx >= np.asarray(shape[:2]))
    if bad.any():
        k = int(np.argmax(bad.any(axis=1)))
        raise OperandError(f"sparse_matmul: stored value {k} of 'sparse_mat' has index {tuple(idx[k].tolist())} "
                           f"outside its shape {tuple(shape)} ({int(bad.any(axis=1).sum())} such entries: BCOO "
                           f"padding?); build the structure without padding, e.g. "
                           f"BCOO((data, indices), shape=...) with in-range indices, or BCOO.fromdense(dense)")
    try:
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[id(indices)] = weakref.ref(indices)
    except TypeError:  # not weak-referenceable (a NumPy array): checked again next time
        pass
    return True


def sparse_matmul(x, weight, *, sparse_mat, bias=None, weight_fn=None, bias_fn=None, event=False):
    """ETP sparse product ``y = x @ S`` where ``S`` has ``sparse_mat``'s structure and values ``weight``.

    Args:
      x: ``(I,)`` or ``(B, I)``.
      weight: ``(nse,)`` trainable stored values, in the order of ``sparse_mat.indices``
        (initialise with ``sparse_mat.data``).
      sparse_mat: the ``(I, O)`` structure (only the structure is used): a BCOO/BCSR, or what
        braintrace users pass, a brainevent CSR/CSC or a brainunit CSR/CSC/COO; ``weight``
        follows the order of its stored values (``sparse_mat.data``).
      bias: optional ``(O,)``.
      event: compute the product with brainevent's event-driven CSR kernel, which visits
        the stored values of the active inputs' rows only (faster for sparse spikes). ``x``
        must hold only 0 and 1 (checked when concrete; assumed under ``jit``), and the
        structure must be concrete (it is converted once to CSR on the host). Values and
        gradients, w.r.t. ``x`` included, are those of ``event=False``. A static option;
        needs ``pip install "etprop[event]"`` (numba for the CPU kernels).

    Returns:
      ``(O,)`` or ``(B, O)``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> from jax.experimental import sparse
        >>> structure = sparse.BCOO.fromdense(jnp.array([[1., 0.], [0., 2.], [3., 0.]]))   # (I, O) = (3, 2)
        >>> weight = structure.data                          # the 3 stored values learn
        >>> etprop.sparse_matmul(jnp.ones((4, 3)), weight, sparse_mat=structure).tolist()[0]
        [4.0, 2.0]
        >>> spikes = jnp.array([1., 0., 1.])                  # event-driven: same values as event=False
        >>> etprop.sparse_matmul(spikes, weight, sparse_mat=structure, event=True).tolist()
        [4.0, 0.0]
    """
    mat, in_bounds = structure_of(sparse_mat)
    event_config = {}
    if _event.check_event("sparse_matmul", event):
        _event.require_brainevent("sparse_matmul")
        _event.check_binary("sparse_matmul", x)
        event_config = {"event": True, "event_csr": _event.csr_structure("sparse_matmul", mat.indices, mat.shape)}
    return SPARSE_MATMUL.bind(x, {"weight": weight, "bias": bias}, aux={"indices": mat.indices},
                              fns={"weight": weight_fn, "bias": bias_fn}, shape=tuple(mat.shape), in_bounds=in_bounds,
                              **event_config)
