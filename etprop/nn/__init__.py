"""Ready-made layers whose weights learn online: connection layers, rate RNN cells, spiking neurons."""

from etprop.nn.linear import Conv1d, Conv2d, Conv3d, Embedding, GroupedLinear, Linear, LoRA, SparseLinear
from etprop.nn.rnn import GRUCell, LRUCell, LSTMCell, MGUCell, MiniGRU, MinimalRNNCell, RNNCell, VanillaRNNCell
from etprop.nn import surrogate
from etprop.nn.neurons import ALIF, GIF, IF, LIF
from etprop.nn.readout import LeakyRateReadout, LeakySpikeReadout
from etprop.nn.spiking_layers import SpikingRecurrentLayer
from etprop.nn.synapses import Alpha, DualExpon, Expon

__all__ = [
    "Linear", "SparseLinear", "LoRA", "Conv1d", "Conv2d", "Conv3d", "Embedding", "GroupedLinear",
    "RNNCell", "VanillaRNNCell", "GRUCell", "MGUCell", "LSTMCell", "MinimalRNNCell", "MiniGRU", "LRUCell",
    "IF", "LIF", "ALIF", "GIF", "Expon", "Alpha", "DualExpon", "LeakyRateReadout", "LeakySpikeReadout",
    "SpikingRecurrentLayer", "surrogate",
]
