"""etprop.nn readouts: leaky rate and spiking readouts with traced weights."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop import nn as enn
from tests.conftest import plain_rel_err as _rel_err
from tests.nn.conftest import data, grads


@pytest.fixture(autouse=True)
def _dt():
    with bs.environ.context(dt=1.0):
        yield


class RateNet(bs.nn.Module):
    """x -> LeakyRateReadout (traced W) -> r @ w_out (plain)."""

    def __init__(self, **kw):
        super().__init__()
        self.ro = enn.LeakyRateReadout(4, 3, tau=5.0, seed=0, **kw)
        self.w_out = bs.ParamState(jax.random.normal(jax.random.key(5), (3, 2)))

    def update(self, x):
        return self.ro(x) @ self.w_out.value


class SpikeNet(bs.nn.Module):
    """x -> LeakySpikeReadout (traced W) -> (s + tanh(v)) @ w_out (plain)."""

    def __init__(self):
        super().__init__()
        self.ro = enn.LeakySpikeReadout(4, 3, tau=5.0, seed=0, w_init=lambda s: 2.0 * jax.random.normal(
            jax.random.key(4), s))
        self.w_out = bs.ParamState(jax.random.normal(jax.random.key(5), (3, 2)))

    def update(self, x):
        s = self.ro(x)
        return (s + jnp.tanh(self.ro.v.value)) @ self.w_out.value


def test_leaky_rate_readout_hand_computation(x64):
    ro = enn.LeakyRateReadout(4, 3, tau=5.0, seed=0, bias=True)
    ro.weight.value = {"weight": ro.weight.value["weight"], "bias": jnp.array([0.1, -0.2, 0.3])}
    xs, _ = data(4, 2, 6, None)
    d = np.exp(-1 / 5.0)
    r = np.zeros(3)
    for t in range(6):
        out = ro(xs[t])
        r = d * r + (1 - d) * (np.asarray(xs[t]) @ np.asarray(ro.weight.value["weight"]) + [0.1, -0.2, 0.3])
        np.testing.assert_allclose(out, r, rtol=1e-12)
    bs.nn.init_all_states(ro, batch_size=5)
    assert ro.r.value.shape == (5, 3)
    with pytest.raises(ValueError, match="shape"):
        enn.LeakyRateReadout(4, 3, w_init=jnp.ones((3, 4)))


@pytest.mark.parametrize("B", [None, 2])
def test_leaky_rate_readout_exact(x64, B):
    make = lambda: RateNet(bias=True, train_tau=True)
    xs, ys = data(4, 2, 12, B)
    g_on, l_on, learner = grads(make, etprop.D_RTRL, xs, ys, B)
    g_bp, l_bp, _ = grads(make, etprop.BPTT, xs, ys, B)
    assert np.isclose(float(l_on), float(l_bp), rtol=1e-12)
    assert _rel_err(g_on, g_bp) <= 1e-6
    traced = {r.leaf_name for r in learner.graph.relations}
    assert traced == {"ro.weight['weight']", "ro.weight['bias']", "ro.tau"}
    assert "w_out" in learner.graph.untraced


def test_leaky_rate_readout_es_auto_exact(x64):
    """One shared leak: ES-D-RTRL with decay_or_rank='auto' is exact for the readout weight."""
    make = lambda: RateNet()
    xs, ys = data(4, 2, 12, None)
    g_es, _, _ = grads(make, etprop.ES_D_RTRL, xs, ys, decay_or_rank="auto")
    g_bp, _, _ = grads(make, etprop.BPTT, xs, ys)
    assert _rel_err(g_es, g_bp) <= 1e-6


def test_leaky_spike_readout_exact(x64):
    xs, ys = data(4, 2, 15, None, offset=0.5)
    g_on, _, learner = grads(SpikeNet, etprop.D_RTRL, xs, ys)
    g_bp, _, _ = grads(SpikeNet, etprop.BPTT, xs, ys)
    assert _rel_err(g_on, g_bp) <= 1e-6
    assert {r.leaf_name for r in learner.graph.relations} == {"ro.weight"}
    m = SpikeNet()
    assert sum(float(jnp.sum(m.ro(xs[t]))) for t in range(15)) >= 5


class EProp(bs.nn.Module):
    """The e-prop network: recurrent ALIF layer -> leaky rate readout."""

    def __init__(self):
        super().__init__()
        self.rec = enn.SpikingRecurrentLayer(4, 8, "alif", seed=0, in_scale=4.0, rec_scale=4.0, tau=4.0,
                                             tau_a=30.0, beta=0.3)
        self.ro = enn.LeakyRateReadout(8, 2, tau=5.0, seed=1)

    def update(self, x):
        return self.ro(self.rec(x))


def test_eprop_network_relations_and_exact_readout(x64):
    xs, ys = data(4, 2, 15, 2, offset=0.5)
    g_on, _, learner = grads(EProp, etprop.D_RTRL, xs, ys, 2)
    g_bp, _, _ = grads(EProp, etprop.BPTT, xs, ys, 2)
    groups = {grp.index: set(grp.names) for grp in learner.graph.groups}
    rel = {r.leaf_name: groups[r.group] for r in learner.graph.relations}
    assert rel["rec.w_in"] == rel["rec.w_rec"] == {"rec.z", "rec.neuron.v", "rec.neuron.a"}
    assert rel["ro.weight['weight']"] == {"ro.r"}
    assert "ro.weight['weight']: traced via matmul" in learner.report().replace(" (8, 2)", "")
    # the readout's weight only reaches the loss through r's own memory: its trace is exact
    w = "ro.weight"
    assert _rel_err(g_on[w], g_bp[w]) <= 1e-6
