"""Small models for the algorithm tests (defined here, not in etprop.nn, so the tests pin the core)."""

import brainstate as bs
import jax
import jax.numpy as jnp

import etprop


@jax.custom_jvp
def spike(v):
    """Heaviside with a fast-sigmoid surrogate derivative."""
    return (v > 0).astype(v.dtype)


@spike.defjvp
def _spike_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    return spike(v), dv / (1.0 + 10.0 * jnp.abs(v)) ** 2


def _normal(key, shape, scale):
    return jax.random.normal(key, shape) * scale


class ElementwiseRNN(bs.nn.Module):
    """h' = sigmoid(a) * h + tanh(x W); out = h' @ W_out (plain op: not traced)."""

    def __init__(self, n_in, n_hid, n_out, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        self.w = bs.ParamState(_normal(k[0], (n_in, n_hid), 0.5))
        self.a = bs.ParamState(_normal(k[1], (n_hid,), 1.0))
        self.w_out = bs.ParamState(_normal(k[2], (n_hid, n_out), 0.5))
        self.h = bs.HiddenState(jnp.zeros(n_hid))

    def update(self, x):
        decay = etprop.element_wise(self.a.value, weight_fn=jax.nn.sigmoid)
        self.h.value = decay * self.h.value + jnp.tanh(etprop.matmul(x, self.w.value))
        return self.h.value @ self.w_out.value


class LIFExpSyn(bs.nn.Module):
    """Feed-forward LIF with an exponential synapse (group of S=2: g, v) and a linear readout of v."""

    def __init__(self, n_in, n_hid, n_out, seed=0, tau_syn=0.8, tau_mem=0.9):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        self.w = bs.ParamState({"weight": _normal(k[0], (n_in, n_hid), 1.0), "bias": jnp.full((n_hid,), 0.1)})
        self.w_out = bs.ParamState(_normal(k[2], (n_hid, n_out), 0.3))
        self.g = bs.HiddenState(jnp.zeros(n_hid))
        self.v = bs.HiddenState(jnp.zeros(n_hid))
        self.ds, self.dm = tau_syn, tau_mem

    def update(self, x):
        self.g.value = self.ds * self.g.value + etprop.matmul(x, self.w.value["weight"], self.w.value["bias"])
        v = self.dm * self.v.value + self.g.value
        s = spike(v - 1.0)
        self.v.value = v - s
        return jnp.tanh(self.v.value) @ self.w_out.value + s @ self.w_out.value


class ALIF(bs.nn.Module):
    """Adaptive LIF (S=2: v, adaptation b) fed through etprop.matmul; trainable threshold gain."""

    def __init__(self, n_in, n_hid, n_out, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        self.w = bs.ParamState(_normal(k[0], (n_in, n_hid), 1.0))
        self.beta = bs.ParamState(jnp.full((n_hid,), 0.5))
        self.w_out = bs.ParamState(_normal(k[1], (n_hid, n_out), 0.3))
        self.v = bs.HiddenState(jnp.zeros(n_hid))
        self.b = bs.HiddenState(jnp.zeros(n_hid))

    def update(self, x):
        thr = 1.0 + etprop.element_wise(self.beta.value) * self.b.value
        v = 0.9 * self.v.value + etprop.matmul(x, self.w.value)
        s = spike(v - thr)
        self.v.value = v - s * thr
        self.b.value = 0.95 * self.b.value + s
        return (self.v.value + s) @ self.w_out.value


class DenseGRU(bs.nn.Module):
    """A GRU with dense recurrence (D-RTRL is an approximation here)."""

    def __init__(self, n_in, n_hid, n_out, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 4)
        s = 1.0 / jnp.sqrt(n_in + n_hid)
        self.wz = bs.ParamState(_normal(k[0], (n_in + n_hid, n_hid), s))
        self.wr = bs.ParamState(_normal(k[1], (n_in + n_hid, n_hid), s))
        self.wh = bs.ParamState(_normal(k[2], (n_in + n_hid, n_hid), s))
        self.w_out = bs.ParamState(_normal(k[3], (n_hid, n_out), 0.5))
        self.h = bs.HiddenState(jnp.zeros(n_hid))

    def update(self, x):
        h = self.h.value
        xh = jnp.concatenate([x, h], -1)
        z = jax.nn.sigmoid(etprop.matmul(xh, self.wz.value))
        r = jax.nn.sigmoid(etprop.matmul(xh, self.wr.value))
        c = jnp.tanh(etprop.matmul(jnp.concatenate([x, r * h], -1), self.wh.value))
        self.h.value = (1 - z) * h + z * c
        return self.h.value @ self.w_out.value


def mse(out, target):
    return jnp.sum((out - target) ** 2)
