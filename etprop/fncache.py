"""Compiled functions cached by what they compute, not by the identity of the user's callable.

A training loop that writes ``step_fn=lambda x, y: ...`` inside the loop (as braintrace's
README does) makes a new function object at every call. Keyed by identity, each one would
trace and compile the whole sequence driver again. Two functions with the same code, the same
static closure values and the same defaults compute the same thing, so they share a key;
the *arrays* a closure captures are not part of the key but arguments of the compiled
function, so a closure whose captured array changed gives the new result without a recompile.

`split(fn)` returns ``(key, arrays, rebuild)``: ``rebuild(arrays)`` makes a function equal to
``fn`` with those arrays (tracers, inside the compiled function) in its closure cells. Closure
values that are functions are split recursively (a ``loss_fn`` used inside a ``step_fn``);
anything unhashable that is not an array keys by identity, which is always correct. Module-level
arrays a function reads through its globals are read when it is traced, as in any `jax.jit`.

`LRUCache` bounds how many compiled functions a learner keeps.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable
from typing import Any

import brainunit as u
import jax
import numpy as np

__all__ = ["split", "LRUCache"]


def _is_array(v) -> bool:
    return isinstance(v, (jax.Array, np.ndarray, u.Quantity)) and not isinstance(v, np.generic)


class _ByIdentity:
    """Key of an object that cannot be hashed by value: its identity, keeping it alive so that
    the id is not reused while the key is in a cache."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.obj is self.obj


def _static(v):
    try:
        hash(v)
        return v
    except TypeError:
        return _ByIdentity(v)


def split(fn: Callable) -> tuple[Any, list, Callable[[list], Callable]]:
    """``(key, arrays, rebuild)`` of ``fn``: see the module docstring."""
    if isinstance(fn, types.MethodType):  # a bound method computes with its instance
        key, arrays, rebuild = split(fn.__func__)
        owner = _static(fn.__self__)
        return ("method", key, owner), arrays, lambda a: types.MethodType(rebuild(a), fn.__self__)
    if not isinstance(fn, types.FunctionType) or fn.__kwdefaults__:
        return _ByIdentity(fn), [], lambda a: fn
    try:
        cells = [c.cell_contents for c in (fn.__closure__ or ())]
    except ValueError:  # a cell not assigned yet
        return _ByIdentity(fn), [], lambda a: fn
    parts, arrays, plan = [], [], []
    for v in cells:
        if _is_array(v):
            m = u.get_mantissa(v)
            parts.append(("array", jax.tree.structure(v), tuple(np.shape(m)), str(m.dtype)))
            plan.append(("array", len(arrays)))
            arrays.append(v)
        elif isinstance(v, (types.FunctionType, types.MethodType)):
            k, sub_arrays, sub_rebuild = split(v)
            parts.append(("fn", k))
            plan.append(("fn", (len(arrays), len(sub_arrays), sub_rebuild)))
            arrays.extend(sub_arrays)
        else:
            parts.append(("static", _static(v)))
            plan.append(("static", v))
    key = ("fn", fn.__code__, tuple(parts), _static(fn.__defaults__), id(fn.__globals__))

    def rebuild(new_arrays):
        values = []
        for kind, p in plan:
            if kind == "array":
                values.append(new_arrays[p])
            elif kind == "fn":
                start, n, sub_rebuild = p
                values.append(sub_rebuild(new_arrays[start:start + n]))
            else:
                values.append(p)
        g = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                               tuple(types.CellType(v) for v in values) if fn.__closure__ else None)
        g.__qualname__ = fn.__qualname__
        return g

    return key, arrays, rebuild


class LRUCache:
    """A dict of at most ``maxsize`` entries; the least recently used goes first."""

    def __init__(self, maxsize: int = 32):
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()

    def get(self, key, default=None):
        try:
            value = self._data[key]
        except KeyError:
            return default
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key, value):
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __getitem__(self, key):
        value = self._data[key]
        self._data.move_to_end(key)
        return value

    def __contains__(self, key):
        return key in self._data

    def __len__(self):
        return len(self._data)

    def items(self):
        """The entries, least recently used first (reading them does not reorder)."""
        return list(self._data.items())

    def clear(self):
        self._data.clear()
