"""`learner.online_fn`: the pure per-step optimiser loop equals the stateful `train_online`."""

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import optax

import etprop
from tests.algorithms.models import ElementwiseRNN

B, T = 3, 10


def _learner():
    m = ElementwiseRNN(4, 6, 2)
    for st in m.states(brainstate.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    return etprop.compile(m, "d_rtrl", jnp.zeros((B, 4)), batch_size=B)


def test_online_fn_equals_train_online():
    xs = jax.random.normal(jax.random.key(0), (T, B, 4))
    ys = jax.random.normal(jax.random.key(1), (T, B, 2))
    loss = lambda o, y: jnp.sum((o - y) ** 2)
    opt = optax.adam(1e-2)
    a = _learner()
    state, losses = a.train_online(xs, ys, loss, opt)
    b = _learner()
    _, hidden, others = b.graph.mf.values()
    fn = jax.jit(b.online_fn(loss, opt, return_out=True))
    params, opt_state, h, o, tr, losses2, outs = fn(b.params(), opt.init(b.params()), hidden, others,
                                                    b.etrace.value, xs, ys, jnp.ones(T))
    np.testing.assert_allclose(losses2, losses, rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(params[k], a.params()[k], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(tr), jax.tree.leaves(a.etrace.value)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert outs.shape == (T, B, 2)
    np.testing.assert_array_equal(b.params()["w"], _learner().params()["w"])  # pure: the learner is untouched
