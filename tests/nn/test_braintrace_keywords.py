"""etprop.nn takes braintrace's constructor keywords and names, meaning the same thing."""

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop


@pytest.mark.parametrize("name", ["VanillaRNNCell", "GRUCell", "MGUCell", "LSTMCell", "MinimalRNNCell", "MiniGRU"])
def test_cells_take_in_size_out_size_and_state_init(name):
    cls = getattr(etprop.nn, name)
    a = cls(in_size=3, out_size=5, key=0)
    b = cls(3, 5, key=0)
    assert (a.num_in, a.num_out) == (b.num_in, b.num_out) == (3, 5)
    for (pa, sa), (pb, sb) in zip(a.states(brainstate.ParamState).items(), b.states(brainstate.ParamState).items()):
        assert pa == pb
        np.testing.assert_array_equal(sa.value, sb.value)
    c = cls(3, 5, state_init=jnp.full((5,), 0.25), key=0)
    np.testing.assert_allclose(c.h.value, 0.25)
    brainstate.nn.init_all_states(c, batch_size=2)
    assert c.h.value.shape == (2, 5) and np.allclose(c.h.value, 0.25)
    with pytest.raises(etprop.ArgumentError, match="not both"):
        cls(3, 5, in_size=3)


def test_layer_keywords():
    g = etprop.nn.GroupedLinear(2, in_features=3, out_features=4, key=0)
    assert g.weight.value.shape == (2, 3, 4)
    lora = etprop.nn.LoRA(in_features=6, out_features=4, lora_rank=2, key=0)
    assert lora.B.value.shape == (6, 2) and lora.A.value.shape == (2, 4)
    emb = etprop.nn.Embedding(10, embedding_size=3, key=0)
    assert emb.weight.value.shape == (10, 3)
    lru = etprop.nn.LRUCell(d_model=3, d_hidden=5, key=0)
    assert (lru.num_in, lru.state_size, lru.num_out) == (3, 5, 3)
    mini = etprop.nn.MinimalRNNCell(3, 4, phi="relu", key=0)
    assert mini.activation is jax.nn.relu or mini.activation(jnp.array(-1.0)) == 0.0


def test_valina_alias_is_reachable_but_not_public():
    assert etprop.nn.ValinaRNNCell is etprop.nn.VanillaRNNCell
    assert "ValinaRNNCell" not in etprop.nn.__all__
    with pytest.raises(AttributeError, match="no attribute 'NoSuchCell'"):
        etprop.nn.NoSuchCell


def test_signed_w_linear_keeps_signs_and_learns_online(x64):
    sign = jnp.array([[1.0], [-1.0], [1.0]])
    layer = etprop.nn.SignedWLinear(3, 2, w_sign=sign, key=1)
    w = layer.weight.value
    x = jnp.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(layer(x), x @ (jnp.abs(w) * sign))

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = etprop.nn.SignedWLinear(3, 2, w_sign=sign, key=1)
            self.h = brainstate.HiddenState(jnp.zeros(2))

        def update(self, x):
            self.h.value = 0.8 * self.h.value + jnp.tanh(self.inp(x))
            return self.h.value

    learner = etprop.compile(Net(), etprop.D_RTRL, x)
    assert [r.leaf_name for r in learner.graph.relations] == ["inp.weight"]
    with pytest.raises(etprop.ArgumentError, match="does not broadcast"):
        etprop.nn.SignedWLinear(3, 2, w_sign=jnp.ones((4, 2)))


def test_scaled_ws_linear_standardises_and_traces_every_parameter(x64):
    layer = etprop.nn.ScaledWSLinear(5, 3, key=2)
    w = layer.weight.value
    w_hat = (w - w.mean(0)) / jnp.sqrt(jnp.maximum(w.var(0) * 5, 1e-4))
    x = jax.random.normal(jax.random.key(0), (4, 5))
    np.testing.assert_allclose(layer(x), x @ w_hat, rtol=1e-12, atol=1e-12)

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = etprop.nn.ScaledWSLinear(5, 3, key=2)
            self.h = brainstate.HiddenState(jnp.zeros(3))

        def update(self, x):
            self.h.value = 0.5 * self.h.value + jnp.tanh(self.inp(x))
            return self.h.value

    from tests.conftest import bptt_reference, rel_err
    xs = jax.random.normal(jax.random.key(1), (8, 5))
    ys = jax.random.normal(jax.random.key(2), (8, 3))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    learner = etprop.compile(Net(), etprop.D_RTRL, xs[0])
    assert {r.leaf_name for r in learner.graph.relations} == {"inp.weight", "inp.gain", "inp.bias"}
    grads, _ = learner.etrace_grad(xs, ys, mse)
    ref, _ = bptt_reference(Net(), xs, ys, mse)
    assert rel_err(grads, ref) <= 1e-6  # one state per unit: exact
