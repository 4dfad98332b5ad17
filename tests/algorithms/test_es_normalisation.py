"""ES-D-RTRL's normalisation: no steady-state magnitude bias; exact with alpha = leak.

The reference library's factorised rule, ex' = a ex + u and ef' = a D ef + (1 - a) Df, is
written out here in plain JAX on the same leaky integrator, to measure its bias side by side.
"""

import brainstate as bs
import jax
import jax.numpy as jnp
import pytest

import etprop
from tests.conftest import plain_cos as _cos, plain_rel_err as _rel_err


class LeakyIntegrator(bs.nn.Module):
    """h' = d h + x W (one leak d for every unit); readout h' @ W_out."""

    def __init__(self, n_in, n_hid, d, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed))
        self.w = bs.ParamState(jax.random.normal(k[0], (n_in, n_hid)) * 0.3)
        self.w_out = bs.ParamState(jax.random.normal(k[1], (n_hid, 2)) * 0.3)
        self.h = bs.HiddenState(jnp.zeros(n_hid))
        self.d = d

    def update(self, x):
        self.h.value = self.d * self.h.value + etprop.matmul(x, self.w.value)
        return self.h.value @ self.w_out.value


def mse(o, y):
    return jnp.sum((o - y) ** 2)


def _inputs(kind, T, n_in, seed=3):
    if kind == "constant":
        return jnp.ones((T, n_in)) * jax.random.normal(jax.random.key(seed), (n_in,))
    return jax.random.normal(jax.random.key(seed), (T, n_in))


def _reference_rule_grad(model, xs, ys, alpha):
    """The reference library's unnormalised factorised rule, per step, same signal."""
    W, Wo, d = model.w.value, model.w_out.value, model.d
    ex = jnp.zeros(W.shape[0])
    ef = jnp.zeros(W.shape[1])
    h = jnp.zeros(W.shape[1])
    g = jnp.zeros_like(W)
    for t in range(xs.shape[0]):
        h = d * h + xs[t] @ W
        ex = alpha * ex + xs[t]
        ef = alpha * d * ef + (1 - alpha) * 1.0
        dh = 2 * (h @ Wo - ys[t]) @ Wo.T
        g = g + jnp.outer(ex, dh * ef)
    return g


@pytest.mark.parametrize("kind", ["constant", "random"])
def test_auto_alpha_is_exact_on_a_shared_leak(x64, kind):
    T, n_in, n_hid, d = 30, 4, 6, 0.9
    xs, ys = _inputs(kind, T, n_in), jax.random.normal(jax.random.key(9), (T, 2))
    es = etprop.compile(LeakyIntegrator(n_in, n_hid, d), etprop.ES_D_RTRL, xs[0], decay_or_rank="auto")
    assert es.alpha_of(es.graph.relations[0]) == pytest.approx(d)
    g_es, _ = es.etrace_grad(xs, ys, mse)
    g_bptt, _ = etprop.compile(LeakyIntegrator(n_in, n_hid, d), etprop.BPTT, xs[0]).etrace_grad(xs, ys, mse)
    assert _rel_err(g_es, g_bptt) < 1e-10


@pytest.mark.parametrize("d", [0.5, 0.9, 0.98])
def test_no_steady_state_magnitude_bias_with_constant_input(x64, d):
    """Constant input, alpha != leak: etprop's trace converges to the true one; the reference
    rule's settles at u/(1 - alpha d) instead of u/(1 - d), a factor (1 - d)/(1 - alpha d)."""
    T, n_in, n_hid, alpha = 400, 3, 5, 0.5
    xs, ys = _inputs("constant", T, n_in), jnp.zeros((T, 2)) + 1.0
    model = LeakyIntegrator(n_in, n_hid, d)
    mask = jnp.zeros(T).at[-1].set(1.0)  # the gradient of the last step: steady state
    es = etprop.compile(model, etprop.ES_D_RTRL, xs[0], decay_or_rank=alpha)
    g_es, _ = es.etrace_grad(xs, ys, mse, mask=mask)
    g_bptt, _ = etprop.compile(LeakyIntegrator(n_in, n_hid, d), etprop.BPTT, xs[0]).etrace_grad(
        xs, ys, mse, mask=mask)
    # the reference rule over the whole sequence, keeping only the last step's term
    full = _reference_rule_grad(LeakyIntegrator(n_in, n_hid, d), xs, ys, alpha)
    prev = _reference_rule_grad(LeakyIntegrator(n_in, n_hid, d), xs[:-1], ys[:-1], alpha)
    g_ref = full - prev
    w = "w"
    ratio_es = float(jnp.linalg.norm(g_es[w]) / jnp.linalg.norm(g_bptt[w]))
    ratio_ref = float(jnp.linalg.norm(g_ref) / jnp.linalg.norm(g_bptt[w]))
    assert abs(ratio_es - 1) < 1e-6
    assert _cos(g_es[w], g_bptt[w]) > 1 - 1e-9
    assert ratio_ref == pytest.approx((1 - d) / (1 - alpha * d), rel=1e-3)  # 33%, 82%, 96% too small
