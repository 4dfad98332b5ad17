"""braintrace's ``etrace_grad(*sequences, step_fn=f)`` on etprop's fast path (closed-form chunks).

The fast path must give the per-step path's gradients and losses (float64, to rounding) for
every keyword, fall back where ``f`` reads model state after the learner call (and say so in
the report), and follow the arrays a fresh closure captures.
"""

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop

B, T, I, H, O = 3, 20, 4, 5, 2


class _Net(brainstate.nn.Module):
    """Element-wise leaky RNN with a readout (D-RTRL exact on w and r)."""

    def __init__(self):
        super().__init__()
        k = jax.random.split(jax.random.key(0), 3)
        self.w = brainstate.ParamState(jax.random.normal(k[0], (I, H)) * 0.5)
        self.r = brainstate.ParamState(jax.random.uniform(k[1], (H,), minval=-0.5, maxval=0.5))
        self.wo = brainstate.ParamState(jax.random.normal(k[2], (H, O)))
        self.h = brainstate.HiddenState(jnp.zeros((B, H)))
        self.dummy = brainstate.State(jnp.zeros(()))  # read by a step_fn to force the per-step path

    def update(self, x):
        self.h.value = jnp.tanh(etprop.matmul(x, self.w.value) + self.r.value * self.h.value)
        return self.h.value @ self.wo.value


def _data():
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, O))
    mask = (jnp.arange(T) % 3 != 0).astype(jnp.float64)
    return xs, ys, mask


def _run(algo, per_step: bool, **kw):
    net = _Net()
    learner = etprop.compile(net, algo, _data()[0][0], batch_size=B)
    xs, ys, mask = _data()
    extra = (lambda: 0.0 * net.dummy.value) if per_step else (lambda: 0.0)
    out = learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean((learner(x) - y) ** 2) + extra(), mask=mask,
                              **kw)
    return learner, out


@pytest.mark.parametrize("algo", [etprop.D_RTRL, etprop.ES_D_RTRL])
@pytest.mark.parametrize("kw", [dict(return_value=True), dict(return_value=True, reduction="sum", loss_output="masked"),
                                dict(return_value=True, loss_output="scalar")], ids=["mean", "sum-masked", "scalar"])
def test_fast_path_equals_per_step_path(x64, algo, kw):
    fast, (g_fast, v_fast) = _run(algo, False, **kw)
    slow, (g_slow, v_slow) = _run(algo, True, **kw)
    assert fast.step_fn_path.startswith("fast")
    assert slow.step_fn_path.startswith("per-step") and "'dummy'" in slow.step_fn_path
    assert set(g_fast) == set(g_slow) == set(fast.model.states(brainstate.ParamState))
    for k in g_slow:
        np.testing.assert_allclose(g_fast[k], g_slow[k], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(v_fast, v_slow, rtol=1e-12)


def test_report_names_the_path(x64):
    fast, _ = _run(etprop.D_RTRL, False)
    slow, _ = _run(etprop.D_RTRL, True)
    assert "step_fn=...): fast" in fast.report()
    assert "per-step: step_fn reads or writes 'dummy'" in slow.report()


def test_fresh_closure_follows_its_captured_array(x64):
    net = _Net()
    learner = etprop.compile(net, etprop.D_RTRL, _data()[0][0], batch_size=B)
    xs, ys, _ = _data()
    grads, sizes = [], []
    for scale in (1.0, 3.0, 1.0):
        target = ys * scale  # captured by a new lambda (same code) at each call
        learner.reset()
        grads.append(learner.etrace_grad(jnp.arange(T), xs,
                                         step_fn=lambda t, x: jnp.mean((learner(x) - target[t]) ** 2)))
        sizes.append(len(learner._jit_cache))
        assert learner.step_fn_path.startswith("fast")
    assert sizes[0] == sizes[1] == sizes[2]  # same code: no new compiled driver
    assert not np.allclose(grads[0][("wo",)], grads[1][("wo",)])  # the new array, not a frozen one
    for k in grads[0]:
        np.testing.assert_allclose(grads[2][k], grads[0][k], rtol=1e-12)
