"""Ported scripts with sparse, conv and LoRA layers and the vmap mode, written the braintrace way."""

import brainevent
import brainstate
import jax
import jax.numpy as jnp
import numpy as np

import etprop as braintrace  # the port
from tests.conftest import rel_err, train_with_braintools

B, T = 3, 10


class SparseLeaky(brainstate.nn.Module):
    """h' = 0.8 h + tanh(sparse_matmul(x, w, sparse_mat=<brainevent CSR>)); readout a plain op."""

    def __init__(self, lib, csr):
        super().__init__()
        self.lib, self.csr = lib, csr
        self.w = brainstate.ParamState(jnp.asarray(csr.data))
        self.w_out = brainstate.ParamState(jax.random.normal(jax.random.key(5), (csr.shape[1], 2)) * 0.5)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        self.h = brainstate.HiddenState(jnp.zeros(lead + (self.csr.shape[1],)))

    def update(self, x):
        self.h.value = 0.8 * self.h.value + jnp.tanh(self.lib.sparse_matmul(x, self.w.value, sparse_mat=self.csr))
        return self.h.value @ self.w_out.value


def test_sparse_with_brainevent_csr_is_exact(x64):
    """braintrace's own sparse path needs brainevent's numba kernels (not installed here), so the
    port is checked against BPTT: with one state per unit D-RTRL is exact, readout included."""
    from tests.conftest import bptt_reference
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(6, 5)) * (rng.uniform(size=(6, 5)) < 0.4)
    csr = brainevent.CSR.fromdense(jnp.asarray(dense))
    xs = jax.random.normal(jax.random.key(1), (T, B, 6))
    ys = jax.random.normal(jax.random.key(2), (T, B, 2))
    learner = braintrace.compile(SparseLeaky(braintrace, csr), braintrace.D_RTRL, xs[0], batch_size=B)
    g = learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean(jnp.sum((learner(x) - y) ** 2, -1)),
                            reduction="sum")
    ours = {".".join(map(str, k)): v for k, v in g.items()}
    model = SparseLeaky(braintrace, csr)
    brainstate.nn.init_all_states(model, batch_size=B)
    ref, _ = bptt_reference(model, xs, ys, lambda o, y: jnp.sum((o - y) ** 2))
    assert float(jnp.max(jnp.abs(ours["w"]))) > 0 and ours["w"].shape == (csr.nse,)
    assert rel_err(ours, ref) <= 1e-6


class ConvNet(brainstate.nn.Module):
    """braintrace-style Conv1d(in_size=(L, C), ...) into a leaky state per position, then a LoRA readout."""

    def __init__(self):
        super().__init__()
        self.conv = braintrace.nn.Conv1d(in_size=(8, 2), out_channels=3, kernel_size=3)
        self.lora = braintrace.nn.LoRA(in_features=24, lora_rank=2, out_features=1)

    def init_state(self, batch_size=None, **kwargs):
        lead = () if batch_size is None else (batch_size,)
        self.h = brainstate.HiddenState(jnp.zeros(lead + (8, 3)))

    def update(self, x):
        self.h.value = 0.7 * self.h.value + jnp.tanh(self.conv(x))
        return self.lora(self.h.value.reshape(self.h.value.shape[:-2] + (24,)))


def test_conv_and_lora_training_script_loss_falls():
    brainstate.random.seed(0)
    model = ConvNet()
    learner = braintrace.compile(model, "es_d_rtrl", jnp.zeros((B, 8, 2)), batch_size=B, seed=0)
    xs = jax.random.normal(jax.random.key(3), (T, B, 8, 2))
    ys = jnp.tanh(jnp.sum(xs[..., 0], axis=-1, keepdims=True))  # reachable from the input
    losses = train_with_braintools(learner, model, xs, ys, lr=3e-2, updates=40)
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_vmap_mode_script_runs_like_batch_mode(x64):
    """braintrace's compile(..., vmap=True, batch_size=B) on an unbatched cell: the same
    gradients as the batched compile."""
    xs = jax.random.normal(jax.random.key(4), (T, B, 3))
    ys = jax.random.normal(jax.random.key(5), (T, B, 4))
    grads = []
    for vmap in (False, True):
        cell = braintrace.nn.GRUCell(in_size=3, out_size=4, key=0)
        learner = braintrace.compile(cell, braintrace.D_RTRL, xs[0], batch_size=B, vmap=vmap)
        grads.append(learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean((learner(x) - y) ** 2)))
    assert rel_err(grads[0], grads[1]) <= 1e-12
