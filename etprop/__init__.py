"""etprop: online training of recurrent and spiking networks in JAX by eligibility-trace propagation."""

import importlib

from etprop.algorithms import EProp, OSTLFeedforward, OSTLRecurrent, RuleConfig, ThreeFactor, rule
from etprop.algorithms import BPTT, D_RTRL, ES_D_RTRL, HybridDimVjpAlgorithm, OnlineAlgorithm, RTRL, SnAp, UORO
from etprop.algorithms import DNI, SyntheticGradient, train_synthetic_gradient
from etprop.errors import (ArgumentError, CompilationError, EtpropError, NotSupportedError, NumericalError,
                           OperandError)
from etprop.grad import GradExpon
from etprop.input_data import MultiStepData, SingleStepData
from etprop.operators import (conv, einsum, element_wise, embedding, grouped_matmul, lora_matmul, matmul,
                              sparse_matmul)
from etprop.learner import compile
from etprop.primitive import ETPPrimitive, register_primitive
from etprop.trace_state import EligibilityTrace
from etprop import nn

__version__ = "0.1.0"

__all__ = [
    # ETP operators
    "matmul", "element_wise", "conv", "sparse_matmul", "lora_matmul", "grouped_matmul", "embedding", "einsum",
    # custom primitives
    "ETPPrimitive", "register_primitive",
    # core types
    "SingleStepData", "MultiStepData", "EligibilityTrace", "GradExpon",
    # online learning
    "compile", "OnlineAlgorithm", "D_RTRL", "ES_D_RTRL", "HybridDimVjpAlgorithm", "EProp", "OSTLRecurrent",
    "OSTLFeedforward", "ThreeFactor", "SnAp", "UORO", "RTRL", "BPTT", "DNI", "SyntheticGradient",
    "train_synthetic_gradient", "RuleConfig", "rule",
    # layers
    "nn",
    # errors
    "EtpropError", "NotSupportedError", "CompilationError", "OperandError", "ArgumentError", "NumericalError",
]

# Names that are not etprop's own vocabulary -- braintrace's aliases and introspection types (for
# ports; PORTING.md lists them) and the compiler's plumbing -- stay reachable as ``etprop.X`` but
# out of ``__all__`` and the main docs.
COMPAT = {
    "ParamDimVjpAlgorithm": ("etprop.algorithms.etrace", "D_RTRL"),
    "IODimVjpAlgorithm": ("etprop.algorithms.etrace", "ES_D_RTRL"),
    "pp_prop": ("etprop.algorithms.etrace", "ES_D_RTRL"),
    "ETraceGraph": ("etprop.graph.compiler", "ETraceGraph"),
    "HiddenGroup": ("etprop.graph.compiler", "HiddenGroup"),
    "Relation": ("etprop.graph.compiler", "Relation"),
    "compile_graph": ("etprop.graph.compiler", "compile_graph"),
    "ETPCall": ("etprop.primitive", "ETPCall"),
    "get_primitive": ("etprop.primitive", "get_primitive"),
    "lookup_call": ("etprop.primitive", "lookup_call"),
    # braintrace's base classes, for isinstance checks in ports (subclassing follows etprop's hooks)
    "ETraceAlgorithm": ("etprop.algorithms.base", "OnlineAlgorithm"),
    "ETraceVjpAlgorithm": ("etprop.algorithms.base", "OnlineAlgorithm"),
    "SequenceDriverMixin": ("etprop.algorithms.drivers", "SequenceDrivers"),
}


def __getattr__(name):
    if name in COMPAT:
        module, attr = COMPAT[name]
        return getattr(importlib.import_module(module), attr)  # already imported: a dict lookup
    raise AttributeError(f"module 'etprop' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(COMPAT))
