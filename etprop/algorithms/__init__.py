"""Online learning algorithms on one compiled graph."""

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.bptt import BPTT
from etprop.algorithms.etrace import (D_RTRL, ES_D_RTRL, HybridDimVjpAlgorithm, IODimVjpAlgorithm,
                                      ParamDimVjpAlgorithm, pp_prop)

__all__ = ["OnlineAlgorithm", "BPTT", "D_RTRL", "ParamDimVjpAlgorithm", "ES_D_RTRL", "IODimVjpAlgorithm",
           "pp_prop", "HybridDimVjpAlgorithm"]
