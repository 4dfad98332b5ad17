"""Ported scripts compute what braintrace computes wherever braintrace is exact (float64).

The same model is written twice, once with braintrace's ETP operator and once with etprop's
(``import etprop as braintrace`` in a real port), from the same weights. On a leaky
integrator with one state per unit both libraries' D-RTRL equal BPTT, so their gradients of
the traced weight must agree to 1e-6, step by step and in braintrace's window mode
(``chunk_size=4``). braintrace gives the plain-op readout a zero gradient; etprop's equals BPTT.
"""

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import braintrace as real_braintrace
import etprop as braintrace  # the port
from tests.conftest import bptt_reference, rel_err

B, T, N_IN, N_HID, N_OUT = 3, 12, 4, 6, 2


class Leaky(brainstate.nn.Module):
    """h' = 0.8 h + tanh(matmul(x, W)); out = h' @ W_out (a plain op)."""

    def __init__(self, lib):
        super().__init__()
        k1, k2 = jax.random.split(jax.random.key(0))
        self.lib = lib
        self.w = brainstate.ParamState(jax.random.normal(k1, (N_IN, N_HID)) * 0.7)
        self.w_out = brainstate.ParamState(jax.random.normal(k2, (N_HID, N_OUT)) * 0.5)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        self.h = brainstate.HiddenState(jnp.zeros(lead + (N_HID,)))

    def update(self, x):
        self.h.value = 0.8 * self.h.value + jnp.tanh(self.lib.matmul(x, self.w.value))
        return self.h.value @ self.w_out.value


def _data():
    k1, k2 = jax.random.split(jax.random.key(1))
    return jax.random.normal(k1, (T, B, N_IN)), jax.random.normal(k2, (T, B, N_OUT))


def _grads(lib, chunk_size=None):
    xs, ys = _data()
    opts = {"vjp_method": "multi-step"} if (lib is real_braintrace and chunk_size) else {}
    model = Leaky(lib)
    learner = lib.compile(model, lib.D_RTRL, xs[0], batch_size=B, **opts)

    if chunk_size:
        def step_fn(x, y):
            out = learner(lib.MultiStepData(x))
            return jnp.mean(jnp.sum((out - y) ** 2, -1), axis=1)  # (k,) per-step losses
    else:
        def step_fn(x, y):
            return jnp.mean(jnp.sum((learner(x) - y) ** 2, -1))

    grads, losses = learner.etrace_grad(xs, ys, step_fn=step_fn, chunk_size=chunk_size, return_value=True)
    return {".".join(map(str, k)): v for k, v in grads.items()}, losses


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_d_rtrl_gradients_equal_braintrace_where_it_is_exact(x64, chunk_size):
    ours, our_losses = _grads(braintrace, chunk_size)
    theirs, their_losses = _grads(real_braintrace, chunk_size)
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-10)
    assert rel_err(ours["w"], theirs["w"]) <= 1e-6  # the traced weight: both exact
    if chunk_size:  # windows: exact reverse mode inside, both libraries give the readout its gradient
        assert rel_err(ours["w_out"], theirs["w_out"]) <= 1e-6
    else:  # step by step braintrace gives the plain-op readout nothing, etprop its exact gradient
        assert float(jnp.max(jnp.abs(theirs["w_out"]))) == 0.0
    xs, ys = _data()
    model = Leaky(braintrace)
    brainstate.nn.init_all_states(model, batch_size=B)
    ref, _ = bptt_reference(model, xs, ys, lambda o, y: jnp.sum((o - y) ** 2))
    scale = 1.0 / T  # braintrace's reduction='mean' over the mask weight
    assert rel_err({k: v for k, v in ours.items()}, {k: v * scale for k, v in ref.items()}) <= 1e-6


def test_reduction_and_loss_output_match_braintrace(x64):
    xs, ys = _data()
    mask = (jnp.arange(T) % 3 != 0).astype(jnp.float64)
    out = {}
    for lib in (braintrace, real_braintrace):
        learner = lib.compile(Leaky(lib), "d_rtrl", xs[0], batch_size=B)
        step_fn = lambda x, y: jnp.mean(jnp.sum((learner(x) - y) ** 2, -1))
        g, value = learner.etrace_grad(xs, ys, step_fn=step_fn, mask=mask, return_value=True,
                                       loss_output="scalar")
        out[lib.__name__] = ({".".join(map(str, k)): v for k, v in g.items()}, value)
    (g_ours, v_ours), (g_theirs, v_theirs) = out["etprop"], out["braintrace"]
    np.testing.assert_allclose(v_ours, v_theirs, rtol=1e-10)
    assert rel_err(g_ours["w"], g_theirs["w"]) <= 1e-6
