"""Online updates at every step with optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import etprop
from tests.algorithms.models import ElementwiseRNN, mse
from tests.conftest import seq_data as _data, plain_rel_err as _rel_err


def test_train_online_equals_manual_step_loop(x64):
    xs, ys = _data(3, 2, T=6, B=None)
    opt = optax.adam(1e-2)
    a = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    state, losses = a.train_online(xs, ys, mse, opt)
    b = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    st = opt.init(b.params())
    manual = []
    for t in range(6):
        _, g, loss = b.step(xs[t], ys[t], mse)
        updates, st = opt.update(g, st, b.params())
        b.set_params(optax.apply_updates(b.params(), updates))
        manual.append(loss)
    np.testing.assert_allclose(losses, jnp.stack(manual), rtol=1e-10)
    assert _rel_err(a.params(), b.params()) < 1e-10
    assert _rel_err(a.etrace.value, b.etrace.value) < 1e-10


def test_online_learning_reduces_the_loss():
    """A leaky RNN learns to low-pass filter its input online, one update per step."""
    T, B = 600, 8
    xs = jax.random.normal(jax.random.key(0), (T, B, 1))
    ys = jax.lax.scan(lambda c, x: (0.8 * c + 0.2 * x,) * 2, jnp.zeros((B, 1)), xs)[1]
    m = ElementwiseRNN(1, 16, 1, seed=1)
    m.h.value = jnp.zeros((B, 16))
    learner = etprop.compile(m, etprop.D_RTRL, xs[0], batch_size=B)
    _, losses = learner.train_online(xs, ys, mse, optax.adam(3e-2))
    first, last = float(jnp.mean(losses[:100])), float(jnp.mean(losses[-100:]))
    assert last < 0.6 * first, (first, last)
