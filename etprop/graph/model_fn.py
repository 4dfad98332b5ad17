"""Turn a brainstate model's ``update`` into a pure function of explicit state values.

States are found by running ``update`` once under `brainstate.StateTraceStack`
(inside `jax.make_jaxpr`, so nothing is computed or kept) and sorted into:

* params: `brainstate.ParamState` that ``update`` reads (must not be written);
* hidden: floating `brainstate.ShortTermState` (incl. `HiddenState`) that ``update``
  writes, one array each, excluding `EligibilityTrace`;
* others: everything else it touches (random keys, counters, long-term states,
  non-float short-term states such as a boolean refractory flag), carried through
  unchanged in meaning but not differentiated.

Time: brainpy.state neurons read ``brainstate.environ``'s ``t`` (refractory periods) and
``i``. The step runs inside ``environ.context(i=i, t=i * dt)`` with ``i`` a step counter
that the model function owns (the last of the others, ``'clock'``): every driver carries
it like any other state, so each step of a scan, a window or a chunk sees its own time,
and `reset` returns it to 0. ``dt`` is the one set when the model is compiled.
"""

from __future__ import annotations

import dataclasses
import re

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp

from etprop.errors import CompilationError, NotSupportedError
from etprop.trace_state import EligibilityTrace

__all__ = ["ModelFunction", "state_paths"]


def state_paths(model) -> dict[int, str]:
    """``{id(state): 'a.b.c'}`` for every state reachable from ``model``."""
    out = {}
    for path, st in model.states().items():
        out[id(st)] = ".".join(str(p) for p in path)
    return out


def _is_random_state(st) -> bool:
    return type(st).__name__ == "RandomState"


@dataclasses.dataclass
class ModelFunction:
    """A brainstate model's step as ``f(params, hidden, others, args) -> (out, hidden', others')``.

    All value tuples are in the order of ``param_states`` / ``hidden_states`` /
    ``other_states``. ``batched_other`` marks others that carry a batch axis.
    """

    model: object
    param_states: tuple
    hidden_states: tuple
    other_states: tuple
    names: dict
    batched_other: tuple
    dt: object = None  # brainstate.environ's dt at compile time (None: not set, no 't')

    @classmethod
    def discover(cls, model, example_args: tuple, *, batched: bool = False) -> "ModelFunction":
        if not callable(getattr(model, "update", None)):
            raise CompilationError(f"{type(model).__name__} has no update(); etprop needs a brainstate "
                                   f"module whose update(*inputs) advances one time step")
        names = state_paths(model)
        record = {}
        dt = _current_dt()

        def probe(*args):
            with brainstate.StateTraceStack() as st, _time_context(jnp.zeros((), jnp.int32), dt):
                model.update(*args)
            record["states"] = list(st.states)
            record["written"] = list(st.been_writen)
            st.recovery_original_values()
            return 0

        try:
            jax.make_jaxpr(probe)(*example_args)
        except KeyError as err:
            missing = re.search(r"Key '(\w+)' not found", str(err))
            if dt is None and missing and missing.group(1) in ("t", "dt"):
                raise CompilationError(
                    f"{type(model).__name__}.update reads brainstate.environ's {missing.group(1)!r}, but no dt is "
                    f"set; "
                    f"compile inside `with brainstate.environ.context(dt=0.1 * u.ms):` (or call "
                    f"brainstate.environ.set(dt=...)) so that etprop can give every step its time t = i * dt"
                ) from None
            raise
        params, hidden, others = [], [], []
        for st, written in zip(record["states"], record["written"]):
            name = names.get(id(st), f"<{type(st).__name__} outside the model>")
            if _is_random_state(st):
                names[id(st)] = "random"
                others.append(st)
            elif isinstance(st, brainstate.ParamState):
                if written:
                    raise NotSupportedError(
                        f"ParamState '{name}' is written inside update(); parameters must stay fixed during "
                        f"a step. Keep it as a ParamState and change it outside the step (e.g. with optax), "
                        f"or make it a ShortTermState if it is part of the dynamics")
                params.append(st)
            elif (isinstance(st, brainstate.ShortTermState) and not isinstance(st, EligibilityTrace)
                  and written and _is_float_array(st.value)):
                hidden.append(st)
            else:
                others.append(st)
        batched_other = [batched and isinstance(st, brainstate.ShortTermState) and not _is_random_state(st)
                         for st in others]
        clock = brainstate.ShortTermState(jnp.zeros((), jnp.int32))
        names[id(clock)] = "clock"
        others.append(clock)
        batched_other.append(False)
        return cls(model, tuple(params), tuple(hidden), tuple(others), names, tuple(batched_other), dt)

    @property
    def clock(self):
        """The step counter ``i`` (an int32 scalar state; ``t = i * dt``)."""
        return self.other_states[-1]

    def reset_clock(self):
        self.clock.value = jnp.zeros((), jnp.int32)

    def name(self, st) -> str:
        return self.names.get(id(st), type(st).__name__)

    @property
    def param_names(self):
        return tuple(self.name(s) for s in self.param_states)

    @property
    def hidden_names(self):
        return tuple(self.name(s) for s in self.hidden_states)

    def values(self):
        """Current ``(params, hidden, others)`` values."""
        get = lambda sts: tuple(s.value for s in sts)
        return get(self.param_states), get(self.hidden_states), get(self.other_states)

    def write(self, hidden=None, others=None):
        if hidden is not None:
            for s, v in zip(self.hidden_states, hidden):
                s.value = v
        if others is not None:
            for s, v in zip(self.other_states, others):
                s.value = v

    def __call__(self, params, hidden, others, args):
        states = self.param_states + self.hidden_states + self.other_states
        with brainstate.StateTraceStack() as st:
            for s, v in zip(states, tuple(params) + tuple(hidden) + tuple(others)):
                s.value = v
            i = others[-1]
            with _time_context(i, self.dt):
                out = self.model.update(*args)
            new_hidden = tuple(s.value for s in self.hidden_states)
            new_others = tuple(s.value for s in self.other_states[:-1]) + (i + 1,)
        st.recovery_original_values()
        return out, new_hidden, new_others


def _is_float_array(v) -> bool:
    leaves = jax.tree.leaves(v, is_leaf=u.math.is_quantity)
    if len(leaves) != 1:
        return False
    m = u.get_mantissa(leaves[0])
    return hasattr(m, "dtype") and jnp.issubdtype(m.dtype, jnp.floating)


def _current_dt():
    try:
        return brainstate.environ.get_dt()
    except (KeyError, AssertionError, ValueError):
        return None


def _time_context(i, dt):
    """``environ.context(i=i, t=i * dt)`` (only ``i`` when no dt is set)."""
    if dt is None:
        return brainstate.environ.context(i=i)
    return brainstate.environ.context(i=i, t=i * dt)
