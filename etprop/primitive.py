"""ETP primitives: marked JAX operations that the compiler can find in a jaxpr.

An ETP primitive is a forward function ``y = f(x, params)`` whose parameters should
learn online. Calling it runs the forward inside a *named* ``jax.jit``; in a jaxpr
that shows up as one ``jit`` equation whose ``name`` identifies an `ETPCall`
(the primitive, the operand tree, static options and parameter transforms).
Outside online learning the marked call is exactly the forward function: jit,
grad, jvp and vmap see an ordinary nested jit, so no JAX internal is touched.

Units: operands may be `brainunit.Quantity`; mantissas and units are split
inside the marked call, the forward sees plain arrays, and the output unit is
recombined (by default ``unit(x) * prod(unit(p) for p != 'bias')``).

A primitive may declare two optional rules used by online algorithms:

``out_to_param[name](v, params, aux, config)``
    Broadcast a per-output-position array ``v`` of shape ``(..., *y.shape)``
    (unbatched ``y``) to the shape of parameter ``name``, such that each
    parameter element picks the one output position it drives. Declaring it
    says "every element of this parameter drives at most one output position",
    which is what the per-parameter (D-RTRL) trace needs. Without it the
    parameter can only use factorised (ES-D-RTRL) traces. A rule may return
    None for calls whose options make the parameter non-diagonal.
``param_grad(x, dy, params, aux, config) -> dict``
    The pullback of the forward w.r.t. the (transformed-mantissa) parameters
    for one sample. Defaults to `jax.vjp`; override for speed.
``param_grad_sum(x, dy, params, aux, config) -> dict``
    The same summed over a leading axis that ``x`` and ``dy`` carry (the batch, or
    chunk x batch), for a parameter shared by every row. Defaults to `jax.vjp` of the
    forward vmapped over that axis; override where that would form one ``(n, |theta|)``
    product per row before the sum (`sparse_matmul`: 12x faster at batch 8).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError, OperandError

__all__ = ["ETPPrimitive", "ETPCall", "register_primitive", "get_primitive", "lookup_call", "MARK_PREFIX"]

MARK_PREFIX = "etprop__"

_PRIMITIVES: dict[str, ETPPrimitive] = {}
_CALLS: dict[int, ETPCall] = {}
_CALL_IDS: dict[tuple, int] = {}
_JITTED: dict[int, Callable] = {}
_LOCK = threading.Lock()
_COUNTER = itertools.count()


def split_unit(x):
    """``(mantissa, unit)`` of an array or quantity; plain arrays get ``Unit('1')``."""
    return u.split_mantissa_unit(x)


def _freeze(mapping: Mapping[str, Any] | None) -> tuple:
    if not mapping:
        return ()
    items = []
    for k in sorted(mapping):
        v = mapping[k]
        if isinstance(v, list):
            v = tuple(v)
        items.append((k, v))
    return tuple(items)


@dataclasses.dataclass(frozen=True, eq=False)
class ETPCall:
    """One specialisation of an ETP primitive: everything static about a call.

    The compiler maps a marked jit equation back to this object with
    `lookup_call`, then `unflatten` turns the equation's operands into
    ``(x, params, aux)``.
    """

    primitive: ETPPrimitive
    in_tree: Any
    config: tuple
    fns: tuple
    call_id: int

    @property
    def config_dict(self) -> dict:
        return dict(self.config)

    @property
    def name(self) -> str:
        return f"{MARK_PREFIX}{self.primitive.name}__{self.call_id}"

    def unflatten(self, leaves):
        """``(x, params, aux)`` from the flat operands of the marked equation."""
        return jax.tree.unflatten(self.in_tree, leaves)

    def unflatten_leaves(self, leaves):
        """`unflatten` with every operand as its bare leaf: a quantity operand's unit is a node
        of the operand tree, so plain `unflatten` of jaxpr vars (or positions) would wrap them
        in `brainunit.Quantity`; this strips that wrapper and returns the leaves themselves."""
        strip = lambda t: jax.tree.map(lambda q: u.get_mantissa(q) if isinstance(q, u.Quantity) else q, t,
                                       is_leaf=lambda q: isinstance(q, u.Quantity))
        x, params, aux = self.unflatten(leaves)
        return strip(x), {k: strip(v) for k, v in params.items()}, strip(aux)

    def operand_positions(self):
        """``(x positions, {param: position}, {aux: position})`` in the flat operand list."""
        return self.unflatten_leaves(list(range(self.in_tree.num_leaves)))

    def param_paths(self) -> tuple[str, ...]:
        """Names of the parameters this call takes, in flat-operand order."""
        x, params, aux = jax.tree.unflatten(self.in_tree, [None] * self.in_tree.num_leaves)
        return tuple(sorted(params))

    def apply(self, x, params, aux):
        """The marked computation, unjitted: transforms, unit split, forward, recombine."""
        return self.primitive._apply(x, params, aux, dict(self.fns), self.config_dict)

    def apply_mantissa(self, x, params, aux):
        """Forward on already-transformed, unit-free operands (what the rules use)."""
        return self.primitive.forward(x, params, aux, **self.config_dict)

    def out_to_param(self, name: str, v, params, aux):
        """`ETPPrimitive.out_to_param` for this call; None if ``name`` is not diagonal."""
        rule = self.primitive.out_to_param.get(name)
        return None if rule is None else rule(v, params, aux, self.config_dict)

    def transformed_params(self, params):
        """Parameters after their transforms, as mantissas in the units the forward sees.

        A ``'bias'`` is converted to the output unit, as in `apply`.
        """
        fns = dict(self.fns)
        params = {k: (fns[k](p) if fns.get(k) is not None else p) for k, p in params.items()}
        split = {k: split_unit(p) for k, p in params.items()}
        out = {k: m for k, (m, _) in split.items()}
        if "bias" in params:
            x = jax.tree.unflatten(self.in_tree, [0.0] * self.in_tree.num_leaves)[0]
            x_u = split_unit(x)[1] if x is not None else u.UNITLESS
            y_u = self.primitive._out_unit(x_u, {k: un for k, (_, un) in split.items() if k != "bias"})
            out["bias"] = _bias_in_unit(self.primitive.name, params["bias"], split["bias"][1], y_u)
        return out


class ETPPrimitive:
    """A user-definable ETP operator.

    Args:
      name: unique name, e.g. ``"matmul"``.
      forward: ``forward(x, params, aux, **config) -> y`` on plain arrays. ``params``
        is a dict of the (transformed, unit-free) trainable parameters present in
        this call, ``aux`` a dict of non-trainable array operands (e.g. sparse
        indices). A ``'bias'`` parameter, if present, arrives already converted to
        the output unit; the forward adds it.
      param_names: the parameters this primitive may take (``'bias'`` optional).
      validate: ``validate(x, params, aux, config)`` on the raw operands, before
        tracing; raise `OperandError` with a message naming the operand.
      out_unit: ``out_unit(x_unit, param_units) -> Unit``; default multiplies the
        unit of ``x`` with those of all non-bias parameters.
      out_to_param: ``{param_name: fn(v, params, aux, config)}``, see module doc.
      param_grad: ``param_grad(x, dy, params, aux, config) -> dict`` per sample.
      param_grad_sum: ``param_grad_sum(x, dy, params, aux, config) -> dict`` summed over the
        leading axis of ``x`` and ``dy``, see module doc (used by the online rules' batch sums
        for calls without parameter transforms or units).
      chunkable: whether the closed form over a chunk of steps pays for this operator. A
        dense product's pullback summed over ``K`` steps is one ``(I x K)(K x O)`` matmul, which
        is why the learners default to chunks; a gather/scatter operator's (`sparse_matmul`)
        touches every stored value once per step anyway and materialises ``(K, nse)``
        intermediates, so ``False`` makes learners on a graph with it default to per-step mode
        (the same gradients; an explicit ``closed_form_chunk`` still takes the closed form).
      doc: one line for reports.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> def forward(x, params, aux, *, scale):        # plain arrays in, plain array out
        ...     return scale * jnp.tanh(x @ params["weight"])
        >>> prim = etprop.ETPPrimitive(
        ...     "doc_scaled_tanh", forward, param_names=("weight",),
        ...     out_to_param={"weight": lambda v, p, a, c: v[..., None, :]})   # W[i, o] drives output o only
        >>> prim.bind(jnp.ones((4, 3)), {"weight": jnp.zeros((3, 2))}, scale=2.0).shape
        (4, 2)

        Register it (`register_primitive`) before compiling a model that calls it; see the
        tutorial "A custom ETP primitive".
    """

    def __init__(
        self,
        name: str,
        forward: Callable,
        *,
        param_names: tuple[str, ...] = ("weight", "bias"),
        validate: Callable | None = None,
        out_unit: Callable | None = None,
        out_to_param: Mapping[str, Callable] | None = None,
        param_grad: Callable | None = None,
        param_grad_sum: Callable | None = None,
        chunkable: bool = True,
        doc: str = "",
    ):
        if not isinstance(name, str) or not name.isidentifier():
            raise ArgumentError(f"ETP primitive name must be a Python identifier, got {name!r}")
        if not callable(forward):
            raise ArgumentError(f"ETPPrimitive {name!r}: 'forward' must be callable, forward(x, params, aux, "
                                f"**config) -> y; got {forward!r}")
        self.name = name
        self.forward = forward
        self.param_names = tuple(param_names)
        self.validate = validate
        self.out_unit = out_unit
        self.out_to_param = dict(out_to_param or {})
        self._param_grad = param_grad
        self.param_grad_sum = param_grad_sum
        if not isinstance(chunkable, bool):
            raise ArgumentError(f"ETPPrimitive {name!r}: 'chunkable' must be True or False, got {chunkable!r}")
        self.chunkable = chunkable
        self.doc = doc
        unknown = set(self.out_to_param) - set(self.param_names)
        if unknown:
            raise ArgumentError(f"out_to_param names unknown parameters {sorted(unknown)} of {name!r}; "
                                f"the parameters are param_names={list(self.param_names)}")

    def __repr__(self):
        return f"ETPPrimitive({self.name!r})"

    # -- forward ---------------------------------------------------------------------------

    def _apply(self, x, params, aux, fns, config):
        raw = params
        params = {k: (fns[k](p) if fns.get(k) is not None else p) for k, p in params.items()}
        for k in fns:  # static shapes: also raised when traced under jit
            if k in params and np.shape(params[k]) != np.shape(raw[k]):
                raise OperandError(f"{self.name}: the transform of '{k}' changed its shape from {np.shape(raw[k])} "
                                   f"to {np.shape(params[k])}; a parameter transform must be element-wise (keep "
                                   f"the shape), e.g. jnp.abs or a mask of the same shape")
        x_m, x_u = split_unit(x) if x is not None else (None, u.UNITLESS)
        split = {k: split_unit(p) for k, p in params.items()}
        p_m = {k: m for k, (m, _) in split.items()}
        units = {k: un for k, (_, un) in split.items()}
        y_u = self._out_unit(x_u, {k: un for k, un in units.items() if k != "bias"})
        if "bias" in params:
            p_m["bias"] = _bias_in_unit(self.name, params["bias"], units["bias"], y_u)
        y = self.forward(x_m, p_m, aux, **config)
        if y_u.is_unitless and y_u.factor == 1.0:
            return y
        return u.maybe_decimal(u.Quantity(y, unit=y_u))

    def _out_unit(self, x_u, core_units):
        if self.out_unit is not None:
            return self.out_unit(x_u, core_units)
        y_u = x_u
        for un in core_units.values():
            y_u = y_u * un
        return y_u

    def param_grad(self, call: ETPCall, x, dy, params, aux):
        """Per-sample pullback w.r.t. the transformed-mantissa parameters (a dict)."""
        config = call.config_dict
        if self._param_grad is not None:
            return self._param_grad(x, dy, params, aux, config)
        _, pull = jax.vjp(lambda p: self.forward(x, p, aux, **config), params)
        return pull(dy)[0]

    def bind(self, x, params: Mapping[str, Any], *, aux: Mapping[str, Any] | None = None,
             fns: Mapping[str, Callable | None] | None = None, **config):
        """Run the primitive as a marked call.

        Args:
          x: the input operand (array or quantity, or None for parameter-only ops).
          params: trainable operands by name; ``None`` values are dropped.
          aux: non-trainable array operands by name.
          fns: per-parameter transforms applied to the raw value inside the call.
          **config: static (hashable) options passed to ``forward``.
        """
        params = {k: v for k, v in params.items() if v is not None}
        unknown = set(params) - set(self.param_names)
        if unknown:
            raise OperandError(f"{self.name}: unknown parameter(s) {sorted(unknown)}; "
                               f"expected some of {list(self.param_names)}")
        aux = dict(aux or {})
        fns = {k: f for k, f in (fns or {}).items() if f is not None and k in params}
        for k, f in fns.items():
            if not callable(f):
                raise OperandError(f"{self.name}: the transform for {k!r} must be callable, got {f!r}")
        if self.validate is not None:
            self.validate(x, params, aux, config)
        operands = (x, params, aux)
        leaves, in_tree = jax.tree.flatten(operands)
        for leaf in leaves:
            if not isinstance(leaf, (jax.Array, jnp.ndarray)) and not hasattr(leaf, "dtype"):
                if not isinstance(leaf, (int, float, bool, complex)):
                    raise OperandError(f"{self.name}: operands must be arrays or quantities, got {type(leaf)}")
        call = self._specialise(in_tree, _freeze(config), _freeze(fns))
        return _jitted(call)(*leaves)

    def _specialise(self, in_tree, config: tuple, fns: tuple) -> ETPCall:
        # keyed by the primitive object, not its name: two primitives may share a name
        # (an unregistered one, or one replaced with overwrite=True)
        key = (self, in_tree, config, tuple((k, _fn_key(f)) for k, f in fns))
        with _LOCK:
            cid = _CALL_IDS.get(key)
            if cid is None:
                cid = next(_COUNTER)
                _CALL_IDS[key] = cid
                _CALLS[cid] = ETPCall(self, in_tree, config, fns, cid)
            return _CALLS[cid]


def _fn_key(fn):
    """A cache key under which equal transforms share one compiled call.

    A lambda written inside ``update`` is a new object at every trace; keyed by identity
    it would add a specialisation (and a compile) each time. Two functions with the same
    code, defaults and closure values compute the same thing, so they share a key;
    unhashable closure values (arrays) fall back to identity.
    """
    owner = getattr(fn, "__self__", None)
    if owner is not None:  # a bound method computes with its instance's attributes
        try:
            key = ("method", _fn_key(fn.__func__), owner)
            hash(key)
        except (TypeError, AttributeError):
            return fn
        return key
    code = getattr(fn, "__code__", None)
    if code is None:
        return fn
    try:
        cells = tuple(c.cell_contents for c in (fn.__closure__ or ()))
        key = (code, cells, fn.__defaults__, id(fn.__globals__))
        hash(key)
    except (TypeError, ValueError):
        return fn
    return key


def _bias_in_unit(op: str, bias, bias_unit, y_unit):
    if not bias_unit.has_same_dim(y_unit):
        raise OperandError(
            f"{op}: 'bias' has unit {bias_unit} but the output has unit {y_unit}; "
            f"give the bias in units of {y_unit} (or a compatible unit)")
    if bias_unit == y_unit:
        return split_unit(bias)[0]
    return u.Quantity(bias).to_decimal(y_unit)


def _jitted(call: ETPCall) -> Callable:
    fn = _JITTED.get(call.call_id)
    if fn is None:
        def marked(*leaves):
            return call.apply(*call.unflatten(leaves))

        marked.__name__ = marked.__qualname__ = call.name
        fn = _JITTED[call.call_id] = jax.jit(marked)
    return fn


def register_primitive(primitive: ETPPrimitive, *, overwrite: bool = False) -> ETPPrimitive:
    """Make ``primitive`` known to the compiler. Returns it, so it can decorate.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> double = etprop.register_primitive(etprop.ETPPrimitive(
        ...     "doc_double_matmul", lambda x, params, aux: 2.0 * (x @ params["weight"]),
        ...     param_names=("weight",), out_to_param={"weight": lambda v, p, a, c: v[..., None, :]}))
        >>> double.bind(jnp.ones((1, 2)), {"weight": jnp.ones((2, 3))}).tolist()
        [[4.0, 4.0, 4.0]]
        >>> etprop.register_primitive(double) is double      # the same object again: fine
        True
    """
    if not isinstance(primitive, ETPPrimitive):
        raise ArgumentError(f"register_primitive takes an etprop.ETPPrimitive, got {type(primitive).__name__}")
    if primitive.name in _PRIMITIVES and not overwrite and _PRIMITIVES[primitive.name] is not primitive:
        raise ArgumentError(f"an ETP primitive named {primitive.name!r} is already registered; "
                         f"pick another name or pass overwrite=True")
    _PRIMITIVES[primitive.name] = primitive
    return primitive


class UnknownPrimitiveError(ArgumentError, KeyError):
    """`get_primitive` of a name that is not registered: an `ArgumentError`, and a `KeyError` as before."""

    __str__ = Exception.__str__  # the message itself, not KeyError's repr of it


def get_primitive(name: str) -> ETPPrimitive:
    """The registered `ETPPrimitive` called ``name``; `UnknownPrimitiveError` lists the registered ones."""
    try:
        return _PRIMITIVES[name]
    except (KeyError, TypeError):
        raise UnknownPrimitiveError(f"no ETP primitive named {name!r}; registered: {sorted(_PRIMITIVES)}") from None


def lookup_call(eqn) -> ETPCall | None:
    """The `ETPCall` behind a jaxpr equation, or None if it is not an ETP call."""
    if eqn.primitive.name not in ("jit", "pjit"):
        return None
    name = eqn.params.get("name", "")
    if not isinstance(name, str) or not name.startswith(MARK_PREFIX):
        return None
    try:
        cid = int(name.rsplit("__", 1)[1])
    except (IndexError, ValueError):
        return None
    call = _CALLS.get(cid)
    if call is None or call.name != name:
        return None
    return call
