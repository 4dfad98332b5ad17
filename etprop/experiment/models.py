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

Spiking networks read ``dt`` from ``brainstate.environ`` (``etprop train`` sets the task's
``dt``, 1 ms unless the task says otherwise); their time constants are in ms, so they do not
change with ``dt``. ``lif``: membrane time constant 20 ms, readout 10 ms. ``alif`` is the
LSNN of Bellec et al. (2020) for cue accumulation: the first half of the layer LIF neurons,
the second half adaptive (threshold ``1 + beta a``, ``a`` the spike count decaying with
``tau_a``; ``beta = 0.08`` per spike, ``tau_a = 2000 ms``, the paper's adaptation time constant,
of the order of the tasks' delays), membrane 20 ms, readout 20 ms.
"""

from __future__ import annotations

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp

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

    With ``neuron="alif"``, the last ``round(adaptive * n_hidden)`` neurons adapt (threshold
    increase ``beta`` per spike, decaying with ``tau_a``); the others have ``beta = 0``, i.e. are
    LIF neurons (one neuron group, so one hidden group for the learners).
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, *, neuron: str = "lif", seed: int = 0,
                 in_scale: float = 40.0, rec_scale: float = 4.0, tau_out: float = 10.0, tau_a: float = 2000.0,
                 beta: float = 0.08, adaptive: float = 0.5):
        super().__init__()
        k1, k2 = jax.random.split(jax.random.key(seed))
        kw = {}
        if neuron == "alif":
            n_adapt = int(round(adaptive * n_hidden))
            self.n_adaptive = n_adapt
            kw = {"tau_a": tau_a * u.ms, "beta": jnp.where(jnp.arange(n_hidden) >= n_hidden - n_adapt, beta, 0.0)}
        self.rec = SpikingRecurrentLayer(n_in, n_hidden, neuron, tau=20.0 * u.ms, in_scale=in_scale,
                                         rec_scale=rec_scale, seed=k1, **kw)
        self.readout = LeakyRateReadout(n_hidden, n_out, tau=tau_out * u.ms, seed=k2, bias=True)

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


def _spiking(neuron: str, **kw):
    """A `SpikingNet` factory; the input and recurrent weight scales are for 1 ms steps and scale
    as ``1 / dt``, so that one spike moves a membrane potential by the same amount at any ``dt``
    (the drive enters through ``1 - exp(-dt / tau)``, about ``dt / tau``)."""

    def make(n_in, n_hidden, n_out, *, seed=0, dt=1.0):
        return SpikingNet(n_in, n_hidden, n_out, neuron=neuron, seed=seed, in_scale=40.0 / dt, rec_scale=4.0 / dt,
                          **kw)

    return make


MODELS = {
    "gru": GRUNet,
    "lif": _spiking("lif"),
    "alif": _spiking("alif", tau_out=20.0),
    "lru": LRUNet,
}
SPIKING = frozenset({"lif", "alif"})


def build_model(name: str, n_in: int, n_hidden: int, n_out: int, *, seed: int = 0,
                dt: float = 1.0) -> brainstate.nn.Module:
    """The network ``name`` (one of `MODELS`) for one sample; the learner batches it. ``dt``
    (ms): the step the spiking models will run at (their weight scales follow it)."""
    if name not in MODELS:
        raise ArgumentError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if n_hidden < 1:
        raise ArgumentError(f"hidden size must be a positive int, got {n_hidden}")
    if name in SPIKING:
        return MODELS[name](n_in, n_hidden, n_out, seed=seed, dt=dt)
    return MODELS[name](n_in, n_hidden, n_out, seed=seed)
