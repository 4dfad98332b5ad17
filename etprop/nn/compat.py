"""braintrace's constructor keywords for etprop's layers, and its names that etprop spells otherwise.

A port writes ``braintrace.nn.GRUCell(in_size=3, out_size=8)``; etprop's cell takes
``num_in, num_out``. `accepts_keywords` renames such keywords before the constructor runs
(passing both spellings is an error), so one layer serves both. `ALIASES` maps braintrace's
names that are not etprop's vocabulary (its misspelt ``ValinaRNNCell``) to etprop's classes; the
package's ``__getattr__`` serves them, outside ``__all__`` (PORTING.md lists them).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping

from etprop.errors import ArgumentError

__all__ = ["accepts_keywords", "ALIASES"]

ALIASES = {"ValinaRNNCell": "VanillaRNNCell"}


def accepts_keywords(renames: Mapping[str, str], state_init: bool = False):
    """Class decorator: ``cls(**{braintrace_name: v})`` means ``cls(**{etprop_name: v})``.

    With ``state_init``, the class also takes braintrace's ``state_init=`` (an initialiser of
    the hidden state, see `etprop.nn.linear.init_array`): it is set after construction and the
    states are made again with it (``init_state()``)."""

    def wrap(cls):
        init = cls.__init__
        positional = [p.name for p in inspect.signature(init).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]  # without self

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            given = set(positional[:len(args)])
            for theirs, ours in renames.items():
                if theirs in kwargs:
                    if ours in kwargs or ours in given:
                        raise ArgumentError(f"{cls.__name__}: pass {ours}= or {theirs}= (braintrace's name for "
                                            f"it), not both")
                    kwargs[ours] = kwargs.pop(theirs)
            initial = kwargs.pop("state_init", None) if state_init else None
            init(self, *args, **kwargs)
            if initial is not None:
                self.state_init = initial
                self.init_state()

        cls.__init__ = __init__
        return cls

    return wrap
