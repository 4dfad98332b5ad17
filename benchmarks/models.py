"""Benchmark workloads: a feed-forward LIF layer with an exponential synapse and a linear
readout (``lif``), and a GRU with dense recurrence and a linear readout (``gru``).

Each network is written twice: once with ``etprop.matmul`` (for etprop's learners and the
forward-only floor) and once with ``braintrace.matmul`` (for braintrace's learners), with the
same initial weights for a given seed.

``lif``: per step, with ``g`` the synaptic current and ``v`` the membrane potential (one hidden
group, S=2)::

    g' = ds * g + x @ W + b
    v  = dm * v + g'
    s  = spike(v - 1)                 (Heaviside, fast-sigmoid surrogate)
    v' = v - s
    out = (tanh(v') + s) @ W_out      (plain matmul: learned by the direct gradient only)

``gru``: per step, gates as in ``tests/algorithms/models.py`` ``DenseGRU`` (each gate's weight
acts on the concatenated input and hidden state, i.e. holds the input and the recurrent
weights; plus a bias)::

    xh  = [x, h]
    z   = sigmoid(xh @ Wz + bz)
    r   = sigmoid(xh @ Wr + br)
    c   = tanh([x, r * h] @ Wh + bh)
    h'  = (1 - z) * h + z * c
    out = h' @ W_out                  (plain matmul: learned by the direct gradient only)
"""

from __future__ import annotations

import brainstate as bs
import jax
import jax.numpy as jnp

import etprop

__all__ = ["spike", "lif_step", "LIFExpSynNet", "make_braintrace_model", "mse", "init_weights",
           "gru_step", "GRUNet", "make_braintrace_gru", "xent", "init_gru_weights"]


@jax.custom_jvp
def spike(v):
    """Heaviside step with a fast-sigmoid surrogate derivative."""
    return (v > 0).astype(v.dtype)


@spike.defjvp
def _spike_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    return spike(v), dv / (1.0 + 10.0 * jnp.abs(v)) ** 2


def lif_step(w, w_out, g, v, x, *, matmul=etprop.matmul, ds=0.8, dm=0.9):
    """One step as a pure function: ``(out, g', v')``. ``w = {"weight", "bias"}``.

    The models below call it with their states; the forward-only floor scans it directly.
    """
    g = ds * g + matmul(x, w["weight"], w["bias"])
    v = dm * v + g
    s = spike(v - 1.0)
    v = v - s
    return (jnp.tanh(v) + s) @ w_out, g, v


def init_weights(n_in, n_hid, n_out, seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return {
        "weight": jax.random.normal(k[0], (n_in, n_hid)) * (1.0 / jnp.sqrt(n_in)),
        "bias": jnp.full((n_hid,), 0.05),
        "w_out": jax.random.normal(k[1], (n_hid, n_out)) * (1.0 / jnp.sqrt(n_hid)),
    }


class LIFExpSynNet(bs.nn.Module):
    """etprop version. Hidden states are created with a leading batch axis when ``batch_size`` is set."""

    def __init__(self, n_in, n_hid, n_out, batch_size=None, seed=0, tau_syn=0.8, tau_mem=0.9):
        super().__init__()
        w = init_weights(n_in, n_hid, n_out, seed)
        self.w = bs.ParamState({"weight": w["weight"], "bias": w["bias"]})
        self.w_out = bs.ParamState(w["w_out"])
        lead = () if batch_size is None else (batch_size,)
        self.g = bs.HiddenState(jnp.zeros(lead + (n_hid,)))
        self.v = bs.HiddenState(jnp.zeros(lead + (n_hid,)))
        self.ds, self.dm = tau_syn, tau_mem

    def update(self, x):
        out, self.g.value, self.v.value = lif_step(self.w.value, self.w_out.value, self.g.value, self.v.value, x,
                                                   matmul=etprop.matmul, ds=self.ds, dm=self.dm)
        return out


def make_braintrace_model(n_in, n_hid, n_out, seed=0, tau_syn=0.8, tau_mem=0.9):
    """The same network on ``braintrace.matmul`` (imported lazily: braintrace is optional)."""
    import braintrace

    class BraintraceLIFExpSynNet(bs.nn.Module):
        def __init__(self):
            super().__init__()
            w = init_weights(n_in, n_hid, n_out, seed)
            self.w = bs.ParamState({"weight": w["weight"], "bias": w["bias"]})
            self.w_out = bs.ParamState(w["w_out"])
            self.n_hid = n_hid
            self.ds, self.dm = tau_syn, tau_mem

        def init_state(self, batch_size=None, **kwargs):
            lead = () if batch_size is None else (batch_size,)
            self.g = bs.HiddenState(jnp.zeros(lead + (self.n_hid,)))
            self.v = bs.HiddenState(jnp.zeros(lead + (self.n_hid,)))

        def update(self, x):
            out, self.g.value, self.v.value = lif_step(self.w.value, self.w_out.value, self.g.value, self.v.value,
                                                       x, matmul=braintrace.matmul, ds=self.ds, dm=self.dm)
            return out

    return BraintraceLIFExpSynNet()


def mse(out, target):
    """Per-sample step loss."""
    return jnp.sum((out - target) ** 2)


# ---------------------------------------------------------------------------------------------
# GRU


GRU_GATES = ("wh", "wr", "wz")


def init_gru_weights(n_in, n_hid, n_out, seed=0):
    """``{"wh"|"wr"|"wz": {"weight": (n_in + n_hid, n_hid), "bias": (n_hid,)}, "w_out": (n_hid, n_out)}``."""
    k = jax.random.split(jax.random.key(seed), 4)
    s = 1.0 / jnp.sqrt(n_in + n_hid)
    w = {g: {"weight": jax.random.normal(ki, (n_in + n_hid, n_hid)) * s, "bias": jnp.zeros((n_hid,))}
         for g, ki in zip(GRU_GATES, k[:3])}
    w["w_out"] = jax.random.normal(k[3], (n_hid, n_out)) * (1.0 / jnp.sqrt(n_hid))
    return w


def gru_step(wz, wr, wh, w_out, h, x, *, matmul=etprop.matmul):
    """One GRU step as a pure function: ``(out, h')``; ``wz, wr, wh = {"weight", "bias"}``."""
    xh = jnp.concatenate([x, h], -1)
    z = jax.nn.sigmoid(matmul(xh, wz["weight"], wz["bias"]))
    r = jax.nn.sigmoid(matmul(xh, wr["weight"], wr["bias"]))
    c = jnp.tanh(matmul(jnp.concatenate([x, r * h], -1), wh["weight"], wh["bias"]))
    h = (1.0 - z) * h + z * c
    return h @ w_out, h


class GRUNet(bs.nn.Module):
    """etprop version of the GRU. The hidden state has a leading batch axis when ``batch_size`` is set."""

    def __init__(self, n_in, n_hid, n_out, batch_size=None, seed=0):
        super().__init__()
        w = init_gru_weights(n_in, n_hid, n_out, seed)
        self.wz, self.wr, self.wh = (bs.ParamState(w[g]) for g in ("wz", "wr", "wh"))
        self.w_out = bs.ParamState(w["w_out"])
        lead = () if batch_size is None else (batch_size,)
        self.h = bs.HiddenState(jnp.zeros(lead + (n_hid,)))

    def update(self, x):
        out, self.h.value = gru_step(self.wz.value, self.wr.value, self.wh.value, self.w_out.value, self.h.value,
                                     x, matmul=etprop.matmul)
        return out


def make_braintrace_gru(n_in, n_hid, n_out, seed=0):
    """The same GRU on ``braintrace.matmul`` (imported lazily: braintrace is optional)."""
    import braintrace

    class BraintraceGRUNet(bs.nn.Module):
        def __init__(self):
            super().__init__()
            w = init_gru_weights(n_in, n_hid, n_out, seed)
            self.wz, self.wr, self.wh = (bs.ParamState(w[g]) for g in ("wz", "wr", "wh"))
            self.w_out = bs.ParamState(w["w_out"])
            self.n_hid = n_hid

        def init_state(self, batch_size=None, **kwargs):
            lead = () if batch_size is None else (batch_size,)
            self.h = bs.HiddenState(jnp.zeros(lead + (self.n_hid,)))

        def update(self, x):
            out, self.h.value = gru_step(self.wz.value, self.wr.value, self.wh.value, self.w_out.value,
                                         self.h.value, x, matmul=braintrace.matmul)
            return out

    return BraintraceGRUNet()


def xent(logits, label):
    """Per-sample step loss: softmax cross-entropy of ``logits`` against the integer ``label``."""
    return -jnp.take(jax.nn.log_softmax(logits), label)
