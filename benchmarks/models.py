"""Benchmark networks, each written ONCE and run by etprop and by braintrace.

A network takes the library as an argument (``lib=etprop`` or ``lib=braintrace``) and uses
``lib.matmul`` for the weights learned online; nothing else differs. The same seed gives the
same initial weights under both. Hidden states are made by ``init_state(batch_size)``, which
``braintrace.compile`` calls itself (``brainstate.nn.init_all_states``) and the constructor calls
when given ``batch_size`` (``etprop.compile`` uses the states the model already has).

``LIFNet`` (workloads ``lif`` and ``deep``): ``n_layers`` feed-forward layers of Linear +
LIF; layer ``k`` gets the spikes of layer ``k - 1`` (layer 0 the input). Per step and layer,
with ``v`` the membrane potential (one hidden state per neuron, S = 1)::

    v  = dm * v + lib.matmul(x, W, b)
    s  = spike(v - 1)                 (Heaviside, fast-sigmoid surrogate)
    v' = v - s                        (reset by subtraction)
    out = tanh(v'_last) @ W_out       (plain matmul: learned by the direct gradient only)

One layer is a diagonal model (each hidden state depends only on itself), on which D-RTRL is
exact; the readout reads the hidden state ``v'``. Both matter for the etprop / braintrace
equality check: braintrace 0.2.6's D-RTRL matches BPTT here, but not on an LIF layer with an
exponential synapse (S = 2 states per neuron; 20-25 % max rel diff on ``W`` in float64).

``GRUNet`` (workload ``gru``): gates as in ``tests/algorithms/models.py`` ``DenseGRU``; each
gate's weight acts on ``[x, h]`` (input and recurrent weights in one matrix, plus a bias)::

    z   = sigmoid(lib.matmul([x, h], Wz, bz))
    r   = sigmoid(lib.matmul([x, h], Wr, br))
    c   = tanh(lib.matmul([x, r * h], Wh, bh))
    h'  = (1 - z) * h + z * c
    out = h' @ W_out                  (plain matmul)
"""

from __future__ import annotations

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["spike", "LIFNet", "GRUNet", "mse", "xent", "make_model"]


@jax.custom_jvp
def spike(v):
    """Heaviside step with a fast-sigmoid surrogate derivative."""
    return (v > 0).astype(v.dtype)


@spike.defjvp
def _spike_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    return spike(v), dv / (1.0 + 10.0 * jnp.abs(v)) ** 2


def _normal(rng, shape, scale, dtype):
    return jnp.asarray(rng.standard_normal(shape) * scale, dtype)


def _lib(lib):
    if lib is None:
        import etprop
        return etprop
    return lib


class LIFNet(bs.nn.Module):
    """``n_layers`` feed-forward LIF layers of ``n_hid`` units and a linear readout (see module doc)."""

    def __init__(self, n_in, n_hid, n_out, *, lib=None, n_layers=1, batch_size=None, seed=0, dtype=jnp.float32,
                 tau_mem=0.9):
        super().__init__()
        self.matmul = _lib(lib).matmul
        rng = np.random.default_rng(seed)  # numpy: no XLA compile per new shape
        sizes = [n_in] + [n_hid] * n_layers
        gain = lambda i: (1.0 if i == 0 else 4.0) / sizes[i] ** 0.5  # spikes in: sparser, larger weights
        self.layers = [bs.ParamState({"weight": _normal(rng, (sizes[i], n_hid), gain(i), dtype),
                                      "bias": jnp.full((n_hid,), 0.05, dtype)}) for i in range(n_layers)]
        self.w_out = bs.ParamState(_normal(rng, (n_hid, n_out), 1.0 / n_hid ** 0.5, dtype))
        self.n_hid, self.n_layers, self.dtype = n_hid, n_layers, dtype
        self.dm = tau_mem
        if batch_size is not None:
            self.init_state(batch_size)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        zeros = lambda: jnp.zeros(lead + (self.n_hid,), self.dtype)
        self.v = [bs.HiddenState(zeros()) for _ in range(self.n_layers)]

    def update(self, x):
        for w, v in zip(self.layers, self.v):
            vv = self.dm * v.value + self.matmul(x, w.value["weight"], w.value["bias"])
            x = spike(vv - 1.0)
            v.value = vv - x
        return jnp.tanh(self.v[-1].value) @ self.w_out.value


class GRUNet(bs.nn.Module):
    """A GRU with dense recurrence and a linear readout (see module doc)."""

    GATES = ("wz", "wr", "wh")

    def __init__(self, n_in, n_hid, n_out, *, lib=None, batch_size=None, seed=0, dtype=jnp.float32):
        super().__init__()
        self.matmul = _lib(lib).matmul
        rng = np.random.default_rng(seed)
        self.wz, self.wr, self.wh = (
            bs.ParamState({"weight": _normal(rng, (n_in + n_hid, n_hid), 1.0 / (n_in + n_hid) ** 0.5, dtype),
                           "bias": jnp.zeros((n_hid,), dtype)}) for _ in range(3))
        self.w_out = bs.ParamState(_normal(rng, (n_hid, n_out), 1.0 / n_hid ** 0.5, dtype))
        self.n_hid, self.dtype = n_hid, dtype
        if batch_size is not None:
            self.init_state(batch_size)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        self.h = bs.HiddenState(jnp.zeros(lead + (self.n_hid,), self.dtype))

    def update(self, x):
        mm = self.matmul
        h = self.h.value
        xh = jnp.concatenate([x, h], -1)
        z = jax.nn.sigmoid(mm(xh, self.wz.value["weight"], self.wz.value["bias"]))
        r = jax.nn.sigmoid(mm(xh, self.wr.value["weight"], self.wr.value["bias"]))
        c = jnp.tanh(mm(jnp.concatenate([x, r * h], -1), self.wh.value["weight"], self.wh.value["bias"]))
        self.h.value = (1.0 - z) * h + z * c
        return self.h.value @ self.w_out.value


def make_model(kind: str, n_in, n_hid, n_out, *, lib=None, batch_size=None, dtype=jnp.float32, n_layers=1):
    """``kind`` in ``lif`` / ``gru``; the same call for both libraries."""
    if kind == "lif":
        return LIFNet(n_in, n_hid, n_out, lib=lib, n_layers=n_layers, batch_size=batch_size, dtype=dtype)
    if kind == "gru":
        return GRUNet(n_in, n_hid, n_out, lib=lib, batch_size=batch_size, dtype=dtype)
    raise ValueError(kind)


def mse(out, target):
    """Per-sample step loss: squared error."""
    return jnp.sum((out - target) ** 2)


def xent(logits, label):
    """Per-sample step loss: softmax cross-entropy of ``logits`` against the integer ``label``."""
    return -jnp.take(jax.nn.log_softmax(logits), label)
