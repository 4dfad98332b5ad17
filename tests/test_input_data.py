"""SingleStepData / MultiStepData: pytree behaviour, num_steps and construction errors."""

import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop import MultiStepData, SingleStepData
from etprop.input_data import is_input_data

KINDS = [SingleStepData, MultiStepData]


def _inputs():
    return jnp.arange(12.0).reshape(4, 3), {"a": jnp.ones((4, 2)), "b": jnp.zeros((4,))}


@pytest.mark.parametrize("cls", KINDS)
def test_flatten_unflatten_roundtrip(cls):
    x, d = _inputs()
    obj = cls(x, d)
    leaves, treedef = jax.tree.flatten(obj)
    assert len(leaves) == 3
    back = jax.tree.unflatten(treedef, leaves)
    assert type(back) is cls
    assert isinstance(back.data, tuple) and len(back.data) == 2
    np.testing.assert_array_equal(back.data[0], x)
    np.testing.assert_array_equal(back.data[1]["a"], d["a"])
    np.testing.assert_array_equal(back.data[1]["b"], d["b"])


def test_kinds_have_distinct_treedefs():
    x, _ = _inputs()
    assert jax.tree.structure(SingleStepData(x)) != jax.tree.structure(MultiStepData(x))
    assert jax.tree.structure(SingleStepData(x)) != jax.tree.structure((x,))


@pytest.mark.parametrize("cls", KINDS)
def test_tree_map_keeps_type(cls):
    x, d = _inputs()
    out = jax.tree.map(lambda a: a * 2 + 1, cls(x, d))
    assert type(out) is cls
    np.testing.assert_array_equal(out.data[0], x * 2 + 1)
    np.testing.assert_array_equal(out.data[1]["a"], 3 * jnp.ones((4, 2)))


@pytest.mark.parametrize("cls", KINDS)
def test_passes_through_jit(cls):
    x, d = _inputs()

    @jax.jit
    def f(inp):
        assert type(inp) is cls  # traced object is rebuilt as the same class
        return cls(inp.data[0] + inp.data[1]["b"][:, None], inp.data[1])

    out = f(cls(x, d))
    assert type(out) is cls
    np.testing.assert_array_equal(out.data[0], x)
    np.testing.assert_array_equal(out.data[1]["a"], d["a"])


def test_quantity_leaves_roundtrip_with_unit():
    x = jnp.ones((5, 3)) * u.mV
    out = jax.jit(lambda m: jax.tree.map(lambda a: a * 2, m))(MultiStepData(x))
    assert isinstance(out.data[0], u.Quantity)
    assert out.data[0].unit == u.mV
    np.testing.assert_allclose(out.data[0].mantissa, 2.0)


def test_num_steps():
    x, d = _inputs()
    assert MultiStepData(x, d).num_steps == 4
    assert MultiStepData(jnp.ones((7,))).num_steps == 7
    assert MultiStepData(jnp.ones((6, 2)) * u.mV, np.zeros((6,))).num_steps == 6


def test_num_steps_is_static_under_jit():
    out = jax.jit(lambda m: jnp.zeros(m.num_steps))(MultiStepData(jnp.ones((5, 3))))
    assert out.shape == (5,)


def test_num_steps_disagreeing_leaves_raise():
    m = MultiStepData(jnp.ones((4, 3)), {"a": jnp.ones((5, 3))})
    with pytest.raises(ValueError, match="disagree") as info:
        _ = m.num_steps
    assert isinstance(info.value, etprop.ArgumentError)
    assert "4" in str(info.value) and "5" in str(info.value)


@pytest.mark.parametrize("data", [jnp.float32(1.0), 2.0, {}], ids=["0d-array", "python-float", "no-leaves"])
def test_num_steps_without_time_axis_raises(data):
    with pytest.raises(etprop.ArgumentError, match="time axis"):
        _ = MultiStepData(data).num_steps


@pytest.mark.parametrize("cls", KINDS)
def test_empty_construction_raises(cls):
    with pytest.raises(ValueError, match="at least one input") as info:
        cls()
    assert isinstance(info.value, etprop.ArgumentError)


def test_is_input_data():
    x, _ = _inputs()
    assert is_input_data(SingleStepData(x))
    assert is_input_data(MultiStepData(x))
    assert not is_input_data(x)
    assert not is_input_data((x,))


def test_repr_shows_shapes():
    r = repr(MultiStepData(jnp.ones((5, 3)) * u.mV, jnp.ones((5,))))
    assert r == "MultiStepData((5, 3), (5,))"
    assert repr(SingleStepData(jnp.ones(2))) == "SingleStepData((2,),)"
