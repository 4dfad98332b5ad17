"""braintrace's constructor keywords for etprop's layers, and its names that etprop spells otherwise.

A port writes ``braintrace.nn.GRUCell(in_size=3, out_size=8)``; etprop's cell takes
``num_in, num_out``. `accepts_keywords` renames such keywords before the constructor runs
(passing both spellings is an error), so one layer serves both. `ALIASES` maps braintrace's
names that are not etprop's vocabulary (its misspelt ``ValinaRNNCell``) to etprop's classes; the
package's ``__getattr__`` serves them, outside ``__all__`` (PORTING.md lists them).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping

from etprop.errors import ArgumentError

__all__ = ["accepts_keywords", "ALIASES", "FORWARDED", "forwarded"]

ALIASES = {"ValinaRNNCell": "VanillaRNNCell"}

# what braintrace.nn forwards to other libraries (deprecated there, still used by its users'
# scripts): brainstate's activations, normalisations, pooling and dropout, and the brainpy.state
# dynamics etprop has no class of its own for
FORWARDED = {
    "brainstate.nn": (
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "BatchNorm0d", "BatchNorm1d", "BatchNorm2d",
        "BatchNorm3d", "CELU", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "ELU", "Flatten", "GELU", "GLU",
        "GroupNorm", "Hardshrink", "Hardsigmoid", "Hardswish", "Hardtanh", "Identity", "LayerNorm", "LeakyReLU",
        "LogSigmoid", "LogSoftmax", "MaxPool1d", "MaxPool2d", "MaxPool3d", "Mish", "PReLU", "RMSNorm", "RReLU",
        "ReLU", "ReLU6", "SELU", "SiLU", "Sigmoid", "Softmax", "Softmax2d", "Softmin", "Softplus", "Softshrink",
        "Softsign", "SpikeBitwise", "Tanh", "Tanhshrink", "Unflatten"),
    "brainpy.state": ("STP", "STD"),
}


def forwarded(name: str):
    """The class braintrace.nn forwards ``name`` to, or None if it forwards no such name."""
    for module, names in FORWARDED.items():
        if name in names:
            try:
                mod = importlib.import_module(module)
            except ImportError:
                raise ArgumentError(f"etprop.nn.{name} is {module}.{name}, which needs {module.split('.')[0]} "
                                    f"(pip install -e '.[ecosystem]')") from None
            return getattr(mod, name)
    return None


def accepts_keywords(renames: Mapping[str, str], state_init: bool = False):
    """Class decorator: ``cls(**{braintrace_name: v})`` means ``cls(**{etprop_name: v})``.

    With ``state_init``, the class also takes braintrace's ``state_init=`` (an initialiser of
    the hidden state, see `etprop.nn.initializers.init_array`): it is set after construction and the
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
