"""etprop.compile: algorithms by class, registered name or RuleConfig; states initialised for batch_size."""

import brainstate
import brainunit as u
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop.algorithms.rules import canonical_name, rule_names
from tests.algorithms.models import ElementwiseRNN

BRAINTRACE_NAMES = {"d_rtrl": etprop.D_RTRL, "pp_prop": etprop.ES_D_RTRL, "es_d_rtrl": etprop.ES_D_RTRL,
                    "esd_rtrl": etprop.ES_D_RTRL, "eprop": etprop.EProp, "e_prop": etprop.EProp,
                    "ostl_recurrent": etprop.OSTLRecurrent, "ostl_feedforward": etprop.OSTLFeedforward,
                    "uoro": etprop.UORO, "three_factor": etprop.ThreeFactor, "dni": etprop.DNI}


@pytest.mark.parametrize("name", sorted(BRAINTRACE_NAMES))
def test_braintrace_rule_names_select_the_learner(name):
    opts = {"key": 0} if name == "uoro" else {}  # UORO's estimate is random: it needs a key
    learner = etprop.compile(ElementwiseRNN(3, 4, 2), name.upper(), jnp.ones(3), **opts)
    assert type(learner) is BRAINTRACE_NAMES[name]


def test_cli_names_are_aliases_of_the_same_registry():
    assert canonical_name("ostl") == "ostl_recurrent" and canonical_name("OSTL-FF") == "ostl_feedforward"
    assert set(rule_names(aliases=False)) == set(etprop.RuleConfig.names())
    from etprop.experiment.runner import ALGOS
    assert set(ALGOS) == set(rule_names()) - {"three_factor", "dni"}  # the CLI offers neither (a modulator, a synthesiser)


def test_unknown_and_unsupported_names_are_clear_errors():
    with pytest.raises(etprop.ArgumentError, match=r"unknown rule name 'd-rtrl2'; known: \['bptt', 'd_rtrl'"):
        etprop.compile(ElementwiseRNN(3, 4, 2), "d-rtrl2", jnp.ones(3))
    with pytest.raises(etprop.ArgumentError, match="learner class.*rule name.*RuleConfig"):
        etprop.compile(ElementwiseRNN(3, 4, 2), 3, jnp.ones(3))
    with pytest.raises(etprop.ArgumentError, match="batch_size must be a positive int"):
        etprop.compile(ElementwiseRNN(3, 4, 2), "d_rtrl", jnp.ones((2, 3)), batch_size=0)


def test_rule_config_with_options():
    cfg = etprop.RuleConfig(filter="lowpass")
    learner = etprop.compile(ElementwiseRNN(3, 4, 2), cfg, jnp.ones(3), kappa=0.5)
    assert isinstance(learner, etprop.EProp) and learner.kappa == 0.5


class Cell(brainstate.nn.Module):
    """Holds its hidden state only after init_state, like braintrace's and brainpy's cells."""

    def __init__(self, n_in=3, n=4):
        super().__init__()
        self.n = n
        self.w = brainstate.ParamState(jnp.ones((n_in, n)) * 0.1)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        self.h = brainstate.HiddenState(jnp.full(lead + (self.n,), 0.5))

    def update(self, x):
        self.h.value = 0.9 * self.h.value + etprop.matmul(x, self.w.value)
        return self.h.value


def test_compile_initialises_states_for_batch_size_as_braintrace_does():
    cell = Cell()
    learner = etprop.compile(cell, etprop.D_RTRL, jnp.zeros((5, 3)), batch_size=5)
    assert cell.h.value.shape == (5, 4)
    grads, _ = learner.etrace_grad(jnp.ones((4, 5, 3)), jnp.zeros((4, 5, 4)), lambda o, y: jnp.sum((o - y) ** 2))
    assert grads["w"].shape == (3, 4)
    # unbatched states of another model get the batch axis
    cell2 = Cell()
    brainstate.nn.init_all_states(cell2)
    etprop.compile(cell2, "d_rtrl", jnp.zeros((2, 3)), batch_size=2)
    assert cell2.h.value.shape == (2, 4)


def test_compile_keeps_states_already_batched():
    cell = Cell()
    brainstate.nn.init_all_states(cell, batch_size=3)
    cell.h.value = jnp.arange(12.0).reshape(3, 4)  # a state the user set: not re-initialised
    etprop.compile(cell, etprop.D_RTRL, jnp.zeros((3, 3)), batch_size=3)
    np.testing.assert_array_equal(cell.h.value, jnp.arange(12.0).reshape(3, 4))


def test_compile_initialises_brainpy_state_models():
    import brainpy.state as bps
    with brainstate.environ.context(dt=1.0 * u.ms):
        class Net(brainstate.nn.Module):
            def __init__(self):
                super().__init__()
                self.neu = bps.LIF(4)
                self.w = brainstate.ParamState(jnp.ones((3, 4)) * u.mA)

            def update(self, x):
                self.neu(etprop.matmul(x, self.w.value))
                return self.neu.get_spike()

        net = Net()  # no init_all_states: compile does it for the batch
        learner = etprop.compile(net, "D_RTRL", jnp.zeros((2, 3)), batch_size=2)
        assert net.neu.V.value.shape == (2, 4)
        assert [r.leaf_name for r in learner.graph.relations] == ["w"]


def test_seed_verbose_and_vmap_as_braintrace(capsys):
    import braintools

    class Noisy(Cell):
        def init_state(self, batch_size=None, **kwargs):
            self.h = brainstate.HiddenState(braintools.init.param(braintools.init.Normal(0.0, 1.0), (self.n,),
                                                                  batch_size))

    a, b = Noisy(), Noisy()
    etprop.compile(a, "d_rtrl", jnp.zeros((2, 3)), batch_size=2, seed=7, verbose=1)
    assert "D_RTRL on Noisy" in capsys.readouterr().out
    etprop.compile(b, "d_rtrl", jnp.zeros((2, 3)), batch_size=2, seed=7, vmap=True)
    np.testing.assert_array_equal(a.h.value, b.h.value)  # seeded state initialisation
    u1 = etprop.compile(Cell(), "uoro", jnp.zeros(3), seed=5)  # the seed reaches UORO's key
    u2 = etprop.compile(Cell(), "uoro", jnp.zeros(3), key=5)
    xs, ys = jnp.ones((4, 3)), jnp.zeros((4, 4))
    loss = lambda o, y: jnp.sum((o - y) ** 2)
    np.testing.assert_array_equal(u1.etrace_grad(xs, ys, loss)[0]["w"], u2.etrace_grad(xs, ys, loss)[0]["w"])
    with pytest.raises(etprop.ArgumentError, match="vmap=True needs batch_size"):
        etprop.compile(Cell(), "d_rtrl", jnp.zeros((2, 3)), vmap=True)
    with pytest.raises(etprop.ArgumentError, match="verbose must be 0, 1 or 2"):
        etprop.compile(Cell(), "d_rtrl", jnp.zeros(3), verbose=3)
