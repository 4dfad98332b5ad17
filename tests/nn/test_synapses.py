"""etprop.nn synapses: impulse responses, units, and exact online gradients through synapse -> LIF."""

import brainstate as bs
import brainunit as u
import jax.numpy as jnp
import numpy as np
import pytest

from etprop import nn as enn
from tests.nn.conftest import FF, check_exact, count_spikes


@pytest.fixture(autouse=True)
def _dt():
    with bs.environ.context(dt=1.0):
        yield


def _impulse(syn, T):
    out = [float(syn.update(jnp.ones(1))[0])]
    out += [float(syn.update(jnp.zeros(1))[0]) for _ in range(T - 1)]
    return np.array(out)


def test_impulse_responses(x64):
    n = np.arange(12)
    np.testing.assert_allclose(_impulse(enn.Expon(1, tau=4.0), 12), np.exp(-n / 4.0), rtol=1e-12)
    # alpha: g_n = (n dt / tau) e^{-n dt / tau}, peak 1/e at n dt = tau
    g = _impulse(enn.Alpha(1, tau=3.0), 12)
    np.testing.assert_allclose(g, n / 3.0 * np.exp(-n / 3.0), rtol=1e-12, atol=1e-15)
    assert int(np.argmax(g)) == 3 and np.isclose(g.max(), np.exp(-1))
    # dual exponential: difference of exponentials, peak normalised to 1
    with bs.environ.context(dt=0.05):
        g = _impulse(enn.DualExpon(1, tau_decay=8.0, tau_rise=2.0), 300)
    t = np.arange(300) * 0.05
    t_peak = 8.0 * 2.0 / (8.0 - 2.0) * np.log(8.0 / 2.0)
    A = 1.0 / (np.exp(-t_peak / 8.0) - np.exp(-t_peak / 2.0))
    np.testing.assert_allclose(g, A * (np.exp(-t / 8.0) - np.exp(-t / 2.0)), rtol=1e-10, atol=1e-12)
    assert 0.999 < g.max() <= 1.0
    g = _impulse(enn.DualExpon(1, tau_decay=8.0, tau_rise=2.0, normalize=False), 5)
    np.testing.assert_allclose(g, np.exp(-n[:5] / 8.0) - np.exp(-n[:5] / 2.0), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="tau_rise < tau_decay"):
        enn.DualExpon(1, tau_decay=2.0, tau_rise=3.0)


def test_synapse_units_and_batch(x64):
    with bs.environ.context(dt=0.1 * u.ms):
        syn = enn.Expon(3, tau=2.0 * u.ms, unit=u.nS)
        assert u.get_unit(syn.g.value) == u.nS
        syn.update(jnp.ones(3) * u.nS)
        g = syn.update(jnp.full(3, 500.0) * u.psiemens)  # converted to nS
        assert u.get_unit(g) == u.nS
        np.testing.assert_allclose(g.to_decimal(u.nS), np.exp(-0.05) + 0.5, rtol=1e-12)
        with pytest.raises(ValueError, match="dimension"):
            syn.update(jnp.ones(3) * u.pA)
        bs.nn.init_all_states(syn, batch_size=4)
        assert syn.g.value.shape == (4, 3) and u.get_unit(syn.g.value) == u.nS
    for syn in (enn.Alpha(3), enn.DualExpon(3)):
        bs.nn.init_all_states(syn, batch_size=2)
        for st in syn.states(bs.HiddenState).values():
            assert st.value.shape == (2, 3)


SYNAPSES = {
    "expon_train_tau": lambda: [enn.Expon(6, tau=5.0, train_tau=True), enn.LIF(6, tau=10.0)],
    "alpha": lambda: [enn.Alpha(6, tau=3.0), enn.LIF(6, tau=10.0)],
    "dual_expon": lambda: [enn.DualExpon(6, tau_decay=8.0, tau_rise=2.0), enn.LIF(6, tau=10.0)],
}
# the synapse's states join the neuron's group: S = synapse states + 1
_GROUP_S = {"expon_train_tau": 2, "alpha": 3, "dual_expon": 3}


@pytest.mark.parametrize("name,B", [("expon_train_tau", None), ("alpha", 2), ("dual_expon", None)])
def test_synapse_lif_d_rtrl_equals_bptt(x64, name, B):
    make = lambda: FF(4, 6, 2, SYNAPSES[name])
    learner, xs = check_exact(make, B)
    assert count_spikes(make, xs, B) >= 5
    (grp,) = learner.graph.groups
    assert grp.num_states == _GROUP_S[name]
    traced = {r.leaf_name for r in learner.graph.relations}
    assert traced == ({"w", "layers.0.tau"} if name == "expon_train_tau" else {"w"})
