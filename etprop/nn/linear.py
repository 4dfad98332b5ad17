r"""Connection layers built on the ETP operators.

Every layer keeps its trainable arrays as `brainstate.ParamState` (one per array, so a
parameter is named ``<layer>.weight``, ``<layer>.bias``, ...) and computes its output
with an ETP operator, so the weights learn online wherever the output drives a hidden
state element-wise. Constraints (a connectivity mask, Dale's law) are applied *inside*
the operator through its ``weight_fn`` hook: the operator, and so the eligibility trace
and the gradient, see the **raw** parameter.

Layers are stateless (no hidden state); they are usually called from a cell or neuron's
``update``.

Initialisers
------------
Every ``*_init`` argument is one of

* an array or a `brainunit.Quantity` of the parameter's shape (the parameter keeps the unit);
* a `braintools.init` initialiser (``braintools.init.KaimingNormal(unit=u.mS)``,
  ``Normal(0., 1.)``, ``Constant(0.5 * u.mV)``, ...), called as braintools calls it,
  ``init(shape)``, with the layer's key as its random generator; its ``unit=`` is kept;
* a callable ``init(key, shape, dtype) -> array``, the signature of `jax.nn.initializers`
  (``jax.nn.initializers.lecun_normal()``, ``orthogonal()``, ``zeros``, ...).

The random key comes from ``key``: an ``int`` seed, a JAX PRNG key, or ``None`` for a key
drawn from brainstate's global generator (`brainstate.random.split_key`). Values are
created in JAX's default float dtype (float32, or float64 under ``jax_enable_x64``). When
the weight carries a unit and no ``b_init`` is given, the bias is zero in the weight's unit
(the output's unit for unitless inputs).

Parameter holders
-----------------
Every layer takes braintrace's ``param_type=``: the class that holds each of its arrays,
called as ``param_type(value)``. The default, `brainstate.ParamState`, is trainable; a
subclass of it is trainable too (and lets a script select those parameters by class,
``model.states(MyParam)``); `brainstate.LongTermState` or `brainstate.FakeState` hold frozen
arrays (etprop differentiates only `ParamState`s: a frozen array is a constant of the step and
gets no gradient). A layer with several arrays (``weight``, ``bias``, ...) holds each in its
own ``param_type`` state, where braintrace holds one dict in one.

==================  ============================  =================================  =====================
layer               operator                      parameters                         D-RTRL trace kind
==================  ============================  =================================  =====================
`Linear`            `etprop.matmul`               weight (I, O), bias (O,)           per-parameter
`SparseLinear`      `etprop.sparse_matmul`        weight (nse,), bias (O,)           per-parameter
`LoRA`              `etprop.lora_matmul`          B (I, r), A (r, O), bias (O,)      A, bias: per-parameter;
                                                                                     B: factorised
`Conv1d/2d/3d`      `etprop.conv`                 weight (*K, C/g, O), bias (O,)     factorised
`Embedding`         `etprop.embedding`            weight (V, F)                      per-parameter
`GroupedLinear`     `etprop.grouped_matmul`       weight (G, I, O), bias (G, O)      per-parameter
==================  ============================  =================================  =====================

"Per-parameter" means every element of the parameter drives one output position, so
D-RTRL can keep an exact per-element trace; a parameter whose elements drive several
positions (a conv kernel, LoRA's down-projection) gets the factorised (ES-D-RTRL) trace
under every algorithm.
"""

from __future__ import annotations

import math

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

from etprop import operators as ops
from etprop.errors import ArgumentError, OperandError
from etprop.nn.compat import accepts_keywords
from etprop.nn.embedding import Embedding
from etprop.nn.initializers import (LECUN, ZEROS, Init, bias_init, init_array, maybe_param, new_param,
                                    param_holder, positive_int, split_keys, value_of)
from etprop.operators.sparse import as_bcoo

__all__ = ["Linear", "SparseLinear", "LoRA", "Embedding", "GroupedLinear"]

# -- Linear ----------------------------------------------------------------------------------------

def _constraint_fn(mask, sign):
    """``w -> sign * |w| * mask`` (each factor only if given): built once per layer so every
    call shares one ETP call specialisation."""
    if mask is None and sign is None:
        return None

    def weight_fn(w):
        if sign is not None:
            w = u.math.abs(w) * sign.astype(u.get_mantissa(w).dtype)
        if mask is not None:
            w = w * mask.astype(u.get_mantissa(w).dtype)
        return w

    return weight_fn


class Linear(brainstate.nn.Module):
    r"""Dense layer :math:`y = x\,W_\text{eff} + b` through `etprop.matmul`.

    .. math::

        W_\text{eff} = s \odot |W| \odot M

    where the mask :math:`M` (``w_mask``) and the Dale's-law sign :math:`s` (``sign``) are
    optional; without them :math:`W_\text{eff} = W`. Both are applied by the operator's
    ``weight_fn``, so the trace and the gradient are with respect to the raw weight
    :math:`W`: a masked-out element gets a zero gradient and keeps its raw value; with a
    sign the effective weight's sign never flips, whatever the update of :math:`W`.

    Args:
      in_size, out_size: numbers of inputs ``I`` and outputs ``O``.
      bias: learn a bias ``(O,)``.
      w_mask: optional ``(I, O)`` 0/1 (or bool) connectivity mask.
      sign: optional Dale's-law signs of the presynaptic units, ``(I,)`` of ``+1``
        (excitatory) / ``-1`` (inhibitory), or a full ``(I, O)`` array of signs.
      w_init: initial weight, default LeCun normal (std ``1/sqrt(I)``).
      b_init: initial bias, default zeros.
      key: seed or PRNG key for the initialisers (see module doc).
      param_type: the class holding ``weight`` and ``bias`` (braintrace's keyword; see the
        module doc), default `brainstate.ParamState`; both are of this class.

    States: none. Parameters: ``weight`` ``(I, O)``, ``bias`` ``(O,)``.

    Online learning: when ``y`` drives a hidden state element-wise (e.g. the input current
    of a neuron), ``weight`` and ``bias`` are traced; D-RTRL keeps a per-parameter trace
    (each ``W[i, o]`` drives output ``o`` only). A readout whose output reaches no hidden
    state is not traced and gets its exact per-step gradient.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> layer = etprop.nn.Linear(3, 4)                     # weight (3, 4), bias (4,)
        >>> layer(jnp.ones((2, 3))).shape                      # (B, I) -> (B, O)
        (2, 4)
        >>> dale = etprop.nn.Linear(3, 4, sign=jnp.array([1., 1., -1.]))   # input 2 inhibitory
        >>> bool((dale(jnp.array([0., 0., 1.])) <= 0).all())
        True
    """

    def __init__(self, in_size: int, out_size: int, bias: bool = True, w_mask=None, sign=None, *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None, param_type=None):
        super().__init__(name=name)
        self.in_features = positive_int(in_size, "in_size")
        self.out_features = positive_int(out_size, "out_size")
        self.in_size, self.out_size = (self.in_features,), (self.out_features,)
        shape = (self.in_features, self.out_features)
        holder = param_holder(param_type, "Linear")
        k_w, k_b = split_keys(key, 2)
        self.weight = new_param(holder, init_array(LECUN if w_init is None else w_init, k_w, shape, "weight"),
                                "Linear", "weight")
        self.bias = maybe_param(bias, bias_init(b_init, self.weight.value), k_b, (self.out_features,), "bias",
                                holder, "Linear")
        self.w_mask = None if w_mask is None else _check_mask(w_mask, shape)
        self.sign = None if sign is None else _check_sign(sign, shape)
        self._weight_fn = _constraint_fn(self.w_mask, self.sign)

    @property
    def effective_weight(self) -> jax.Array:
        """The weight the layer multiplies by (mask and sign applied)."""
        w = self.weight.value
        return w if self._weight_fn is None else self._weight_fn(w)

    def update(self, x):
        """``x``: ``(I,)`` or ``(B, I)`` -> ``(O,)`` or ``(B, O)``."""
        return ops.matmul(x, self.weight.value, value_of(self.bias), weight_fn=self._weight_fn)


def _check_mask(mask, shape):
    if tuple(np.shape(mask)) != shape:
        raise ArgumentError(f"Linear: 'w_mask' has shape {tuple(np.shape(mask))}, expected {shape} (in, out)")
    try:
        m = jnp.asarray(mask)
    except TypeError:
        m = None
    if m is None or not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.number)):
        got = np.asarray(mask).dtype if m is None else m.dtype
        raise ArgumentError(f"Linear: 'w_mask' must be a 0/1 or bool array of shape {shape}, got dtype {got}")
    return m


def _check_sign(sign, shape):
    s = np.asarray(sign)
    if s.shape == shape[:1]:
        s = s[:, None]
    elif s.shape != shape:
        raise ArgumentError(f"Linear: 'sign' has shape {s.shape}, expected {shape[:1]} (one sign per input "
                            f"unit, Dale's law) or {shape}")
    if not np.all(np.isin(s, (-1, 1))):
        raise ArgumentError("Linear: 'sign' must contain only +1 (excitatory) and -1 (inhibitory)")
    return jnp.asarray(s)


# -- SparseLinear ----------------------------------------------------------------------------------

@accepts_keywords({"spar_mat": "sparse_mat"})
class SparseLinear(brainstate.nn.Module):
    r"""Sparse layer :math:`y = x\,S(w) + b` through `etprop.sparse_matmul`.

    :math:`S(w)` is the ``(I, O)`` matrix with a fixed sparsity structure whose stored
    values are the trainable vector :math:`w` (``nse`` entries, in the order of the
    structure's indices); absent connections stay exactly zero.

    Args:
      sparse_mat: the structure: a `jax.experimental.sparse.BCOO` (or BCSR) of shape
        ``(I, O)``, or a pair ``(indices, shape)`` with ``indices`` an ``(nse, 2)``
        integer array of ``(row, column)`` pairs.
      bias: learn a bias ``(O,)``.
      w_init: initial values ``(nse,)``. Default: the BCOO's stored values when a matrix
        is given; for ``(indices, shape)`` a normal draw with std ``1/sqrt(nse / O)``
        (one over the root of the mean fan-in).
      b_init: initial bias, default zeros.
      key: seed or PRNG key.
      param_type: the class holding ``weight`` and ``bias`` (see the module doc).

    States: none. Parameters: ``weight`` ``(nse,)``, ``bias`` ``(O,)``.

    Online learning: each stored value drives its column only, so D-RTRL keeps an exact
    per-parameter trace of ``nse`` elements (not ``I * O``).

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> from jax.experimental import sparse
        >>> structure = sparse.BCOO.fromdense(jnp.array([[1., 0.], [0., 2.], [3., 0.]]))
        >>> layer = etprop.nn.SparseLinear(structure)   # 3 trainable values (+ bias), zeros stay zero
        >>> layer.weight.value.shape, layer(jnp.ones((4, 3))).shape
        ((3,), (4, 2))
    """

    def __init__(self, sparse_mat, bias: bool = True, *, w_init: Init = None, b_init: Init = None, key=None,
                 name: str | None = None, param_type=None):
        super().__init__(name=name)
        if not isinstance(sparse_mat, (tuple, list)):  # a matrix: BCOO/BCSR, brainevent or brainunit CSR/...
            try:
                sparse_mat = as_bcoo(sparse_mat)
            except OperandError as err:
                raise ArgumentError(f"SparseLinear: {err} (or a pair (indices, shape))") from None
        if isinstance(sparse_mat, jsparse.BCOO):
            data = sparse_mat.data
            indices, shape = sparse_mat.indices, tuple(sparse_mat.shape)
        else:
            try:
                indices, shape = sparse_mat
            except (TypeError, ValueError):
                raise ArgumentError("SparseLinear: 'sparse_mat' must be a BCOO/BCSR matrix or a pair "
                                    "(indices, shape)") from None
            indices, shape, data = jnp.asarray(indices), tuple(int(s) for s in shape), None
            if indices.ndim != 2 or indices.shape[1] != 2 or not jnp.issubdtype(indices.dtype, jnp.integer):
                raise ArgumentError(f"SparseLinear: 'indices' must be an (nse, 2) integer array, got shape "
                                    f"{tuple(indices.shape)} dtype {indices.dtype}")
        if len(shape) != 2:
            raise ArgumentError(f"SparseLinear: the structure must be 2-D (in, out), got shape {shape}")
        nse = int(indices.shape[0])
        self.in_features, self.out_features = shape
        self.in_size, self.out_size = (shape[0],), (shape[1],)
        self.nse = nse
        k_w, k_b = split_keys(key, 2)
        if w_init is None:
            if data is not None:
                w_init = data
            else:
                std = 1.0 / math.sqrt(max(1.0, nse / shape[1]))
                w_init = jax.nn.initializers.normal(std)
        holder = param_holder(param_type, "SparseLinear")
        self.weight = new_param(holder, init_array(w_init, k_w, (nse,), "weight"), "SparseLinear", "weight")
        self.bias = maybe_param(bias, bias_init(b_init, self.weight.value), k_b, (shape[1],), "bias", holder,
                                "SparseLinear")
        self.structure = jsparse.BCOO((jnp.zeros((nse,), jnp.float32), indices), shape=shape)

    def todense(self) -> jax.Array:
        """The current ``(I, O)`` matrix."""
        return jsparse.BCOO((self.weight.value, self.structure.indices), shape=self.structure.shape).todense()

    def update(self, x):
        """``x``: ``(I,)`` or ``(B, I)`` -> ``(O,)`` or ``(B, O)``."""
        return ops.sparse_matmul(x, self.weight.value, sparse_mat=self.structure, bias=value_of(self.bias))


# -- LoRA ------------------------------------------------------------------------------------------

@accepts_keywords({"in_features": "in_size", "out_features": "out_size", "lora_rank": "rank"})
class LoRA(brainstate.nn.Module):
    r"""Low-rank layer, optionally added to a base layer, through `etprop.lora_matmul`.

    .. math::

        y = \alpha\, x\, B A + b \;+\; f(x)

    :math:`B` ``(I, r)`` is the down-projection and :math:`A` ``(r, O)`` the
    up-projection; :math:`f` is the optional ``base_module`` (absent: :math:`f = 0`), the
    layer being adapted, called on the same ``x``. For an adapter that starts as a no-op
    (Hu et al. 2021), pass ``a_init=jax.nn.initializers.zeros`` (``B`` then learns after
    ``A`` has moved).

    braintrace's names: its ``lora_a`` ``(I, r)`` is ``B`` here and its ``lora_b``
    ``(r, O)`` is ``A``; its fixed scale :math:`1/r` is ``alpha=1 / rank`` here (the default
    is 1).

    Args:
      in_size, out_size: ``I`` and ``O``.
      rank: ``r``.
      alpha: static scale.
      bias: learn a bias ``(O,)`` (default no).
      b_init: initial ``B``, default LeCun normal (std ``1/sqrt(I)``).
      a_init: initial ``A``, default LeCun normal (std ``1/sqrt(r)``).
      bias_init: initial bias, default zeros.
      kernel_init: braintrace's one initialiser of both factors (instead of ``b_init`` and
        ``a_init``; each factor gets its own draw).
      base_module: :math:`f`, a callable ``x -> (..., O)`` (e.g. an `etprop.nn.Linear`
        ``(I, O)``) whose output is added; it must have the low-rank path's output shape.
        A module's parameters are this layer's (``base_module.weight``, ...): they train
        with the adapter unless held frozen (``param_type=brainstate.FakeState``).
      key: seed or PRNG key.
      param_type: the class holding ``B``, ``A`` and ``bias`` (see the module doc).

    Shapes: ``x`` ``(I,)`` or ``(batch, I)`` -> ``(O,)`` or ``(batch, O)``.

    States: none (a base module's states are its own). Parameters: ``B``, ``A``, ``bias``.

    Online learning: ``A`` and ``bias`` have per-parameter traces under D-RTRL (each
    element drives one output); every element of ``B`` drives all outputs through the
    rank bottleneck, so ``B`` gets the factorised trace under every algorithm. A base
    module built on ETP operators is traced as it would be alone (its output reaches the
    same state through the sum).

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> adapter = etprop.nn.LoRA(6, 5, rank=2, alpha=0.5)          # B (6, 2), A (2, 5)
        >>> adapter(jnp.ones((3, 6))).shape
        (3, 5)
        >>> base = etprop.nn.Linear(6, 5)
        >>> tuned = etprop.nn.LoRA(6, 5, rank=2, base_module=base)      # base output + low-rank update
        >>> tuned(jnp.ones((3, 6))).shape
        (3, 5)
    """

    def __init__(self, in_size: int, out_size: int, *more, rank: int | None = None, alpha: float = 1.0,
                 bias: bool = False, b_init: Init = None, a_init: Init = None, bias_init: Init = None, key=None,
                 name: str | None = None, base_module=None, kernel_init: Init = None, param_type=None):
        if more:  # braintrace's positional order is (in_features, lora_rank, out_features): refuse to guess
            raise ArgumentError(f"LoRA takes two positional sizes, LoRA(in_size, out_size, rank=...); got "
                                f"{(in_size, out_size) + more}. braintrace's positional order is (in_features, "
                                f"lora_rank, out_features): pass the sizes by keyword (in_features=, out_features=, "
                                f"lora_rank= are accepted)")
        if rank is None:
            raise ArgumentError("LoRA needs rank= (braintrace's lora_rank=)")
        if kernel_init is not None:
            if b_init is not None or a_init is not None:
                raise ArgumentError("LoRA: pass kernel_init= (braintrace's initialiser of both factors) or "
                                    "b_init=/a_init=, not both")
            b_init = a_init = kernel_init
        if base_module is not None and not callable(base_module):
            raise ArgumentError(f"LoRA: 'base_module' must be callable, x -> (..., out_size) (e.g. "
                                f"etprop.nn.Linear(in_size, out_size)), got {type(base_module).__name__}")
        super().__init__(name=name)
        self.in_features = positive_int(in_size, "in_size")
        self.out_features = positive_int(out_size, "out_size")
        self.rank = positive_int(rank, "rank")
        self.in_size, self.out_size = (self.in_features,), (self.out_features,)
        self.alpha = float(alpha)
        self.base_module = base_module
        holder = param_holder(param_type, "LoRA")
        k_b, k_a, k_bias = split_keys(key, 3)
        self.B = new_param(holder, init_array(LECUN if b_init is None else b_init, k_b,
                                              (self.in_features, self.rank), "B"), "LoRA", "B")
        self.A = new_param(holder, init_array(LECUN if a_init is None else a_init, k_a,
                                              (self.rank, self.out_features), "A"), "LoRA", "A")
        self.bias = maybe_param(bias, ZEROS if bias_init is None else bias_init, k_bias,
                                (self.out_features,), "bias", holder, "LoRA")

    def update(self, x):
        """``x``: ``(I,)`` or ``(B, I)`` -> ``(O,)`` or ``(B, O)``: the low-rank path plus
        ``base_module(x)``."""
        y = ops.lora_matmul(x, self.B.value, self.A.value, alpha=self.alpha, bias=value_of(self.bias))
        if self.base_module is None:
            return y
        base = self.base_module(x)
        if tuple(u.math.shape(base)) != tuple(u.math.shape(y)):
            raise ArgumentError(f"LoRA: base_module returned shape {tuple(u.math.shape(base))} for an input of "
                                f"shape {tuple(u.math.shape(x))}, expected {tuple(u.math.shape(y))} (the low-rank "
                                f"path's output); give a base layer ({self.in_features} -> {self.out_features})")
        return y + base


# -- GroupedLinear ---------------------------------------------------------------------------------

@accepts_keywords({"in_features": "in_size", "out_features": "out_size"})
class GroupedLinear(brainstate.nn.Module):
    r"""``G`` independent dense layers (a block-diagonal weight) through `etprop.grouped_matmul`.

    .. math::

        y[g, :] = x[g, :]\, W[g] + b[g]

    Args:
      num_groups: ``G``.
      in_size, out_size: ``I`` and ``O`` per group.
      bias: learn a bias ``(G, O)``.
      w_init: initial weight ``(G, I, O)``, default LeCun normal per group (std ``1/sqrt(I)``).
      b_init: initial bias, default zeros.
      key: seed or PRNG key.
      param_type: the class holding ``weight`` and ``bias`` (see the module doc).

    Shapes: ``x`` ``(G, I)`` or ``(B, G, I)`` -> ``(G, O)`` or ``(B, G, O)``.

    States: none. Parameters: ``weight`` ``(G, I, O)``, ``bias`` ``(G, O)``.

    Online learning: ``W[g, i, o]`` drives output ``(g, o)`` only: D-RTRL keeps a
    per-parameter trace when ``y`` drives a hidden state of shape ``(G, O)``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> layer = etprop.nn.GroupedLinear(3, 4, 5)              # 3 groups, (4 -> 5) each
        >>> layer(jnp.ones((2, 3, 4))).shape                      # (B, G, I) -> (B, G, O)
        (2, 3, 5)
    """

    def __init__(self, num_groups: int, in_size: int, out_size: int, bias: bool = True, *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None, param_type=None):
        super().__init__(name=name)
        self.num_groups = positive_int(num_groups, "num_groups")
        self.in_features = positive_int(in_size, "in_size")
        self.out_features = positive_int(out_size, "out_size")
        self.in_size = (self.num_groups, self.in_features)
        self.out_size = (self.num_groups, self.out_features)
        k_w, k_b = split_keys(key, 2)
        init = jax.nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)) if w_init is None \
            else w_init
        holder = param_holder(param_type, "GroupedLinear")
        w_shape = (self.num_groups, self.in_features, self.out_features)
        self.weight = new_param(holder, init_array(init, k_w, w_shape, "weight"), "GroupedLinear", "weight")
        self.bias = maybe_param(bias, bias_init(b_init, self.weight.value), k_b, self.out_size, "bias", holder,
                                "GroupedLinear")

    def update(self, x):
        return ops.grouped_matmul(x, self.weight.value, value_of(self.bias))
