"""GradExpon: leaky running sum of gradients."""

import math

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etprop
from etprop import GradExpon


def _params():
    return {"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}


def _grads(scale=1.0):
    return {"w": jnp.full((3, 2), 2.0 * scale), "b": jnp.full((2,), -1.0 * scale)}


@pytest.mark.parametrize("decay,n", [(0.0, 1), (0.0, 4), (0.5, 1), (0.5, 3), (0.9, 10)])
def test_unnormalised_sum_is_geometric(decay, n):
    acc = GradExpon(_params(), decay)
    g = _grads()
    for _ in range(n):
        out = acc.update(g)
    factor = (1 - decay ** n) / (1 - decay)
    for k in g:
        np.testing.assert_allclose(out[k], factor * g[k], rtol=1e-6)
        np.testing.assert_allclose(acc.gradients.value[k], factor * g[k], rtol=1e-6)


@pytest.mark.parametrize("decay,n", [(0.0, 3), (0.5, 1), (0.5, 3), (0.9, 10)])
def test_normalised_sum_approaches_gradient(decay, n):
    acc = GradExpon(_params(), decay, normalized=True)
    g = _grads()
    for _ in range(n):
        out = acc.update(g)
    for k in g:
        np.testing.assert_allclose(out[k], (1 - decay ** n) * g[k], rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(decay=st.floats(0.0, 0.99), n=st.integers(1, 12), normalized=st.booleans())
def test_closed_form_property(decay, n, normalized):
    acc = GradExpon({"x": np.zeros(2, np.float64)}, decay, normalized=normalized)
    g = np.array([1.5, -0.25])
    for _ in range(n):
        out = acc.update({"x": g})
    factor = (1 - decay ** n) if normalized else (1 - decay ** n) / (1 - decay)
    np.testing.assert_allclose(np.asarray(out["x"]), factor * g, rtol=1e-5, atol=1e-6)


def test_decay_from_time_constant():
    acc = GradExpon(_params(), 10 * u.ms, dt=1 * u.ms)
    assert acc.decay == pytest.approx(math.exp(-0.1), rel=1e-12)
    # units are converted, not just compared by mantissa
    acc = GradExpon(_params(), 0.01 * u.second, dt=1 * u.ms)
    assert acc.decay == pytest.approx(math.exp(-0.1), rel=1e-9)


def test_decay_uses_environ_dt_when_dt_is_none():
    with brainstate.environ.context(dt=1 * u.ms):
        acc = GradExpon(_params(), 10 * u.ms)
    assert acc.decay == pytest.approx(math.exp(-0.1), rel=1e-12)
    with brainstate.environ.context(dt=0.5 * u.ms):
        acc = GradExpon(_params(), 10 * u.ms)
    assert acc.decay == pytest.approx(math.exp(-0.05), rel=1e-12)


def test_time_constant_accumulates_with_derived_decay():
    acc = GradExpon({"x": jnp.zeros(())}, 10 * u.ms, dt=1 * u.ms)
    acc.update({"x": jnp.ones(())})
    out = acc.update({"x": jnp.ones(())})
    np.testing.assert_allclose(out["x"], 1 + math.exp(-0.1), rtol=1e-6)


def test_quantity_gradients_keep_their_unit():
    params = {"w": jnp.zeros(3) * u.mV, "b": jnp.zeros(2)}
    acc = GradExpon(params, 0.5)
    assert isinstance(acc.gradients.value["w"], u.Quantity)
    assert acc.gradients.value["w"].unit == u.mV
    grads = {"w": jnp.ones(3) * u.mV, "b": jnp.ones(2)}
    acc.update(grads)
    out = acc.update(grads)
    assert out["w"].unit == u.mV
    np.testing.assert_allclose(out["w"].to_decimal(u.mV), 1.5)
    np.testing.assert_allclose(out["b"], 1.5)
    assert not isinstance(out["b"], u.Quantity)
    acc.reset()
    assert acc.gradients.value["w"].unit == u.mV
    np.testing.assert_array_equal(acc.gradients.value["w"].to_decimal(u.mV), 0.0)


def test_quantity_gradients_under_jit():
    acc = GradExpon({"w": jnp.zeros(3) * u.mV}, 0.5, normalized=True)
    step = brainstate.transform.jit(acc.update)
    for _ in range(2):
        out = step({"w": jnp.ones(3) * u.mV})
    assert out["w"].unit == u.mV
    np.testing.assert_allclose(out["w"].to_decimal(u.mV), 0.75)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_decay_outside_unit_interval_raises(decay):
    with pytest.raises(etprop.ArgumentError, match=r"\[0, 1\)"):
        GradExpon(_params(), decay)


@pytest.mark.parametrize("bad", ["0.5", True, False, None, [0.5]])
def test_decay_of_wrong_type_raises(bad):
    with pytest.raises(etprop.ArgumentError, match="tau_or_decay"):
        GradExpon(_params(), bad)


@pytest.mark.parametrize("tau,dt", [(10 * u.mV, 1 * u.ms), (10 * u.ms, 1 * u.mV), (10 * u.ms, 1.0)])
def test_tau_or_dt_that_is_not_a_time_raises(tau, dt):
    with pytest.raises(etprop.ArgumentError, match="must be times"):
        GradExpon(_params(), tau, dt=dt)


def test_dt_with_float_decay_raises():
    with pytest.raises(etprop.ArgumentError, match="dt is only used"):
        GradExpon(_params(), 0.5, dt=1 * u.ms)


@pytest.mark.parametrize("tau,dt", [(-10 * u.ms, 1 * u.ms), (10 * u.ms, 0 * u.ms), (10 * u.ms, -1 * u.ms)])
def test_non_positive_tau_or_dt_raises(tau, dt):
    with pytest.raises(etprop.ArgumentError, match="positive"):
        GradExpon(_params(), tau, dt=dt)


@pytest.mark.parametrize("grads", [
    {"w": jnp.ones((3, 2))},
    {"w": jnp.ones((3, 2)), "b": jnp.ones(2), "c": jnp.ones(1)},
    [jnp.ones((3, 2)), jnp.ones(2)],
], ids=["missing-key", "extra-key", "list"])
def test_mismatched_gradient_tree_raises(grads):
    acc = GradExpon(_params(), 0.5)
    with pytest.raises(etprop.ArgumentError, match="does not match"):
        acc.update(grads)
    # the accumulator is untouched by the failed call
    for v in acc.gradients.value.values():
        np.testing.assert_array_equal(v, 0.0)


def test_argument_errors_are_value_errors():
    with pytest.raises(ValueError):
        GradExpon(_params(), 2.0)
    with pytest.raises(etprop.EtpropError):
        GradExpon(_params(), "x")


def test_reset_zeroes():
    acc = GradExpon(_params(), 0.9)
    acc.update(_grads())
    acc.update(_grads())
    assert any(np.any(np.asarray(v) != 0) for v in acc.gradients.value.values())
    acc.reset()
    for k, v in acc.gradients.value.items():
        assert v.shape == _params()[k].shape
        np.testing.assert_array_equal(v, 0.0)
    # and the sum restarts from zero
    out = acc.update(_grads())
    for k, g in _grads().items():
        np.testing.assert_allclose(out[k], g)


def test_initial_sum_is_zero_with_grad_shape_dtype():
    params = {"w": jnp.ones((3, 2), jnp.float16), "b": jnp.ones((2,))}
    acc = GradExpon(params, 0.5)
    assert acc.gradients.value["w"].dtype == jnp.float16
    assert acc.gradients.value["w"].shape == (3, 2)
    np.testing.assert_array_equal(acc.gradients.value["b"], 0.0)


def test_works_inside_brainstate_jit():
    acc = GradExpon(_params(), 0.5)
    traces = []

    @brainstate.transform.jit
    def step(scale):
        traces.append(1)
        return acc.update(_grads(scale))

    for _ in range(4):
        out = step(1.0)
    assert len(traces) == 1  # compiled once, state threaded through the jit
    factor = (1 - 0.5 ** 4) / (1 - 0.5)
    for k, g in _grads().items():
        np.testing.assert_allclose(out[k], factor * g, rtol=1e-6)
        np.testing.assert_allclose(acc.gradients.value[k], factor * g, rtol=1e-6)
        assert not isinstance(acc.gradients.value[k], jax.core.Tracer)


def test_reset_inside_brainstate_jit():
    acc = GradExpon(_params(), 0.5)
    acc.update(_grads())
    brainstate.transform.jit(acc.reset)()
    for v in acc.gradients.value.values():
        np.testing.assert_array_equal(v, 0.0)
