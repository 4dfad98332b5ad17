"""braintrace's README quickstart and a braintools training loop, with only the import changed."""

import brainstate
import jax.numpy as jnp
import numpy as np

import etprop as braintrace  # the one changed line of a port
from tests.conftest import train_with_braintools


class GRUNet(brainstate.nn.Module):
    def __init__(self, n_in, n_rec, n_out):
        super().__init__()
        self.rnn = braintrace.nn.GRUCell(n_in, n_rec)
        self.out = braintrace.nn.Linear(n_rec, n_out)

    def update(self, x):
        return self.out(self.rnn(x))


def test_readme_quickstart_runs_eagerly_and_under_jit():
    brainstate.random.seed(0)
    model = GRUNet(3, 8, 1)
    learner = braintrace.compile(model, braintrace.D_RTRL, jnp.zeros((1, 3)), batch_size=1)

    def step_loss(x, y):
        return jnp.mean((learner(x) - y) ** 2)

    xs = brainstate.random.randn(100, 1, 3)
    ys = brainstate.random.randn(100, 1, 1)
    grads, losses = learner.etrace_grad(xs, ys, step_fn=step_loss, return_value=True)
    assert losses.shape == (100,)
    assert set(grads) == set(model.states(brainstate.ParamState))
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in grads.values())  # the readout learns too

    learner.reset()
    jitted = brainstate.transform.jit(lambda xs, ys: learner.etrace_grad(xs, ys, step_fn=step_loss,
                                                                         return_value=True))
    g2, l2 = jitted(xs, ys)
    np.testing.assert_allclose(l2, losses, rtol=1e-5)
    for k in grads:
        np.testing.assert_allclose(g2[k], grads[k], rtol=1e-4, atol=1e-7)


def test_braintools_optimiser_training_loop_loss_falls():
    """The training loop braintrace's docs write: a braintools optimiser over the model's
    ParamStates, a fresh lambda per step, braintrace's mean reduction."""
    brainstate.random.seed(1)
    model = GRUNet(2, 16, 1)
    learner = braintrace.compile(model, "d_rtrl", jnp.zeros((8, 2)), batch_size=8)
    xs = brainstate.random.randn(30, 8, 2)
    ys = jnp.cumsum(xs[..., :1], axis=0) * 0.2  # a running sum: needs memory
    losses = train_with_braintools(learner, model, xs, ys, lr=1e-2, updates=60)
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])
