"""etprop.fncache: user functions keyed by what they compute; captured arrays are arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop.fncache import LRUCache, split
from tests.algorithms.models import ElementwiseRNN


def _closure(scale, offset):
    return lambda x: x * scale + offset


def test_same_code_same_static_values_share_a_key_and_arrays_are_split_out():
    a, b = jnp.ones(3), jnp.zeros(3)
    k1, arr1, _ = split(_closure(a, 2.0))
    k2, arr2, _ = split(_closure(b, 2.0))
    k3, _, _ = split(_closure(a, 3.0))
    assert k1 == k2 and hash(k1) == hash(k2)
    assert k1 != k3  # a static closure value is part of what the function computes
    assert arr1[0] is a and arr2[0] is b
    assert split(_closure(jnp.ones(4), 2.0))[0] != k1  # another shape is another program


def test_rebuild_uses_the_new_arrays_and_nested_functions_are_split():
    inner = _closure(jnp.full(2, 3.0), 1.0)
    outer = (lambda f, w: (lambda x: f(x) * w))(inner, jnp.full(2, 10.0))
    key, arrays, rebuild = split(outer)
    assert len(arrays) == 2
    g = rebuild([jnp.full(2, 5.0), jnp.full(2, 2.0)])
    np.testing.assert_allclose(g(jnp.ones(2)), (1.0 * 5.0 + 1.0) * 2.0)
    np.testing.assert_allclose(outer(jnp.ones(2)), (3.0 + 1.0) * 10.0)  # the original is untouched


def _indexer(box):
    return lambda x: x * box[0]


def test_unhashable_values_key_by_identity():
    box = [1.0]
    assert split(_indexer(box))[0] == split(_indexer(box))[0]  # the same list object
    assert split(_indexer(box))[0] != split(_indexer([1.0]))[0]  # an equal list may change: not shared


def test_lru_cache_is_bounded():
    c = LRUCache(2)
    c["a"], c["b"] = 1, 2
    assert c.get("a") == 1  # a is now the most recent
    c["c"] = 3
    assert "b" not in c and len(c) == 2 and c["a"] == 1


def _learner(B=4):
    import brainstate
    m = ElementwiseRNN(3, 5, 2)
    for st in m.states(brainstate.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    return etprop.compile(m, etprop.D_RTRL, jnp.zeros((B, 3)), batch_size=B)


@pytest.mark.parametrize("form", ["step_fn", "loss_fn"])
def test_a_fresh_lambda_per_call_compiles_once_and_sees_its_captured_array(form):
    learner = _learner()
    xs = jax.random.normal(jax.random.key(0), (6, 4, 3))
    ys = jnp.zeros((6, 4, 2))

    def grads_with(scale):
        learner.reset()
        if form == "step_fn":
            g = learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean((learner(x) - y) ** 2) * scale)
        else:
            g, _ = learner.etrace_grad(xs, ys, lambda o, y: jnp.sum((o - y) ** 2) * scale)
        return g

    g1 = grads_with(jnp.asarray(1.0))
    n = len(learner._jit_cache)
    g3 = grads_with(jnp.asarray(3.0))  # a new closure object, a new captured array
    assert len(learner._jit_cache) == n  # no new compiled driver
    for k in g1:
        np.testing.assert_allclose(g3[k], 3.0 * g1[k], rtol=1e-5)
