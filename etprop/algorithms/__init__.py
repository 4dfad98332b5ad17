"""Online learning algorithms on one compiled graph."""

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.bptt import BPTT
from etprop.algorithms.dni import DNI, SyntheticGradient, train_synthetic_gradient
from etprop.algorithms.etrace import (D_RTRL, ES_D_RTRL, HybridDimVjpAlgorithm, IODimVjpAlgorithm,
                                      ParamDimVjpAlgorithm, pp_prop)
from etprop.algorithms.eprop import EProp
from etprop.algorithms.ostl import OSTLFeedforward, OSTLRecurrent
from etprop.algorithms.rtrl import RTRL
from etprop.algorithms.snap import SnAp
from etprop.algorithms.rules import RuleConfig, rule
from etprop.algorithms.three_factor import ThreeFactor
from etprop.algorithms.uoro import UORO

__all__ = ["OnlineAlgorithm", "BPTT", "D_RTRL", "ParamDimVjpAlgorithm", "ES_D_RTRL", "IODimVjpAlgorithm",
           "pp_prop", "HybridDimVjpAlgorithm", "RTRL", "SnAp", "UORO",
           "EProp", "OSTLRecurrent", "OSTLFeedforward", "ThreeFactor", "DNI", "SyntheticGradient",
           "train_synthetic_gradient", "RuleConfig", "rule"]
