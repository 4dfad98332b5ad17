"""Helpers shared by the tests of etprop.nn's spiking layers (neurons, synapses, readouts)."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np

import etprop
from tests.algorithms.models import mse
from tests.conftest import plain_rel_err


class FF(bs.nn.Module):
    """x -> etprop.matmul(x, w) [* unit] -> layers -> (spikes + v) @ w_out (plain, untraced)."""

    def __init__(self, n_in, n_hid, n_out, make_layers, seed=0, w_scale=2.0, in_unit=None, v_norm=None):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 2)
        self.w = bs.ParamState(jax.random.normal(k[0], (n_in, n_hid)) * w_scale)
        self.layers = make_layers()
        self.w_out = bs.ParamState(jax.random.normal(k[1], (n_hid, n_out)) * 0.5)
        self.in_unit, self.v_norm = in_unit, v_norm

    def update(self, x):
        h = etprop.matmul(x, self.w.value)
        if self.in_unit is not None:
            h = h * self.in_unit
        for layer in self.layers:
            h = layer(h)
        v = self.layers[-1].v.value
        if self.v_norm is not None:
            v = self.v_norm(v)
        return (h + jnp.tanh(v)) @ self.w_out.value


def data(n_in, n_out, T, B, seed=1, scale=1.5, offset=0.0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    lead = (T,) if B is None else (T, B)
    return (jax.random.normal(k1, lead + (n_in,)) * scale + offset, jax.random.normal(k2, lead + (n_out,)))


def grads(make, algo, xs, ys, B=None, **opts):
    model = make()
    if B is not None:
        bs.nn.init_all_states(model, batch_size=B)
    learner = etprop.compile(model, algo, xs[0], batch_size=B, **opts)
    g, loss = learner.etrace_grad(xs, ys, mse)
    return g, loss, learner


def count_spikes(make, xs, B=None):
    """Spikes emitted by the last layer of ``make()`` on ``xs`` (plain forward run)."""
    m = make()
    if B is not None:
        bs.nn.init_all_states(m, batch_size=B)
    n = 0.0
    for t in range(xs.shape[0]):
        h = etprop.matmul(xs[t], m.w.value)
        if m.in_unit is not None:
            h = h * m.in_unit
        for layer in m.layers:
            h = layer(h)
        n += float(jnp.sum(h))
    return n


def check_exact(make, B=None, T=15, n_in=4, n_out=2, **data_kw):
    xs, ys = data(n_in, n_out, T, B, **data_kw)
    g_on, l_on, learner = grads(make, etprop.D_RTRL, xs, ys, B)
    g_bp, l_bp, _ = grads(make, etprop.BPTT, xs, ys, B)
    assert np.isclose(float(l_on), float(l_bp), rtol=1e-12)
    assert plain_rel_err(g_on, g_bp) <= 1e-6, learner.report()
    assert all(float(jnp.max(jnp.abs(x))) > 0 for x in jax.tree.leaves(g_bp))
    return learner, xs
