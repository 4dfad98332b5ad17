"""EligibilityTrace: a brainstate short-term state, never a hidden state."""

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop import EligibilityTrace


def test_is_short_term_not_hidden_state():
    assert issubclass(EligibilityTrace, brainstate.ShortTermState)
    assert not issubclass(EligibilityTrace, brainstate.HiddenState)
    t = EligibilityTrace(jnp.zeros(3))
    assert isinstance(t, brainstate.ShortTermState)
    assert isinstance(t, brainstate.State)
    assert not isinstance(t, brainstate.HiddenState)
    assert not isinstance(t, brainstate.ParamState)


def test_module_state_filters_separate_traces_from_hidden_states():
    class M(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.h = brainstate.HiddenState(jnp.zeros(2))
            self.trace = EligibilityTrace(jnp.zeros(2))

    m = M()
    hidden = list(m.states(brainstate.HiddenState).values())
    traces = list(m.states(EligibilityTrace).values())
    short = list(m.states(brainstate.ShortTermState).values())
    assert hidden == [m.h]
    assert traces == [m.trace]
    assert any(s is m.trace for s in short)


def test_holds_pytrees():
    value = {"w": jnp.ones((2, 3)), "b": (jnp.zeros(3), jnp.arange(4.0) * u.mV)}
    t = EligibilityTrace(value)
    leaves = jax.tree.leaves(t.value, is_leaf=u.math.is_quantity)
    assert len(leaves) == 3
    assert t.value["b"][1].unit == u.mV
    t.value = {"w": t.value["w"] + 1, "b": (t.value["b"][0] + 1, t.value["b"][1] + 1 * u.mV)}
    np.testing.assert_array_equal(t.value["w"], 2.0)
    np.testing.assert_array_equal(t.value["b"][0], 1.0)
    np.testing.assert_allclose(t.value["b"][1].to_decimal(u.mV), np.arange(4.0) + 1)


def test_update_inside_brainstate_jit():
    t = EligibilityTrace({"e": jnp.zeros(3), "q": jnp.zeros(2) * u.mV})
    decay = 0.5

    @brainstate.transform.jit
    def step(x):
        t.value = {"e": decay * t.value["e"] + x, "q": decay * t.value["q"] + x[:2] * u.mV}
        return t.value["e"].sum()

    for _ in range(3):
        out = step(jnp.ones(3))
    # 1 + 0.5 + 0.25 per element
    np.testing.assert_allclose(t.value["e"], 1.75)
    np.testing.assert_allclose(out, 3 * 1.75)
    assert t.value["q"].unit == u.mV
    np.testing.assert_allclose(t.value["q"].to_decimal(u.mV), 1.75)
    assert not isinstance(t.value["e"], jax.core.Tracer)
