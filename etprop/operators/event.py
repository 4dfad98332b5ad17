"""Event-driven forward of `matmul` and `sparse_matmul` (their ``event=True`` option).

Spiking inputs are mostly zeros. With ``event=True`` the product ``y = x @ W`` is computed
by brainevent's event-driven kernels, which add up the rows of ``W`` at the active inputs
only (cost proportional to the number of spikes, not to the input size):

* `matmul`: ``brainevent.BinaryArray(x) @ weight`` (``binary_densemv`` / ``binary_densemm``);
* `sparse_matmul`: ``brainevent.BinaryArray(x) @ brainevent.CSR(...)`` (``binary_csrmv`` /
  ``binary_csrmm``); the BCOO structure is converted once to CSR on the host (the stored
  values are permuted into CSR order inside the call, so ``weight`` keeps the BCOO order).

The values of ``x`` must be 0 or 1 (spikes; ``bool`` is fine). A traced value cannot be
seen to be binary, so this is an assumption inside ``jit``; outside it, a concrete ``x`` is
checked. brainevent's kernels treat any positive value as a spike of size one.

Gradients are those of the dense product: the forward is a `jax.custom_jvp` whose tangent
is the dense formula ``dx @ W + x @ dW`` (for the sparse operator its COO form), so the
gradient w.r.t. ``x``, through which a surrogate learning signal flows to the layer that
emitted the spikes, and w.r.t. the weights are exactly the dense path's, under ``jit``,
``vmap`` (a batch with shared weights) and the online learners.
The learners also pull back through the operator with a graded value in place of the spikes
(ES-D-RTRL's input trace); that is right too, because only the primal, which a pullback
discards, assumes spikes, while the tangent rule is the dense formula on the actual values.

Dependency: brainevent (already installed with brainstate) and, for its CPU kernels, numba:
``pip install "etprop[event]"``.
"""

from __future__ import annotations

import hashlib
import importlib
import weakref
from functools import partial

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from etprop.errors import ArgumentError, NotSupportedError, OperandError

__all__ = []  # no public names: the option is ``event=True`` of `etprop.matmul` / `etprop.sparse_matmul`

_INSTALL = 'pip install "etprop[event]"'


def check_event(op: str, event) -> bool:
    """``event`` as a bool, or `ArgumentError` (a truthy string or array is not accepted)."""
    if isinstance(event, (bool, np.bool_)):
        return bool(event)
    raise ArgumentError(f"{op}: 'event' must be True or False, got {event!r}; event=True computes the product "
                        f"with brainevent's event-driven kernels and assumes 'x' holds only 0 and 1 (spikes)")


def _import(name: str):
    return importlib.import_module(name)


def require_brainevent(op: str):
    """The brainevent module, or `NotSupportedError` naming the extra to install."""
    try:
        be = _import("brainevent")
    except ImportError as err:
        raise NotSupportedError(f"{op}(event=True) needs brainevent, which is not importable ({err}); "
                                f"install the extra: {_INSTALL}, or use event=False") from None
    if jax.default_backend() == "cpu":
        try:
            _import("numba")
        except ImportError as err:
            raise NotSupportedError(f"{op}(event=True) on CPU needs numba (brainevent's CPU kernels), which is "
                                    f"not importable ({err}); install the extra: {_INSTALL}, or use "
                                    f"event=False") from None
    return be


def check_binary(op: str, x) -> None:
    """`OperandError` if a concrete ``x`` holds a value other than 0 and 1; traced ``x``: no check."""
    m = u.get_mantissa(x) if isinstance(x, u.Quantity) else x
    if m is None or isinstance(m, jax.core.Tracer):
        return
    try:
        a = np.asarray(m)
    except Exception:  # not an array: the operator's own checks say so
        return
    if a.dtype == np.bool_ or a.dtype.kind not in "iuf":
        return
    bad = (a != 0) & (a != 1)
    if bad.any():
        v = a[bad].ravel()[0].item()
        raise OperandError(f"{op}: event=True needs 'x' of 0s and 1s (spikes), but 'x' holds {v!r} "
                           f"({int(bad.sum())} of {a.size} values are neither 0 nor 1); use event=False "
                           f"for graded inputs")


def _common_dtype(x, w):
    dt = jnp.result_type(x, w)
    return x.astype(dt), w.astype(dt)


def _zero(t) -> bool:
    return isinstance(t, SymbolicZero) or getattr(t, "dtype", None) == jax.dtypes.float0


# -- dense ------------------------------------------------------------------------------------

@jax.custom_jvp
def _dense_event(x, w):
    be = require_brainevent("matmul")
    return be.BinaryArray(x) @ w


def _dense_event_jvp(primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _dense_event(x, w)
    terms = ([] if _zero(dx) else [jnp.matmul(dx, w)]) + ([] if _zero(dw) else [jnp.matmul(x, dw)])
    dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
    return y, dy


_dense_event.defjvp(_dense_event_jvp, symbolic_zeros=True)


def dense_matmul(x, w):
    """``x @ w`` by brainevent's dense event-driven kernel; the dense product's derivatives."""
    x, w = _common_dtype(x, w)
    return _dense_event(x, w)


# -- sparse -----------------------------------------------------------------------------------

class CsrStructure:
    """A BCOO structure's CSR form for brainevent, held as static config of a call.

    Hashable by content (a digest of the indices), so equal structures share one
    specialisation. ``perm`` maps CSR order to the BCOO order of the stored values:
    ``csr_data = weight[perm]``. Entries outside the shape (BCOO padding) are dropped.
    """

    __slots__ = ("shape", "indices", "indptr", "perm", "_key", "__weakref__")

    def __init__(self, bcoo_indices, shape):
        idx = np.asarray(bcoo_indices)
        shape = tuple(int(s) for s in shape)
        rows, cols = idx[:, 0].astype(np.int64), idx[:, 1].astype(np.int64)
        valid = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        keep = np.nonzero(valid)[0]
        order = keep[np.argsort(rows[keep], kind="stable")]
        itype = np.int32 if max(idx.shape[0], *shape) < 2 ** 31 - 1 else np.int64
        self.shape = shape
        self.perm = order.astype(itype)
        self.indices = cols[order].astype(itype)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=shape[0]))]).astype(itype)
        self._key = (shape, idx.shape, str(idx.dtype), hashlib.sha1(np.ascontiguousarray(idx).tobytes()).hexdigest())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, CsrStructure) and self._key == other._key

    def __repr__(self):
        return f"CsrStructure(shape={self.shape}, nse={self.perm.size})"


_CSR_CACHE: dict[int, tuple] = {}


def csr_structure(op: str, indices, shape) -> CsrStructure:
    """The `CsrStructure` of BCOO ``indices`` (converted once per indices array)."""
    if isinstance(indices, jax.core.Tracer):
        raise OperandError(f"{op}: event=True needs the sparsity structure to be concrete (its indices known "
                           f"outside jit, e.g. built once and closed over), but 'sparse_mat.indices' is traced; "
                           f"build the structure outside the jitted function, or use event=False")
    entry = _CSR_CACHE.get(id(indices))
    if entry is not None and entry[0]() is indices and entry[1].shape == tuple(shape):
        return entry[1]
    csr = CsrStructure(indices, shape)
    try:
        key = id(indices)
        ref = weakref.ref(indices, lambda _, key=key: _CSR_CACHE.pop(key, None))
        _CSR_CACHE[key] = (ref, csr)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return csr


def _coo(x, w, rows, cols, n_out):
    """The dense path's COO product ``segment_sum(x[..., rows] * w, cols)``."""
    contrib = jnp.take(x, rows, axis=-1) * w
    y = jax.ops.segment_sum(jnp.moveaxis(contrib, -1, 0), cols, num_segments=n_out)
    return jnp.moveaxis(y, 0, -1)


@partial(jax.custom_jvp, nondiff_argnums=(4,))
def _sparse_event(x, w, rows, cols, csr):
    be = require_brainevent("sparse_matmul")
    mat = be.CSR((jnp.take(w, csr.perm), csr.indices, csr.indptr), shape=csr.shape)
    return be.BinaryArray(x) @ mat


def _sparse_event_jvp(csr, primals, tangents):
    x, w, rows, cols = primals
    dx, dw = tangents[:2]
    y = _sparse_event(x, w, rows, cols, csr)
    n_out = csr.shape[1]
    terms = (([] if _zero(dx) else [_coo(dx, w, rows, cols, n_out)])
             + ([] if _zero(dw) else [_coo(x, dw, rows, cols, n_out)]))
    dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
    return y, dy


_sparse_event.defjvp(_sparse_event_jvp, symbolic_zeros=True)


def sparse_matmul(x, w, rows, cols, csr: CsrStructure):
    """``x @ S(w)`` by brainevent's CSR event-driven kernel; the COO product's derivatives."""
    x, w = _common_dtype(x, w)
    return _sparse_event(x, w, rows, cols, csr)


def with_event_forward(base, event_forward):
    """A forward that runs ``event_forward`` when its config says ``event=True``, else ``base``
    (which never sees the event options)."""

    def forward(x, params, aux, *, event=False, event_csr=None, **config):
        if event:
            return event_forward(x, params, aux, csr=event_csr, **config)
        return base(x, params, aux, **config)

    forward.__name__ = getattr(base, "__name__", "forward")
    forward.__doc__ = getattr(base, "__doc__", None)
    forward.__wrapped__ = base
    return forward


def sparse_forward(x, params, aux, *, csr, shape, **_):
    """The event forward of `sparse_matmul`'s primitive (config ``event=True``)."""
    idx = aux["indices"]
    y = sparse_matmul(x, params["weight"], idx[:, 0], idx[:, 1], csr)
    return y if "bias" not in params else y + params["bias"]
