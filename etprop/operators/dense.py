"""Dense ETP operators: `matmul`, `grouped_matmul`, `einsum`.

Shapes (``B`` batch, ``I`` inputs, ``O`` outputs, ``G`` groups):

================  =====================  =====================  ==================
operator          x                      weight                 y
================  =====================  =====================  ==================
matmul            (I,) or (B, I)         (I, O)                 (O,) / (B, O)
grouped_matmul    (G, I) or (B, G, I)    (G, I, O)              (G, O) / (B, G, O)
einsum            spec (+1 batch axis)   spec                   spec
================  =====================  =====================  ==================
"""

from __future__ import annotations

import jax.numpy as jnp

from etprop.errors import OperandError
from etprop.operators import _checks as C
from etprop.operators import event as _event
from etprop.primitive import ETPPrimitive, register_primitive

__all__ = ["matmul", "grouped_matmul", "einsum"]


def _add_bias(y, params):
    b = params.get("bias")
    return y if b is None else y + b


# -- matmul ---------------------------------------------------------------------------------

def _matmul_forward(x, params, aux, *, event=False):
    if event:  # config event=True: brainevent's event-driven kernel, the dense product's derivatives
        return _add_bias(_event.dense_matmul(x, params["weight"]), params)
    return _add_bias(jnp.matmul(x, params["weight"]), params)


def _matmul_validate(x, params, aux, config):
    w = params["weight"]
    C.check_rank("matmul", "x", x, (1, 2), "(in,) or (batch, in)")
    C.check_rank("matmul", "weight", w, (2,), "(in, out)")
    C.check_numeric("matmul", "x", x)
    C.check_params_float("matmul", params)
    C.check_dim("matmul", "x", C.shape_of(x)[-1], C.shape_of(w)[0], "last dimension (in)",
                shapes={"x": x, "weight": w})
    C.check_bias("matmul", params.get("bias"), C.shape_of(w)[1:])


def _matmul_param_grad(x, dy, params, aux, config):
    g = {"weight": jnp.outer(x, dy)}
    if "bias" in params:
        g["bias"] = dy
    return g


MATMUL = register_primitive(ETPPrimitive(
    "matmul", _matmul_forward,
    validate=_matmul_validate,
    out_to_param={"weight": lambda v, p, a, c: v[..., None, :], "bias": lambda v, p, a, c: v},
    param_grad=_matmul_param_grad,
    doc="y = x @ weight (+ bias)",
))


def matmul(x, weight, bias=None, *, weight_fn=None, bias_fn=None, event=False):
    """ETP matrix product ``y = x @ weight_fn(weight) + bias_fn(bias)``.

    Args:
      x: ``(I,)`` or ``(B, I)``; array or `brainunit.Quantity`.
      weight: ``(I, O)`` trainable weight.
      bias: optional ``(O,)``, in the unit of ``x * weight``.
      weight_fn, bias_fn: element-wise transforms of the raw parameters (e.g. a
        mask or ``jnp.abs`` for Dale's law); gradients are w.r.t. the raw value.
      event: compute the product with brainevent's event-driven kernel, which adds up
        the weight rows of the active inputs only (faster for sparse spikes). ``x`` must
        hold only 0 and 1 (checked when concrete; assumed under ``jit``). Values and
        gradients, w.r.t. ``x`` included, are the dense product's. A static option; needs
        ``pip install "etprop[event]"`` (numba for the CPU kernels).

    Returns:
      ``(O,)`` or ``(B, O)``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> x, w, b = jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)
        >>> etprop.matmul(x, w, b).shape            # (B, I) @ (I, O) + (O,)
        (2, 4)
        >>> etprop.matmul(x[0], w).tolist()         # unbatched: (I,) -> (O,)
        [3.0, 3.0, 3.0, 3.0]
        >>> etprop.matmul(x, w, weight_fn=jnp.abs).shape   # gradients w.r.t. the raw weight
        (2, 4)
        >>> spikes = jnp.array([[1., 0., 1.], [0., 0., 1.]])
        >>> etprop.matmul(spikes, w, event=True).tolist()   # event-driven: same values as event=False
        [[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]]
    """
    if _event.check_event("matmul", event):
        _event.require_brainevent("matmul")
        _event.check_binary("matmul", x)
        return MATMUL.bind(x, {"weight": weight, "bias": bias}, fns={"weight": weight_fn, "bias": bias_fn},
                           event=True)
    return MATMUL.bind(x, {"weight": weight, "bias": bias}, fns={"weight": weight_fn, "bias": bias_fn})


# -- grouped matmul -------------------------------------------------------------------------

def _grouped_forward(x, params, aux):
    return _add_bias(jnp.einsum("...gi,gio->...go", x, params["weight"]), params)


def _grouped_validate(x, params, aux, config):
    w = params["weight"]
    C.check_rank("grouped_matmul", "x", x, (2, 3), "(groups, in) or (batch, groups, in)")
    C.check_rank("grouped_matmul", "weight", w, (3,), "(groups, in, out)")
    C.check_numeric("grouped_matmul", "x", x)
    C.check_params_float("grouped_matmul", params)
    g, i, o = C.shape_of(w)
    if C.shape_of(x)[-2:] != (g, i):
        raise OperandError(f"grouped_matmul: 'x' has shape {C.shape_of(x)}, expected {C.shape_of(x)[:-2] + (g, i)} "
                           f"(groups, in) to match 'weight' {C.shape_of(w)} (groups, in, out)")
    C.check_bias("grouped_matmul", params.get("bias"), (g, o))


GROUPED_MATMUL = register_primitive(ETPPrimitive(
    "grouped_matmul", _grouped_forward,
    validate=_grouped_validate,
    out_to_param={"weight": lambda v, p, a, c: v[..., :, None, :], "bias": lambda v, p, a, c: v},
    doc="y[..., g, :] = x[..., g, :] @ weight[g] (+ bias[g])",
))


def grouped_matmul(x, weight, bias=None, *, weight_fn=None, bias_fn=None):
    """ETP block-diagonal product: ``G`` independent matmuls.

    Args:
      x: ``(G, I)`` or ``(B, G, I)``.
      weight: ``(G, I, O)``.
      bias: optional ``(G, O)``.

    Returns:
      ``(G, O)`` or ``(B, G, O)``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> x = jnp.ones((2, 3, 4))                  # (B, G, I): 3 groups of 4 inputs
        >>> weight = jnp.ones((3, 4, 5))             # one (I, O) matrix per group
        >>> etprop.grouped_matmul(x, weight, jnp.zeros((3, 5))).shape
        (2, 3, 5)
    """
    return GROUPED_MATMUL.bind(x, {"weight": weight, "bias": bias},
                               fns={"weight": weight_fn, "bias": bias_fn})


# -- einsum ---------------------------------------------------------------------------------

def _parse_einsum(equation: str) -> tuple[str, str, str]:
    eq = equation.replace(" ", "")
    if "->" not in eq:
        raise OperandError(f"einsum: equation {equation!r} needs an explicit output, e.g. 'i,io->o'")
    lhs, out = eq.split("->")
    ins = lhs.split(",")
    if len(ins) != 2:
        raise OperandError(f"einsum: equation {equation!r} must have exactly two operands (x, weight)")
    xs, ws = ins
    if "..." in ws:
        raise OperandError(f"einsum: the weight spec {ws!r} may not contain '...'")
    for spec in (xs.replace("...", ""), ws, out.replace("...", "")):
        if not spec.isalpha() or len(set(spec)) != len(spec):
            if spec:
                raise OperandError(f"einsum: spec {spec!r} in {equation!r} must be distinct letters")
    return xs, ws, out


def _einsum_batched(equation: str, x_ndim: int) -> tuple[str, str]:
    """``(equation, batch_letter)``; a batch letter is prepended when ``x`` has one more axis than its spec."""
    xs, ws, out = _parse_einsum(equation)
    if "..." in xs or x_ndim == len(xs):
        return f"{xs},{ws}->{out}", ""
    if x_ndim == len(xs) + 1:
        used = set(xs + ws + out)
        b = next(ch for ch in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if ch not in used)
        return f"{b}{xs},{ws}->{b}{out}", b
    raise OperandError(f"einsum: 'x' has rank {x_ndim}; spec {xs!r} expects rank {len(xs)} "
                       f"(unbatched) or {len(xs) + 1} (batched)")


def _einsum_forward(x, params, aux, *, equation, batch):
    return jnp.einsum(equation, x, params["weight"])


def _einsum_validate(x, params, aux, config):
    xs, ws, out = _parse_einsum(config["equation"])
    w = params["weight"]
    C.check_numeric("einsum", "x", x)
    C.check_params_float("einsum", params)
    if len(C.shape_of(w)) != len(ws):
        raise OperandError(f"einsum: 'weight' has shape {C.shape_of(w)}; spec {ws!r} expects rank {len(ws)}")
    missing = set(out.replace("...", "")) - set(xs + ws)
    if missing:
        raise OperandError(f"einsum: output letters {sorted(missing)} of {config['equation']!r} "
                           f"appear in neither 'x' nor 'weight'")
    x_shape = C.shape_of(x)
    pre, _, post = xs.partition("...")
    x_sizes = list(zip(pre, x_shape)) + list(zip(post, x_shape[len(x_shape) - len(post):] if post else ()))
    w_sizes = dict(zip(ws, C.shape_of(w)))
    for ch, n in x_sizes:
        if ch in w_sizes and w_sizes[ch] != n:
            raise OperandError(f"einsum: axis {ch!r} of 'x' {x_shape} has size {n} but axis {ch!r} of "
                               f"'weight' {C.shape_of(w)} has size {w_sizes[ch]} ({config['equation']!r})")


def _einsum_out_to_param(v, params, aux, config):
    """Per-sample output positions -> weight; None when a weight element drives several outputs."""
    xs, ws, out = _parse_einsum(config["equation"])
    out = out.replace(config["batch"], "", 1) if config["batch"] else out
    if "..." in out or not set(out) <= set(ws):
        return None
    n_lead = v.ndim - len(out)
    perm = [n_lead + out.index(ch) for ch in ws if ch in out]
    v = jnp.transpose(v, tuple(range(n_lead)) + tuple(perm))
    for pos, ch in enumerate(ws):
        if ch not in out:
            v = jnp.expand_dims(v, n_lead + pos)
    return v


EINSUM = register_primitive(ETPPrimitive(
    "einsum", _einsum_forward,
    param_names=("weight",),
    validate=_einsum_validate,
    out_to_param={"weight": _einsum_out_to_param},
    doc="y = einsum(equation, x, weight)",
))


def einsum(equation: str, x, weight, *, weight_fn=None):
    """Two-operand ETP einsum whose second operand is the trainable weight.

    ``x`` may carry one extra leading batch axis not named in the equation
    (``einsum('i,io->o', x_BI, w)`` works). ``'...'`` in the ``x`` spec is allowed.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
        >>> etprop.einsum("i,io->o", x, w).shape      # x's extra leading axis is the batch
        (2, 4)
        >>> etprop.einsum("ni,nio->no", jnp.ones((5, 3)), jnp.ones((5, 3, 4))).shape
        (5, 4)
    """
    if not isinstance(equation, str):
        raise OperandError(f"einsum: equation must be a string, got {type(equation)}")
    eq, batch = _einsum_batched(equation, len(C.shape_of(x)))
    return EINSUM.bind(x, {"weight": weight}, fns={"weight": weight_fn}, equation=eq, batch=batch)
