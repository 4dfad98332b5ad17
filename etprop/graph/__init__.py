"""The graph compiler: hidden states, hidden groups and weight-to-hidden relations of a model step."""

from etprop.graph.compiler import ETraceGraph, HiddenGroup, Relation, compile_graph
from etprop.graph.model_fn import ModelFunction

__all__ = ["ETraceGraph", "HiddenGroup", "Relation", "compile_graph", "ModelFunction"]
