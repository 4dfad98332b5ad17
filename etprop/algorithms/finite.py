"""Finite checks that work under ``jit``, ``grad`` and ``vmap``: NaN or inf in the inputs,
parameters, hidden states, traces, outputs, losses or gradients, reported by name and step.

The switch is ``learner.check_finite`` (``etprop.compile(..., check_finite=True)``, the
default); with it off nothing below is traced, so a step costs exactly what it did.

Two ways of reporting, one vocabulary (items are ``(kind, label)`` pairs; `message`):

* **etprop's drivers** (`etrace_grad` in both conventions, `etrace_evolve`, `train_online`,
  `step`): each step or window reduces what it computed to one bool per item (`bad`,
  `flags`); the scan stacks the rows and `summarise` keeps, on device, whether any
  is set, the first bad row and that row. The driver reads the summary once per call (the one
  host sync it had before) and raises `etprop.NumericalError` naming the first bad item and its
  step (`raise_host`). In braintrace's convention the user's ``step_fn`` calls the learner
  inside the driver: the learner adds its rows to the driver's `collecting` context instead of
  reporting itself.
* **the learner called in the user's own transformation** (``learner(x)`` inside a ``jit``,
  `brainstate.transform.grad`, ``vmap``): `call_window` checks the step's inputs, parameters,
  hidden states, traces and output, and an identity custom VJP around the window checks, in
  the backward pass, the cotangent of the output (the loss's gradient) and the parameters'
  gradients. Each check is one ``lax.cond`` on the reduced flag whose true branch is a
  ``jax.debug.callback`` raising `NumericalError` (`raise_if`). ``debug.callback`` is the one
  host callback JAX lets through ``grad`` (it has a JVP rule), ``vmap`` and a custom VJP's
  forward and backward; the predicate is reduced over any vmapped axis
  (`brainstate.transform.unvmap`) so that the cond stays a cond and the callback runs only
  when something is bad. `jax.experimental.checkify` would need the user to wrap their
  function in ``checkify.checkify``; brainstate's ``jit_error_if`` passes batched operands to
  its callback under ``vmap``. JAX reports the exception when the result is materialised, as a
  ``JaxRuntimeError`` whose message ends with the line
  ``etprop.NumericalError: <what> ... at step <t> (<where>); <hint>``. Called eagerly (concrete
  values), the learner raises `NumericalError` itself; a driver called inside the user's jit
  reports its summary the same way. Not measured yet: on a GPU a cond reads its predicate on
  the host, so this path (not the drivers') may cost a round trip per call there.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import brainstate
import brainunit as u
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.vjp import zero_cotangent
from etprop.errors import NumericalError

__all__ = ["to_host", "bad", "flags", "summarise", "message", "step_text", "raise_host", "raise_if", "as_numerical_error",
           "collecting", "collector", "state_items", "state_flags", "call_window"]


def to_host(tree):
    """``jax.device_get`` of ``tree``, also of arrays that span several processes (replicated ones,
    as the drivers' summaries are: this process's copy)."""
    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return np.asarray(a.addressable_data(0))
        return jax.device_get(a)
    return jax.tree.map(one, tree)

#: what each kind of item is called, and what to check when it is the first bad one
_WHAT = {
    "input": "the inputs contain NaN or inf",
    "param": "parameter '{}' is NaN or inf",
    "hidden": "hidden state '{}' became NaN or inf",
    "trace": "the eligibility trace of '{}' became NaN or inf",
    "traces": "the learner's traces ({}) became NaN or inf",
    "output": "the model's output is NaN or inf",
    "loss": "the loss is NaN or inf",
    "cotangent": "the gradient of the loss with respect to the model's output is NaN or inf",
    "grad": "the gradient of '{}' is NaN or inf",
}
_HINT = {
    "input": "check the data",
    "param": "a diverged update? lower the learning rate or clip gradients",
    "hidden": "the dynamics diverged (check time constants, input scale and weights)",
    "trace": "the hidden states are finite, the trace recursion diverged (check the decay and the scale of "
             "the recurrent weights)",
    "traces": "the hidden states are finite, the trace recursion diverged (check the scale of the recurrent "
              "weights)",
    "output": "inputs, parameters and hidden states are finite; check the readout",
    "loss": "inputs, parameters and hidden states are finite; check the loss function (log of 0? division "
            "by 0?)",
    "cotangent": "the forward pass is finite; check the loss function's derivative (sqrt or log at 0?)",
    "grad": "the forward pass is finite; check surrogate gradients and weight transforms",
}


class _RaisedOnDevice(NumericalError):
    """`NumericalError` raised inside a JAX callback. JAX writes a callback's exception into its
    runtime error as ``<type name>: <message>``, so the name is the public one."""


_RaisedOnDevice.__name__ = "etprop.NumericalError"
_RaisedOnDevice.__qualname__ = "NumericalError"
_RaisedOnDevice.__module__ = "etprop"


def _inexact(tree):
    leaves = (u.get_mantissa(x) for x in jax.tree.leaves(tree))
    return [x for x in leaves if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


#: leaves with at least this many elements are tested by their sum (see `bad`)
SUM_TEST_SIZE = 1 << 16


def bad(tree) -> jax.Array:
    """One bool: some floating leaf of ``tree`` holds NaN or inf.

    Small leaves (inputs, hidden states, outputs, losses) are tested exactly, large ones
    (traces, gradients: at least `SUM_TEST_SIZE` elements) as ``not isfinite(sum(leaf))``: a NaN
    or inf always makes the sum NaN or inf, so nothing is missed, and finite values count only
    if their sum overflows (a mean magnitude above ``3.4e38 / 65536 = 5e33`` in float32: long
    diverged). XLA:CPU vectorises a plain sum but not ``all(isfinite(x))``, a max or a sum of a
    fused product; per step of the benchmark GRU the sum costs about a third of those.
    Half-precision leaves are summed in float32."""
    out = jnp.bool_(False)
    for x in _inexact(tree):
        if 0 < x.size < SUM_TEST_SIZE:
            out = out | ~jnp.all(jnp.isfinite(x))
        elif x.size:
            low = jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32
            out = out | ~jnp.isfinite(jnp.sum(x, dtype=jnp.float32 if low else None))
    return out


def flags(trees) -> jax.Array:
    """``(len(trees),)`` bools, `bad` of each."""
    return jnp.stack([bad(t) for t in trees]) if trees else jnp.zeros((0,), bool)


def summarise(rows) -> tuple:
    """``(any bad, first bad row, that row)`` of ``(R, n)`` bools, on device."""
    per_row = jnp.any(rows, axis=1)
    first = jnp.argmax(per_row).astype(jnp.int32)
    return jnp.any(per_row), first, rows[first]


def message(where: str | None, items, row, step: str) -> str:
    """The message for the first set item of ``row``: ``<where>: <what> at step <t>; <hint>``
    (``where`` None: ``<what> at step <t>; <hint>``), naming the others set with it."""
    hits = [i for i, b in enumerate(np.asarray(row).reshape(-1)) if b]
    kind, label = items[hits[0]]
    what = _WHAT[kind].format(label) if "{}" in _WHAT[kind] else _WHAT[kind] + (f" ({label})" if label else "")
    also = [_short(items[i]) for i in hits[1:]]
    also = f" (also non-finite there: {', '.join(dict.fromkeys(also[:6]))})" if also else ""
    head = f"{where}: " if where else ""
    return f"{head}{what} {step}; {_HINT[kind]}{also}"


def _short(item) -> str:
    kind, label = item
    names = {"input": "inputs", "output": "output", "loss": "loss", "cotangent": "loss gradient",
             "param": "parameter", "hidden": "hidden state", "trace": "trace of", "traces": "traces",
             "grad": "gradient of"}
    return f"{names[kind]} '{label}'" if label and kind not in ("input", "traces") else names[kind]


def step_text(first: int, size: int = 1, where: str | None = None) -> str:
    """``at step t``, ``at step t (in the window of steps t-u)``, ``at step t (where)``, ..."""
    notes = ([f"in the window of steps {first}-{first + size - 1}"] if size > 1 else []) + ([where] if where else [])
    return f"at step {first}" + (f" ({', '.join(notes)})" if notes else "")


def traced(tree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def raise_host(where: str, items, summary, size: int = 1) -> None:
    """Read ``summary`` (`summarise`'s triple, one row per ``size`` steps) once and raise
    `NumericalError` if any item is bad. A driver called inside the user's own transformation
    has a traced summary: then JAX raises it when the result is materialised (`raise_if`)."""
    if traced(summary):
        any_bad, first, row = summary
        raise_if(where, items, row & any_bad, first * size, size)
        return
    any_bad, first, row = to_host(summary)
    if bool(np.any(any_bad)):
        raise NumericalError(message(where, items, row, step_text(int(first) * size, size)))


# -- reporting from inside the user's transformation ----------------------------------------------


def _report(where, items, size, row, step):
    if np.any(row):
        raise _RaisedOnDevice(message(None, items, row, step_text(int(step), size, where)))


def _unvmapped(vec, step):
    """``vec`` OR-ed and ``step`` minimised over any vmapped axes (`brainstate.transform.unvmap`
    reduces a whole array to one value, so item by item)."""
    unvmap = brainstate.transform.unvmap
    row = jnp.stack([unvmap(vec[i], op="any") for i in range(vec.shape[0])])
    return row, -unvmap(-jnp.asarray(step, jnp.int32), op="max")


def raise_if(where: str, items, vec, step, size: int = 1) -> None:
    """Raise `NumericalError` naming the first set item of ``vec`` (``(len(items),)`` bools) at
    ``step``: at once for concrete values, else when the traced computation runs (a
    ``debug.callback`` in the true branch of a cond on the flag reduced over any vmap)."""
    if not items:
        return
    if not isinstance(vec, jax.core.Tracer) and not isinstance(step, jax.core.Tracer):
        if bool(np.any(vec)):
            raise NumericalError(message(None, items, vec, step_text(int(np.min(step)), size, where)))
        return
    report = functools.partial(_report, where, tuple(items), size)
    pred = brainstate.transform.unvmap(jnp.any(vec), op="any")
    jax.lax.cond(pred, lambda v, s: jax.debug.callback(report, *_unvmapped(v, s)), lambda v, s: None,
                 vec, jnp.asarray(step, jnp.int32))


_DEVICE_PREFIX = _RaisedOnDevice.__name__ + ": "


@contextlib.contextmanager
def as_numerical_error(where: str):
    """Inside, a JAX runtime error raised by `raise_if` (a learner called under a further
    transformation inside a driver's ``step_fn``, e.g. a jitted one) becomes `NumericalError`."""
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        line = next((ln for ln in reversed(str(e).splitlines()) if ln.startswith(_DEVICE_PREFIX)), None)
        if line is None:
            raise
        raise NumericalError(f"{where}: {line[len(_DEVICE_PREFIX):]}") from None


# -- the drivers' collection of the learner's own flags (braintrace's step_fn convention) ----------


_local = threading.local()


class _Collector:
    def __init__(self):
        self.trace = jax.extend.core.get_opaque_trace_state()
        self.items, self.rows = [], []

    def add(self, items, vec):
        self.items.extend(items)
        self.rows.append(vec)

    def vector(self):
        return jnp.concatenate(self.rows) if self.rows else jnp.zeros((0,), bool)


@contextlib.contextmanager
def collecting():
    """Inside, learner calls at this trace level add their flags to the yielded collector
    (``.items``, ``.vector()``) instead of reporting them."""
    stack = _local.__dict__.setdefault("stack", [])
    col = _Collector()
    stack.append(col)
    try:
        yield col
    finally:
        stack.pop()


def collector():
    """The active collector if the caller runs at the trace level it was opened at (a learner
    called under a further transformation inside ``step_fn`` reports for itself)."""
    stack = getattr(_local, "stack", None)
    if not stack:
        return None
    col = stack[-1]
    return col if jax.extend.core.get_opaque_trace_state() == col.trace else None


# -- the learner's items ---------------------------------------------------------------------------


def trace_parts(algo, traces):
    """``[(item, tree)]`` of the traces: one per relation of the trace core (its weight's name;
    other entries, such as a synthesiser's values, are not traces), else one for them all."""
    if isinstance(traces, dict) and "rel" in traces:
        rels = tuple(algo.graph.relations)
        if len(traces["rel"]) != len(rels):
            return [(("traces", type(algo).__name__), traces["rel"])]
        return [(("trace", r.leaf_name), traces["rel"][i]) for i, r in enumerate(rels)]
    return [(("traces", type(algo).__name__), traces)]


def state_items(algo, traces, params: bool = True) -> list:
    """Items of `state_flags`: each parameter leaf (unless ``params`` is False), hidden state and
    trace, in that order."""
    g = algo.graph
    return ([("param", n) for n in g.param_leaf_names] * params + [("hidden", n) for n in g.mf.hidden_names]
            + [item for item, _ in trace_parts(algo, traces)])


def state_flags(algo, p_leaves, hidden, traces) -> jax.Array:
    """`flags` of the parameter leaves, the hidden states and the traces (`state_items`)."""
    parts = [t for _, t in trace_parts(algo, traces)]
    return flags(list(p_leaves) + list(hidden) + parts)


def _grad_checked(algo, where, params, rest, step):
    """``algo.run_window(params, *rest)`` whose backward pass checks the output's cotangent and
    every parameter gradient (an identity custom VJP around the window's own)."""
    p_leaves, p_tree = jax.tree.flatten(params)
    r_leaves, r_tree = jax.tree.flatten(rest)
    items = [("cotangent", "")] + [("grad", n) for n in algo.graph.param_leaf_names]
    box = {}

    def run(pl, rl):
        res = algo.run_window(jax.tree.unflatten(p_tree, pl), *jax.tree.unflatten(r_tree, rl))
        leaves, box["tree"] = jax.tree.flatten(res)
        box["n_out"] = len(jax.tree.leaves(res[0]))
        return leaves

    @jax.custom_vjp
    def window(pl, rl, s):
        return run(pl, rl)

    def fwd(pl, rl, s):
        outs, pull = jax.vjp(lambda p: run(p, rl), pl)
        return outs, (pull, rl, s)

    def bwd(res, cts):
        pull, rl, s = res
        (grads,) = pull(cts)
        if len(grads) == len(items) - 1:
            raise_if(f"backward pass of {where}", items, flags([cts[:box["n_out"]]] + list(grads)), s)
        return list(grads), [zero_cotangent(x) for x in rl], zero_cotangent(s)

    window.defvjp(fwd, bwd)
    leaves = window(p_leaves, r_leaves, step)
    return jax.tree.unflatten(box["tree"], leaves)


def call_window(algo, params, hidden, others, traces, seq):
    """``algo.run_window`` for ``learner(x)``; with ``algo.check_finite`` the call's inputs,
    parameters, hidden states, traces and output are checked (and, outside a driver, the
    gradients in the backward pass), named, at the model's step (its clock, ``others[-1]``)."""
    if not getattr(algo, "check_finite", False):
        return algo.run_window(params, hidden, others, traces, seq)
    col = collector()
    where = f"{type(algo).__name__}(x)"
    step = others[-1]
    if col is None:
        out, h2, o2, tr2 = _grad_checked(algo, where, params, (hidden, others, traces, seq), step)
    else:
        out, h2, o2, tr2 = algo.run_window(params, hidden, others, traces, seq)
    p_leaves = [] if col is not None else jax.tree.leaves(algo.param_tuple(params))  # a driver checks them once
    items = ([("input", f"input {i}") for i in range(len(seq))] + state_items(algo, tr2, params=col is None)
             + [("output", "")])
    vec = jnp.concatenate([flags(list(seq)), state_flags(algo, p_leaves, h2, tr2), flags([out])])
    if col is not None:
        col.add(items, vec)
    else:
        raise_if(where, items, vec, step, size=jax.tree.leaves(seq)[0].shape[0])
    return out, h2, o2, tr2
