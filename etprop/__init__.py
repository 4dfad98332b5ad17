"""etprop: online training of recurrent and spiking networks in JAX by eligibility-trace propagation."""

from etprop.algorithms import EProp, OSTLFeedforward, OSTLRecurrent, RuleConfig, ThreeFactor, rule
from etprop.algorithms import (BPTT, D_RTRL, ES_D_RTRL, HybridDimVjpAlgorithm, IODimVjpAlgorithm,
                               OnlineAlgorithm, ParamDimVjpAlgorithm, RTRL, SnAp, UORO, pp_prop)
from etprop.errors import (ArgumentError, CompilationError, EtpropError, NotSupportedError, NumericalError,
                           OperandError)
from etprop.grad import GradExpon
from etprop.graph import ETraceGraph, HiddenGroup, Relation, compile_graph
from etprop.input_data import MultiStepData, SingleStepData
from etprop.operators import (conv, einsum, element_wise, embedding, grouped_matmul, lora_matmul, matmul,
                              sparse_matmul)
from etprop.learner import compile
from etprop.primitive import ETPCall, ETPPrimitive, get_primitive, lookup_call, register_primitive
from etprop.trace_state import EligibilityTrace
from etprop import nn  # noqa: E402  (layers build on everything above)

__version__ = "0.1.0"

__all__ = [
    # ETP operators
    "matmul", "element_wise", "conv", "sparse_matmul", "lora_matmul", "grouped_matmul", "embedding", "einsum",
    # custom primitives
    "ETPPrimitive", "ETPCall", "register_primitive", "get_primitive", "lookup_call",
    # core types
    "SingleStepData", "MultiStepData", "EligibilityTrace", "GradExpon",
    # online learning
    "EProp", "OSTLRecurrent", "OSTLFeedforward", "ThreeFactor", "RuleConfig", "rule",
    "compile", "OnlineAlgorithm", "D_RTRL", "ParamDimVjpAlgorithm", "ES_D_RTRL", "IODimVjpAlgorithm", "pp_prop",
    "HybridDimVjpAlgorithm", "BPTT", "RTRL", "SnAp", "UORO", "compile_graph", "ETraceGraph", "HiddenGroup",
    "Relation",
    # layers
    "nn",
    # errors
    "EtpropError", "NotSupportedError", "CompilationError", "OperandError", "ArgumentError", "NumericalError",
]
