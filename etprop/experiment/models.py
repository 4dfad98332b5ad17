"""Networks for the built-in tasks, built from `etprop.nn`.

Each network maps one step's input ``(B, n_in)`` to ``(B, n_out)`` outputs (logits for a
classification task, values for a regression) and exposes ``observe()``: the arrays worth
plotting after a step (spikes and membrane potentials for spiking networks).

===========  =====================================================  =========================
``--model``  network                                                hidden states per unit
===========  =====================================================  =========================
``gru``      `GRUCell` -> `Linear` readout                          ``h``
``lif``      `SpikingRecurrentLayer` (LIF) -> `LeakyRateReadout`    ``v, z`` (+ readout ``r``)
``alif``     `SpikingRecurrentLayer` (ALIF) -> `LeakyRateReadout`   ``v, a, z`` (+ readout ``r``)
``lru``      `LRUCell` -> GELU -> `Linear` readout                  ``h_re, h_im``
===========  =====================================================  =========================

Spiking networks use ``dt = 1 ms`` (set by the caller with ``brainstate.environ``), membrane
time constant 20 ms, adaptation 200 ms and a readout time constant of 10 ms.
"""

from __future__ import annotations

import brainstate
import brainunit as u
import jax

from etprop.errors import ArgumentError
from etprop.nn import GRUCell, LeakyRateReadout, Linear, LRUCell, SpikingRecurrentLayer

__all__ = ["GRUNet", "SpikingNet", "LRUNet", "MODELS", "build_model"]


class GRUNet(brainstate.nn.Module):
    """``h_t = GRU(x_t, h_{t-1})``, ``y_t = h_t W_out + b``."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, seed: int = 0):
        super().__init__()
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.cell = GRUCell(n_in, n_hidden, key=k1)
        self.readout = Linear(n_hidden, n_out, key=k2)

    def update(self, x):
        return self.readout(self.cell(x))

    def observe(self) -> dict:
        return {"h": self.cell.h.value}


class SpikingNet(brainstate.nn.Module):
    """A recurrent LIF / ALIF layer (e-prop's network) read out by leaky integrators.

    ``z_t = neuron(x_t W_in + z_{t-1} W_rec)``, ``r_t = d r_{t-1} + (1 - d) z_t W_out``.
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, neuron: str = "lif", seed: int = 0,
                 in_scale: float = 40.0, rec_scale: float = 4.0):
        super().__init__()
        k1, k2 = jax.random.split(jax.random.key(seed))
        kw = {"tau_a": 200.0 * u.ms, "beta": 0.5} if neuron == "alif" else {}
        self.rec = SpikingRecurrentLayer(n_in, n_hidden, neuron, tau=20.0 * u.ms, in_scale=in_scale,
                                         rec_scale=rec_scale, seed=k1, **kw)
        self.readout = LeakyRateReadout(n_hidden, n_out, tau=10.0 * u.ms, seed=k2, bias=True)

    def update(self, x):
        return self.readout(self.rec(x))

    def observe(self) -> dict:
        return {"spikes": self.rec.z.value, "v": self.rec.neuron.v.value}


class LRUNet(brainstate.nn.Module):
    """A linear recurrent unit followed by a GELU and a linear readout."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, seed: int = 0):
        super().__init__()
        k1, k2 = jax.random.split(jax.random.key(seed))
        self.cell = LRUCell(n_in, n_hidden, n_hidden, skip=False, r_min=0.5, key=k1)
        self.readout = Linear(n_hidden, n_out, key=k2)

    def update(self, x):
        return self.readout(jax.nn.gelu(self.cell(x)))

    def observe(self) -> dict:
        return {"h_re": self.cell.h_re.value}


MODELS = {
    "gru": GRUNet,
    "lif": lambda n_in, n_hidden, n_out, *, seed=0: SpikingNet(n_in, n_hidden, n_out, neuron="lif", seed=seed),
    "alif": lambda n_in, n_hidden, n_out, *, seed=0: SpikingNet(n_in, n_hidden, n_out, neuron="alif", seed=seed),
    "lru": LRUNet,
}
SPIKING = frozenset({"lif", "alif"})


def build_model(name: str, n_in: int, n_hidden: int, n_out: int, *, seed: int = 0) -> brainstate.nn.Module:
    """The network ``name`` (one of `MODELS`) for one sample; the learner batches it."""
    if name not in MODELS:
        raise ArgumentError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if n_hidden < 1:
        raise ArgumentError(f"hidden size must be a positive int, got {n_hidden}")
    return MODELS[name](n_in, n_hidden, n_out, seed=seed)
