"""Models with dense or sparse recurrence and several hidden groups, for the RTRL / SnAp /
UORO tests (D-RTRL is not exact on them), plus shared helpers."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np

import etprop


def _normal(key, shape, scale):
    return jax.random.normal(key, shape) * scale


class VanillaRNN(bs.nn.Module):
    """h' = tanh(x W_in + h W_hh + b); out = h' @ W_out. Dense recurrence."""

    def __init__(self, n_in, n_hid, n_out, seed=0, rec_scale=0.8):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        self.w_in = bs.ParamState(_normal(k[0], (n_in, n_hid), 1.0 / np.sqrt(n_in)))
        self.w_hh = bs.ParamState(_normal(k[1], (n_hid, n_hid), rec_scale / np.sqrt(n_hid)))
        self.b = bs.ParamState(jnp.full((n_hid,), 0.1))
        self.w_out = bs.ParamState(_normal(k[2], (n_hid, n_out), 0.5))
        self.h = bs.HiddenState(jnp.zeros(n_hid))

    def update(self, x):
        pre = etprop.matmul(x, self.w_in.value) + etprop.matmul(self.h.value, self.w_hh.value, self.b.value)
        self.h.value = jnp.tanh(pre)
        return self.h.value @ self.w_out.value


class RingRNN(bs.nn.Module):
    """A vanilla RNN whose recurrent weight is masked to a ring band: unit j reads units
    j-1, j, j+1 (mod H). SnAp-n keeps 2n-1 units per parameter until it saturates."""

    def __init__(self, n_in, n_hid, n_out, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 3)
        eye = np.eye(n_hid)
        self.mask = jnp.asarray(eye + np.roll(eye, 1, 1) + np.roll(eye, -1, 1))
        self.w_in = bs.ParamState(_normal(k[0], (n_in, n_hid), 1.0 / np.sqrt(n_in)))
        self.w_hh = bs.ParamState(_normal(k[1], (n_hid, n_hid), 0.6))
        self.w_out = bs.ParamState(_normal(k[2], (n_hid, n_out), 0.5))
        self.h = bs.HiddenState(jnp.zeros(n_hid))

    def update(self, x):
        rec = etprop.matmul(self.h.value, self.w_hh.value, weight_fn=lambda w: w * self.mask)
        self.h.value = jnp.tanh(etprop.matmul(x, self.w_in.value) + rec)
        return self.h.value @ self.w_out.value


class TwoLayer(bs.nn.Module):
    """Two hidden groups of different sizes: a leaky element-wise layer (a, W1) feeding a
    dense vanilla RNN (W2, U2); the readout sees both layers."""

    def __init__(self, n_in, n1, n2, n_out, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 5)
        self.w1 = bs.ParamState(_normal(k[0], (n_in, n1), 0.8))
        self.a = bs.ParamState(_normal(k[1], (n1,), 1.0))
        self.w2 = bs.ParamState(_normal(k[2], (n1, n2), 0.8))
        self.u2 = bs.ParamState(_normal(k[3], (n2, n2), 0.5))
        self.w_out = bs.ParamState(_normal(k[4], (n1 + n2, n_out), 0.5))
        self.h1 = bs.HiddenState(jnp.zeros(n1))
        self.h2 = bs.HiddenState(jnp.zeros(n2))

    def update(self, x):
        decay = etprop.element_wise(self.a.value, weight_fn=jax.nn.sigmoid)
        h1 = decay * self.h1.value + jnp.tanh(etprop.matmul(x, self.w1.value))
        h2 = jnp.tanh(etprop.matmul(self.h1.value, self.w2.value) + etprop.matmul(self.h2.value, self.u2.value))
        self.h1.value, self.h2.value = h1, h2
        return jnp.concatenate([h1, h2], -1) @ self.w_out.value


def batched(model, B):
    """Give every hidden state a leading batch axis of size ``B`` (None: unchanged)."""
    if B is not None:
        for st in model.states(bs.HiddenState).values():
            st.value = jnp.zeros((B,) + st.value.shape, st.value.dtype)
    return model


def data(n_in, n_out, T, B, seed=1, scale=1.0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    lead = (T,) if B is None else (T, B)
    return jax.random.normal(k1, lead + (n_in,)) * scale, jax.random.normal(k2, lead + (n_out,))


def grads_of(make, algo, xs, ys, B=None, loss=None, **opts):
    """``(grads, loss, learner)`` of one `etrace_grad` call on a fresh model."""
    from tests.algorithms.models import mse
    learner = etprop.compile(batched(make(), B), algo, xs[0], batch_size=B, **opts)
    g, l = learner.etrace_grad(xs, ys, loss or mse)
    return g, l, learner


def flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def rel_err(a, b):
    """Largest per-leaf max-abs error relative to the leaf's max-abs reference."""
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def cos(a, b):
    a, b = flat(a), flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
