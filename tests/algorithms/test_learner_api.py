"""Learner API: learner(x) under brainstate grad, windows, jit, vmap, call-time errors."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from tests.algorithms.models import ALIF, DenseGRU, ElementwiseRNN, mse
from tests.conftest import plain_cos as _cos, seq_data as _data, zero_init_grads as _grads, plain_rel_err as _rel_err


def _batched(model, B):
    for st in model.states(bs.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    return model


def test_brainstate_grad_of_learner_call_equals_step(x64):
    xs, ys = _data(4, 2, T=4, B=3, scale=1.5)
    a = etprop.compile(_batched(ALIF(4, 6, 2), 3), etprop.D_RTRL, xs[0], batch_size=3)
    b = etprop.compile(_batched(ALIF(4, 6, 2), 3), etprop.D_RTRL, xs[0], batch_size=3)
    states = a.param_states()

    def loss(x, y):
        out = a(x)
        return jnp.mean(jax.vmap(mse)(out, y))

    for t in range(4):
        g_bs = bs.transform.grad(loss, states)(xs[t], ys[t])
        _, g_step, _ = b.step(xs[t], ys[t], mse)
        assert _rel_err(g_bs, g_step) < 1e-12
    # and the hidden states advanced identically
    np.testing.assert_allclose(a.model.v.value, b.model.v.value)


def test_learner_call_under_brainstate_jit(x64):
    xs, ys = _data(3, 2, T=3, B=None)
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    ref = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    states = learner.param_states()

    @bs.transform.jit
    def train_step(x, y):
        grads = bs.transform.grad(lambda: mse(learner(x), y), states)()
        for k, g in grads.items():
            states[k].value = states[k].value - 0.1 * g
        return grads

    for t in range(3):
        g = train_step(xs[t], ys[t])
        _, g_ref, _ = ref.step(xs[t], ys[t], mse)
        ref.set_params(jax.tree.map(lambda p, gg: p - 0.1 * gg, ref.params(), g_ref))
        assert _rel_err(g, g_ref) < 1e-12


@pytest.mark.parametrize("make,n_in", [(lambda: ALIF(4, 6, 2), 4), (lambda: ElementwiseRNN(4, 6, 2), 4)])
@pytest.mark.parametrize("window", [2, 3, 5])
def test_windows_are_exact_on_diagonal_models(x64, make, n_in, window):
    xs, ys = _data(n_in, 2, T=10, B=None, scale=1.5)
    g_w, l_w, _ = _grads_window(make, etprop.D_RTRL, xs, ys, window)
    g_b, l_b, _ = _grads(make, etprop.BPTT, xs, ys)
    assert np.isclose(l_w, l_b) and _rel_err(g_w, g_b) < 1e-6


def _grads_window(make, algo, xs, ys, window, **opts):
    learner = etprop.compile(make(), algo, xs[0], **opts)
    g, l = learner.etrace_grad(xs, ys, mse, window=window)
    return g, l, learner


def test_window_improves_dense_gru_and_full_window_is_bptt(x64):
    xs, ys = _data(3, 2, T=12, B=None)
    make = lambda: DenseGRU(3, 8, 2)
    g_b, _, _ = _grads(make, etprop.BPTT, xs, ys)
    cos = {w: _cos(_grads_window(make, etprop.D_RTRL, xs, ys, w)[0], g_b) for w in (1, 4, 12)}
    assert cos[12] > 1 - 1e-12                 # one window over everything: BPTT
    assert cos[4] > cos[1] - 1e-3              # a longer exact window does not hurt
    assert cos[1] > 0.5                        # and the online gradient points the right way


def test_multistep_call_returns_time_major_outputs(x64):
    xs, _ = _data(3, 2, T=5, B=None)
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    ref = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    out = learner(etprop.MultiStepData(xs))
    outs = jnp.stack([ref(xs[t]) for t in range(5)])
    np.testing.assert_allclose(out, outs, rtol=1e-12)


def test_vmap_over_unbatched_learner_equals_batch_size(x64):
    xs, ys = _data(4, 2, T=4, B=3, scale=1.5)
    single = etprop.compile(ALIF(4, 6, 2), etprop.D_RTRL, xs[0, 0])
    params = single.params()
    _, hidden, others = single.graph.mf.values()
    traces = single.etrace.value
    bat = lambda tree: jax.tree.map(lambda a: jnp.broadcast_to(a, (3,) + jnp.shape(a)), tree)

    def loss(p, h, tr, x, y):
        out, _, _, _ = single.run_window(p, h, others, tr, (x[None],))
        return mse(out[0], y)

    g_vmap = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0))(params, bat(hidden), bat(traces), xs[0], ys[0])
    g_vmap = jax.tree.map(lambda a: jnp.mean(a, 0), g_vmap)
    batched = etprop.compile(_batched(ALIF(4, 6, 2), 3), etprop.D_RTRL, xs[0], batch_size=3)
    _, g_b, _ = batched.step(xs[0], ys[0], mse)
    assert _rel_err(g_vmap, g_b) < 1e-12


def test_wrong_input_shape_at_call_time():
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, jnp.ones(3))
    with pytest.raises(etprop.OperandError, match=r"input 0 has shape \(4,\); compiled for one step of shape \(3,\)"):
        learner(jnp.ones(4))
    with pytest.raises(etprop.OperandError, match=r"sequence needs \(time, 3\)"):
        learner.etrace_grad(jnp.ones((5, 4)), jnp.ones((5, 2)), mse)
    with pytest.raises(etprop.ArgumentError, match="mask"):
        learner.etrace_grad(jnp.ones((5, 3)), jnp.ones((5, 2)), mse, mask=jnp.ones(4))
    with pytest.raises(etprop.NotSupportedError):
        learner.step(etprop.MultiStepData(jnp.ones((5, 3))))


def test_mask_weights_step_losses(x64):
    xs, ys = _data(3, 2, T=6, B=None)
    mask = jnp.array([0., 0., 1., 0., 1., 1.])
    g_m, l_m, _ = _grads_masked(xs, ys, mask)
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.BPTT, xs[0])
    g_b, l_b = learner.etrace_grad(xs, ys, mse, mask=mask)
    assert np.isclose(l_m, l_b) and _rel_err(g_m, g_b) < 1e-6


def _grads_masked(xs, ys, mask):
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    g, l = learner.etrace_grad(xs, ys, mse, mask=mask)
    return g, l, learner


def test_etrace_evolve_advances_traces_without_loss(x64):
    xs, ys = _data(3, 2, T=6, B=None)
    a = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    b = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    a.etrace_evolve(xs[:3])
    b.etrace_grad(xs[:3], ys[:3], mse)
    assert _rel_err(a.etrace.value, b.etrace.value) < 1e-12
    assert float(jnp.max(jnp.abs(a.etrace.value["rel"][1][0]))) > 0


@pytest.mark.parametrize("algo", [etprop.D_RTRL, etprop.ES_D_RTRL, etprop.HybridDimVjpAlgorithm])
@pytest.mark.parametrize("B", [None, 2])
def test_chunked_closed_form_equals_per_step(x64, algo, B):
    """The closed form over chunks is the per-step recursion, also where it is approximate."""
    xs, ys = _data(3, 2, T=11, B=B)
    make = lambda: DenseGRU(3, 5, 2) if algo is not etprop.D_RTRL else ALIF(3, 5, 2)
    ref = None
    for chunk in (1, 4, 11):
        m = make()
        if B is not None:
            _batched(m, B)
        learner = etprop.compile(m, algo, xs[0], batch_size=B)
        g, l = learner.etrace_grad(xs, ys, mse, closed_form_chunk=chunk)
        tr = learner.etrace.value
        if ref is None:
            ref = (g, l, tr)
            continue
        assert np.isclose(l, ref[1], rtol=1e-12)
        assert _rel_err(g, ref[0]) < 1e-10, chunk
        assert _rel_err(tr, ref[2]) < 1e-10, chunk


def test_nan_is_a_clear_error_not_a_number():
    xs, ys = _data(3, 2, T=4, B=None)
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    with pytest.raises(etprop.NumericalError, match="inputs contain NaN"):
        learner.etrace_grad(xs.at[2, 1].set(jnp.nan), ys, mse)
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    with pytest.raises(etprop.NumericalError, match="loss is NaN"):
        learner.etrace_grad(xs, ys, lambda o, y: jnp.sum(jnp.log(o - o)))
    learner = etprop.compile(ElementwiseRNN(3, 5, 2), etprop.D_RTRL, xs[0])
    learner.set_params({**learner.params(), "w": learner.params()["w"].at[0, 0].set(jnp.inf)})
    with pytest.raises(etprop.NumericalError, match="parameter 'w'"):
        learner.step(xs[0], ys[0], mse)


def test_braintrace_calling_convention_step_fn(x64):
    """etrace_grad(*sequences, step_fn=f) with f calling the learner: braintrace's meanings --
    gradients alone by default, keyed like model.states(ParamState), reduction='mean' over the
    mask weight, return_value / loss_output / has_aux / chunk_size windows."""
    xs, ys = _data(4, 2, T=8, B=3, scale=1.5)
    learner = etprop.compile(_batched(ALIF(4, 6, 2), 3), etprop.D_RTRL, xs[0], batch_size=3)

    def step_fn(x, y):
        return jnp.mean(jax.vmap(mse)(learner(x), y))

    g_fn = learner.etrace_grad(xs, ys, step_fn=step_fn, reduction="sum")
    assert set(g_fn) == set(learner.model.states(bs.ParamState))  # path tuples, as braintrace keys them
    g_ref, l_ref, _ = _grads(lambda: ALIF(4, 6, 2), etprop.D_RTRL, xs, ys, 3)
    named = {".".join(map(str, k)): v for k, v in g_fn.items()}
    assert _rel_err(named, g_ref) < 1e-10
    learner.reset()
    g_sum, losses = learner.etrace_grad(xs, ys, step_fn=step_fn, reduction="sum", return_value=True)
    assert losses.shape == (8,) and np.isclose(float(jnp.sum(losses)), float(l_ref))
    mask = jnp.arange(8.0) % 2
    learner.reset()
    g_mean, scalar = learner.etrace_grad(xs, ys, step_fn=step_fn, mask=mask, return_value=True,
                                         loss_output="scalar")  # reduction='mean' is the default
    learner.reset()
    g_msum, masked = learner.etrace_grad(xs, ys, step_fn=step_fn, mask=mask, reduction="sum", return_value=True,
                                         loss_output="masked")
    assert _rel_err(g_mean, jax.tree.map(lambda g: g / 4.0, g_msum)) < 1e-12
    np.testing.assert_allclose(float(scalar), float(jnp.sum(masked)) / 4.0, rtol=1e-12)
    # has_aux: aux stacked over steps
    learner.reset()
    g_aux, aux = learner.etrace_grad(xs, ys, step_fn=lambda x, y: (step_fn(x, y), jnp.sum(x)), has_aux=True)
    assert aux.shape == (8,)
    # chunk_size=k: windows of k steps, exact reverse mode inside (etprop's window=k)
    learner.reset()
    g_win = learner.etrace_grad(xs, ys, reduction="sum", chunk_size=4, step_fn=lambda x, y: jnp.mean(
        jax.vmap(jax.vmap(mse))(learner(etprop.MultiStepData(x)), y), axis=1))
    learner.reset()
    g_w4, _ = learner.etrace_grad(xs, ys, mse, window=4)
    assert _rel_err({".".join(map(str, k)): v for k, v in g_win.items()}, g_w4) < 1e-10
    with pytest.raises(etprop.ArgumentError, match="not a multiple of chunk_size 3"):
        learner.etrace_grad(xs, ys, step_fn=step_fn, chunk_size=3)
    with pytest.raises(etprop.ArgumentError, match="return_value=True"):
        learner.etrace_grad(xs, ys, step_fn=step_fn, return_losses=True)
    with pytest.raises(etprop.ArgumentError, match="belong to braintrace's convention"):
        learner.etrace_grad(xs, ys, mse, return_value=True)