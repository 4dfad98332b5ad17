"""`etprop.nn` takes the ecosystem's initialisers and units, and serves as a projection's comm."""

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import brainpy.state as bps

import etprop
from tests.conftest import bptt_reference, rel_err
from tests.ecosystem.models import mse


def test_braintools_initialiser_with_unit_gives_a_quantity_parameter():
    init = braintools.init.KaimingNormal(scale=2.0, unit=u.mS)
    a = etprop.nn.Linear(8, 5, w_init=init, key=3)
    b = etprop.nn.Linear(8, 5, w_init=init, key=3)
    assert u.get_unit(a.weight.value) == u.mS and a.weight.value.shape == (8, 5)
    np.testing.assert_array_equal(u.get_mantissa(a.weight.value), u.get_mantissa(b.weight.value))  # keyed
    assert u.get_unit(a.bias.value) == u.mS and not np.any(u.get_mantissa(a.bias.value))  # bias in w's unit
    c = etprop.nn.Linear(8, 5, w_init=init, key=4)
    assert not np.allclose(u.get_mantissa(a.weight.value), u.get_mantissa(c.weight.value))
    y = a(jnp.ones((2, 8)))
    assert u.get_unit(y) == u.mS and y.shape == (2, 5)


@pytest.mark.parametrize("init,unit", [
    (braintools.init.Normal(0.0, 0.3), u.UNITLESS),
    (braintools.init.Constant(0.5 * u.mV), u.mV),
    (jnp.ones((4, 3)) * u.nA, u.nA),
    (np.full((4, 3), 0.2), u.UNITLESS),
    (jax.nn.initializers.orthogonal(), u.UNITLESS),
])
def test_every_kind_of_initialiser(init, unit):
    layer = etprop.nn.Linear(4, 3, w_init=init, b_init=braintools.init.ZeroInit(unit=u.get_unit(init) if
                                                                              isinstance(init, u.Quantity) else unit),
                             key=0)
    w = layer.weight.value
    assert w.shape == (4, 3) and u.get_unit(w) == unit
    assert u.get_mantissa(w).dtype == jnp.zeros(()).dtype


def test_initialiser_errors_name_the_parameter():
    with pytest.raises(etprop.ArgumentError, match=r"'weight' has shape \(2, 3\), expected \(4, 3\)"):
        etprop.nn.Linear(4, 3, w_init=jnp.ones((2, 3)) * u.mS)
    with pytest.raises(etprop.ArgumentError, match="initialiser of 'weight' failed"):
        etprop.nn.Linear(4, 3, w_init=lambda shape: jnp.ones(shape))  # neither convention


def test_other_layers_take_braintools_initialisers():
    conv = etprop.nn.Conv1d(2, 4, 3, w_init=braintools.init.XavierNormal(unit=u.mS), key=0)
    assert u.get_unit(conv.weight.value) == u.mS and u.get_unit(conv.bias.value) == u.mS
    assert u.get_unit(conv(jnp.ones((1, 6, 2)))) == u.mS
    grouped = etprop.nn.GroupedLinear(2, 3, 4, w_init=braintools.init.Normal(0. * u.mV, 1. * u.mV), key=0)
    assert u.get_unit(grouped.weight.value) == u.mV
    signed = etprop.nn.Linear(3, 2, sign=jnp.array([[1., -1.]] * 3), w_init=braintools.init.Normal(0. * u.mS, 1. * u.mS))
    assert np.all(u.get_mantissa(signed.effective_weight)[:, 1] <= 0)


class LinearComm(brainstate.nn.Module):
    """`etprop.nn.Linear` (braintools initialiser, mS) as the comm of an AlignPostProj with a delay."""

    def __init__(self, delay):
        super().__init__()
        self.neu = bps.LIF(10, tau=10 * u.ms, V_th=1.0 * u.mV)
        comm = etprop.nn.Linear(6, 10, w_init=braintools.init.KaimingNormal(scale=3.0, unit=u.mS))
        self.proj = bps.AlignPostProj(comm=comm, syn=bps.Expon(10, tau=5 * u.ms), out=bps.CUBA(), post=self.neu,
                                      delay=delay)
        self.out = etprop.nn.Linear(10, 2, w_init=braintools.init.Normal(0.0, 0.5))

    def update(self, x):
        self.proj(x)
        return self.out(self.neu())


@pytest.mark.parametrize("delay", [None, 2.0 * u.ms])
def test_nn_linear_as_projection_comm_learns_exactly(precision64, delay):
    xs = (jax.random.uniform(jax.random.key(0), (16, 6)) < 0.3).astype(float)
    ys = jnp.ones((16, 2))
    with brainstate.environ.context(dt=1.0 * u.ms):
        def build():
            brainstate.random.seed(1)
            m = LinearComm(delay)
            brainstate.nn.init_all_states(m)
            return m
        ref, _ = bptt_reference(build(), xs, ys, mse, dt=1.0 * u.ms)
        learner = etprop.compile(build(), etprop.D_RTRL, xs[0])
        grads, _ = learner.etrace_grad(xs, ys, mse)
    assert {r.leaf_name for r in learner.graph.relations} == {"proj.comm.weight", "proj.comm.bias"}
    assert u.get_unit(grads["proj.comm.weight"]) == u.mS
    for k in ref:
        assert float(jnp.max(jnp.abs(u.get_mantissa(ref[k])))) > 0, k
    assert max(rel_err(grads[k], ref[k]) for k in ref) <= 1e-6
    if delay is not None:
        assert any("delay" in n for g in learner.graph.groups for n in g.names)
        assert any("write_ptr" in n for n, _ in learner.graph.carried)
