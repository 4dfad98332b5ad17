"""Ready-made layers whose weights learn online: connection layers, rate RNN cells, spiking neurons.

Examples:
    >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
    >>> class Net(brainstate.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.inp = etprop.nn.Linear(3, 8)          # an ETP operator: traced
    ...         self.neu = etprop.nn.LIF(8, tau=10 * u.ms)
    ...         self.out = etprop.nn.Linear(8, 2)          # a readout: exact gradient
    ...     def update(self, x):
    ...         return self.out(self.neu(self.inp(x)))
    >>> with brainstate.environ.context(dt=1.0 * u.ms):
    ...     learner = etprop.compile(Net(), etprop.D_RTRL, jnp.ones((4, 3)), batch_size=4)
    >>> learner.approximations()                        # a feed-forward layer: BPTT's gradient
    {}
"""

from etprop.nn.constrained import ScaledWSLinear, SignedWLinear
from etprop.nn.conv import Conv1d, Conv2d, Conv3d
from etprop.nn.linear import Embedding, GroupedLinear, Linear, LoRA, SparseLinear
from etprop.nn.gated import CFNCell, MiniLSTM, URLSTMCell
from etprop.nn.rnn import GRUCell, LRUCell, LSTMCell, MGUCell, MiniGRU, MinimalRNNCell, RNNCell, VanillaRNNCell
from etprop.nn import surrogate
from etprop.nn.compat import ALIASES, forwarded
from etprop.nn.neurons import ALIF, GIF, IF, LIF
from etprop.nn.readout import LeakyRateReadout, LeakySpikeReadout
from etprop.nn.spiking_layers import SpikingRecurrentLayer
from etprop.nn.synapses import Alpha, DualExpon, Expon
from etprop.nn.brainpy_style import register_signatures

__all__ = [
    "Linear", "SignedWLinear", "ScaledWSLinear", "SparseLinear", "LoRA", "Conv1d", "Conv2d", "Conv3d", "Embedding", "GroupedLinear",
    "RNNCell", "VanillaRNNCell", "GRUCell", "MGUCell", "LSTMCell", "MinimalRNNCell", "MiniGRU", "MiniLSTM", "CFNCell",
    "URLSTMCell", "LRUCell",
    "IF", "LIF", "ALIF", "GIF", "Expon", "Alpha", "DualExpon", "LeakyRateReadout", "LeakySpikeReadout",
    "SpikingRecurrentLayer", "surrogate",
]

register_signatures()  # IF ... DualExpon called with brainpy.state's signature build its models


def __getattr__(name):
    """braintrace's names that etprop spells otherwise (`etprop.nn.compat.ALIASES`) and what
    braintrace.nn forwards to brainstate.nn and brainpy.state (`etprop.nn.compat.FORWARDED`):
    reachable for ports, not part of ``__all__``."""
    if name in ALIASES:
        return globals()[ALIASES[name]]
    cls = forwarded(name)  # braintrace.nn's forwards to brainstate.nn / brainpy.state
    if cls is not None:
        return cls
    raise AttributeError(f"module 'etprop.nn' has no attribute {name!r}")
