"""Finite checks (`learner.check_finite`, `etprop.algorithms.finite`): NaN/inf in inputs, hidden
states, traces, losses and gradients is reported by name and step -- as `etprop.NumericalError`
from etprop's drivers, and as JAX's runtime error (message line ``etprop.NumericalError: ...``)
when the learner is called inside the user's own jit / grad / vmap. Off, nothing is traced."""

import logging

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import etprop
from tests.algorithms.models import ElementwiseRNN, mse

B, N_IN, N_HID, N_OUT = 2, 3, 5, 2


@pytest.fixture(autouse=True)
def _quiet_callback_log():
    """JAX logs the exception a debug callback raises, with its traceback; the tests read it."""
    log = logging.getLogger("jax._src.debugging")
    level = log.level
    log.setLevel(logging.CRITICAL)
    yield
    log.setLevel(level)


class Exploding(bs.nn.Module):
    """``h' = 0.5 h + x W`` read out as ``h``: a finite input of 1e38 overflows h at that step."""

    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.full((N_IN, N_OUT), 10.0))
        self.h = bs.HiddenState(jnp.zeros((B, N_OUT)))

    def update(self, x):
        self.h.value = 0.5 * self.h.value + etprop.matmul(x, self.w.value)
        return self.h.value


class TraceOverflow(bs.nn.Module):
    """``h' = 0.9 h + x W`` with a tiny ``W``: inputs of 3e38 two steps running keep ``h`` finite
    (about 1e9) while D-RTRL's trace of ``W``, which sums the inputs, overflows to inf at the
    second (the loss masked out at those steps, so no gradient product overflows there)."""

    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.full((N_IN, N_OUT), 1e-30))
        self.h = bs.HiddenState(jnp.zeros((B, N_OUT)))

    def update(self, x):
        self.h.value = 0.9 * self.h.value + etprop.matmul(x, self.w.value)
        return self.h.value


class NaNBackward(ElementwiseRNN):
    """`ElementwiseRNN` whose output is ``sqrt(0 * z)``: the forward pass is 0, finite; its
    derivative is ``0 * inf``, so every gradient is NaN while the loss's derivative is finite."""

    def update(self, x):
        return jnp.sqrt(0.0 * jnp.abs(super().update(x)))


def _data(T=6, n_in=N_IN, n_out=N_OUT):
    k1, k2 = jax.random.split(jax.random.key(0))
    return jax.random.normal(k1, (T, B, n_in)), jax.random.normal(k2, (T, B, n_out))


def _rnn(**kw):
    model = ElementwiseRNN(N_IN, N_HID, N_OUT)
    model.h.value = jnp.zeros((B, N_HID))
    return etprop.compile(model, etprop.D_RTRL, _data()[0][0], batch_size=B, **kw)


def _step_loss(learner):
    return lambda x, y: jnp.mean(jax.vmap(mse)(learner(x), y))


def _device_line(excinfo) -> str:
    """The line JAX's runtime error gives the exception our callback raised."""
    assert isinstance(excinfo.value, jax.errors.JaxRuntimeError), type(excinfo.value)
    lines = [ln for ln in str(excinfo.value).splitlines() if ln.startswith("etprop.NumericalError: ")]
    assert lines, str(excinfo.value)[-2000:]
    return lines[-1]


# -- etprop's drivers: NumericalError, named, at the step ------------------------------------------


def test_nan_input_to_learner_in_users_jitted_step_fn():
    xs, ys = _data()
    learner = _rnn()
    step_fn = bs.transform.jit(_step_loss(learner))  # the learner runs inside the user's own jit
    with pytest.raises(etprop.NumericalError,
                       match=r"^etrace_grad: the inputs contain NaN or inf \(input 0\) at step 3 \(D_RTRL\(x\)\)"):
        learner.etrace_grad(xs.at[3, 1, 0].set(jnp.nan), ys, step_fn=step_fn)
    learner = _rnn()  # a plain step_fn: the driver sees the slices and names the sequence
    with pytest.raises(etprop.NumericalError,
                       match=r"^etrace_grad: the inputs contain NaN or inf \(sequence 0\) at step 3; check the data"):
        learner.etrace_grad(xs.at[3, 1, 0].set(jnp.nan), ys, step_fn=_step_loss(learner))
    learner = _rnn()
    with pytest.raises(etprop.NumericalError, match=r"\(sequence 1\) at step 5"):  # a target
        learner.etrace_grad(xs, ys.at[5].set(jnp.inf), step_fn=_step_loss(learner))


@pytest.mark.parametrize("form", ["loss_fn", "loss_fn window", "step_fn", "step_fn chunk", "train_online",
                                  "evolve"])
def test_hidden_state_nan_mid_sequence_names_the_state_and_step(form):
    T, k = 20, 4
    xs = jnp.ones((T, B, N_IN)).at[13].set(1e38)  # finite, but x W overflows float32
    ys = jnp.zeros((T, B, N_OUT))
    learner = etprop.compile(Exploding(), etprop.D_RTRL, xs[0], batch_size=B)
    where, step = ("etrace_evolve" if form == "evolve" else "train_online" if form == "train_online"
                   else "etrace_grad"), "at step 13"
    if form == "step_fn chunk":
        step = r"at step 12 \(in the window of steps 12-15\)"
    with pytest.raises(etprop.NumericalError, match=rf"^{where}: hidden state 'h' became NaN or inf {step}; "
                                                    r"the dynamics diverged"):
        if form == "loss_fn":  # closed-form chunks of 16: the step is found again step by step
            learner.etrace_grad(xs, ys, mse)
        elif form == "loss_fn window":
            learner.etrace_grad(xs, ys, mse, window=5)
        elif form == "step_fn":
            learner.etrace_grad(xs, ys, step_fn=_step_loss(learner))
        elif form == "step_fn chunk":
            learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean(
                jax.vmap(jax.vmap(mse))(learner(etprop.MultiStepData(x)), y), axis=1), chunk_size=k)
        elif form == "train_online":
            learner.train_online(xs, ys, mse, optax.sgd(0.0))
        else:
            learner.etrace_evolve(xs)


def test_inf_loss_is_named():
    xs, ys = _data()
    inf_loss = lambda o, y: -jnp.log(jnp.sum(o * 0.0))
    with pytest.raises(etprop.NumericalError, match=r"^etrace_grad: the loss is NaN or inf at step 0; inputs, "
                                                    r"parameters and hidden states are finite"):
        _rnn().etrace_grad(xs, ys, inf_loss)
    learner = _rnn()
    with pytest.raises(etprop.NumericalError, match=r"^etrace_grad: the loss is NaN or inf at step 0"):
        learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean(jax.vmap(inf_loss)(learner(x), y)))


def test_nan_gradient_with_finite_forward_is_named():
    xs, ys = _data()
    nan_grad = lambda o, y: jnp.sqrt(jnp.sum((o - o) ** 2))  # 0, with derivative 0 * inf
    with pytest.raises(etprop.NumericalError, match=r"^etrace_grad: the gradient of '\w+' is NaN or inf at step 0; "
                                                    r"the forward pass is finite"):
        _rnn().etrace_grad(xs, ys, nan_grad)
    learner = _rnn()
    with pytest.raises(etprop.NumericalError, match=r"^etrace_grad: the gradient of '\w+' is NaN or inf at step 0"):
        learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean(jax.vmap(nan_grad)(learner(x), y)))


# -- the learner inside the user's own transformations ---------------------------------------------


def test_nan_input_under_users_jit_surfaces_as_jax_runtime_error():
    xs, ys = _data()
    learner = _rnn()
    states = learner.param_states()

    @bs.transform.jit
    def train_step(x, y):
        return bs.transform.grad(lambda: jnp.mean(jax.vmap(mse)(learner(x), y)), states)()

    jax.block_until_ready(train_step(xs[0], ys[0]))
    jax.block_until_ready(train_step(xs[1], ys[1]))
    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        jax.block_until_ready(train_step(xs[2].at[0, 1].set(jnp.nan), ys[2]))
    assert _device_line(e).startswith("etprop.NumericalError: the inputs contain NaN or inf (input 0) at step 2 "
                                      "(D_RTRL(x)); check the data")
    learner.reset()  # eagerly, the learner raises NumericalError itself
    with pytest.raises(etprop.NumericalError, match=r"^the inputs contain NaN or inf \(input 0\) at step 0"):
        learner(xs[0].at[0, 1].set(jnp.nan))


def test_nan_in_the_backward_pass_under_users_grad():
    xs, ys = _data()
    learner = _rnn()
    states = learner.param_states()

    @bs.transform.jit
    def nan_loss_grad(x, y):  # the loss is finite, its derivative w.r.t. the output is not
        return bs.transform.grad(lambda: jnp.sqrt(jnp.sum((learner(x) - y) * 0.0) ** 2), states)()

    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        jax.block_until_ready(nan_loss_grad(xs[0], ys[0]))
    assert _device_line(e).startswith("etprop.NumericalError: the gradient of the loss with respect to the model's "
                                      "output is NaN or inf at step 0 (backward pass of D_RTRL(x))")

    model = NaNBackward(N_IN, N_HID, N_OUT)
    model.h.value = jnp.zeros((B, N_HID))
    learner = etprop.compile(model, etprop.D_RTRL, xs[0], batch_size=B)
    states = learner.param_states()

    @bs.transform.jit
    def train_step(x, y):
        return bs.transform.grad(lambda: jnp.mean(jax.vmap(mse)(learner(x), y)), states)()

    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        jax.block_until_ready(train_step(xs[0], ys[0]))
    line = _device_line(e)
    assert line.startswith("etprop.NumericalError: the gradient of '") and "is NaN or inf at step 0 (backward " \
        "pass of D_RTRL(x)); the forward pass is finite" in line, line


def test_under_vmap_only_the_bad_member_matters():
    """An ensemble over inputs: the learner mapped by `jax.vmap` (states restored after each
    member's call); the predicate is reduced over the mapped axis, so the check stays one cond."""
    xs, ys = _data()
    learner = _rnn()
    states = learner.param_states()

    def member(x, y):
        with bs.StateTraceStack() as st:
            g = bs.transform.grad(lambda: jnp.mean(jax.vmap(mse)(learner(x), y)), states)()
        st.recovery_original_values()
        return g

    run = jax.jit(jax.vmap(member))
    X, Y = xs[:3], ys[:3]
    jax.block_until_ready(run(X, Y))
    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        jax.block_until_ready(run(X.at[1, 0, 2].set(jnp.inf), Y))
    assert _device_line(e).startswith("etprop.NumericalError: the inputs contain NaN or inf (input 0) at step 0")
    with pytest.raises(jax.errors.JaxRuntimeError) as e:  # a NaN target: only the backward pass sees it
        jax.block_until_ready(run(X, Y.at[2, 1, 0].set(jnp.nan)))
    assert _device_line(e).startswith("etprop.NumericalError: the gradient of the loss with respect to the model's "
                                      "output is NaN or inf at step 0 (backward pass of D_RTRL(x))")


# -- the switch -------------------------------------------------------------------------------------


def test_check_off_raises_nothing_and_traces_no_check():
    xs, ys = _data()
    bad = xs.at[3, 1, 0].set(jnp.nan)
    off = _rnn(check_finite=False)
    assert _rnn().check_finite is True and off.check_finite is False
    g, loss = off.etrace_grad(bad, ys, mse)  # NaN comes back, as asked
    assert not np.isfinite(float(loss))
    off.etrace_grad(bad, ys, step_fn=_step_loss(off))
    off.train_online(bad, ys, mse, optax.sgd(0.1))
    off.etrace_evolve(bad)
    off.reset()
    off(bad[0])

    def user_step(learner):
        states = learner.param_states()

        def f(x, y):
            with bs.StateTraceStack() as st:
                g = bs.transform.grad(lambda: jnp.mean(jax.vmap(mse)(learner(x), y)), states)()
            st.recovery_original_values()
            return g
        return jax.make_jaxpr(f)(xs[0], ys[0])

    on = _rnn()
    assert "debug_callback" in str(user_step(on)) and "is_finite" in str(user_step(on))
    for jaxpr in (user_step(off), _scan_jaxpr(off)):
        assert "debug_callback" not in str(jaxpr) and "is_finite" not in str(jaxpr)
    assert "is_finite" in str(_scan_jaxpr(on)) and "debug_callback" not in str(_scan_jaxpr(on))
    # the same program as before the checks existed: off, the checked call is the plain window
    assert str(user_step(off)) == str(_plain_user_step(off, xs[0], ys[0]))


def _scan_jaxpr(learner):
    xs, ys = _data()
    fn = learner._compiled_scan(mse, window=4, mode="chunk")
    params = learner.params()
    _, hidden, others = learner.graph.mf.values()
    return jax.make_jaxpr(fn)(params, hidden, others, learner.etrace.value, (xs,), ys, jnp.ones(xs.shape[0]))


def _plain_user_step(learner, x, y):
    """``learner(x)`` written out with `run_window` (what it did before the checks)."""
    states = learner.param_states()
    mf = learner.graph.mf

    def call(x):
        params, hidden, others = mf.values()
        out, h2, o2, tr2 = learner.run_window(dict(zip(mf.param_names, params)), hidden, others,
                                              learner.etrace.value, (jnp.expand_dims(x, 0),))
        mf.write(h2, o2)
        learner.etrace.value = tr2
        return jax.tree.map(lambda a: a[0], out)

    def f(x, y):
        with bs.StateTraceStack() as st:
            g = bs.transform.grad(lambda: jnp.mean(jax.vmap(mse)(call(x), y)), states)()
        st.recovery_original_values()
        return g
    return jax.make_jaxpr(f)(x, y)


def test_switch_is_validated_and_can_be_changed():
    with pytest.raises(etprop.ArgumentError, match="check_finite must be True or False"):
        _rnn(check_finite="yes")
    xs, ys = _data()
    learner = _rnn()
    learner.check_finite = False
    learner.etrace_grad(xs.at[0].set(jnp.nan), ys, mse)
    learner.reset()
    learner.check_finite = True  # the compiled drivers are keyed by the switch
    with pytest.raises(etprop.NumericalError, match="inputs contain NaN"):
        learner.etrace_grad(xs.at[0].set(jnp.nan), ys, mse)


def test_drivers_inside_users_jit_report_through_jax():
    """etprop's drivers called inside the user's own jit have no concrete flags to read: JAX
    raises the error when the result is materialised, as for a learner call."""
    xs, ys = _data()
    learner = _rnn()
    grad = bs.transform.jit(lambda xs, ys: learner.etrace_grad(xs, ys, mse))
    jax.block_until_ready(grad(xs, ys))
    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        jax.block_until_ready(grad(xs.at[3, 1, 0].set(jnp.nan), ys))
    assert _device_line(e).startswith("etprop.NumericalError: the inputs contain NaN or inf (input 0) at step 0 (in "
                                      "the window of steps 0-5, etrace_grad); check the data")
    learner = _rnn()
    online = bs.transform.jit(lambda xs, ys: learner.train_online(xs, ys, mse, optax.sgd(0.1))[1])
    with pytest.raises(jax.errors.JaxRuntimeError) as e:
        jax.block_until_ready(online(xs.at[3, 1, 0].set(jnp.nan), ys))
    assert _device_line(e).startswith("etprop.NumericalError: the inputs contain NaN or inf (input 0) at step 3 "
                                      "(train_online)")


def test_bad_finds_every_nan_and_inf():
    from etprop.algorithms.finite import SUM_TEST_SIZE, bad
    for n in (6, SUM_TEST_SIZE):  # tested exactly / by the sum
        x = jnp.ones(n)
        assert not bool(bad(x)) and not bool(jax.jit(bad)(x))
        for v in (jnp.nan, jnp.inf, -jnp.inf):
            assert bool(bad(x.at[n // 2].set(v))) and bool(jax.jit(bad)({"a": x, "b": [x.at[-1].set(v)]}))
        assert bool(bad(x.at[0].set(jnp.inf).at[1].set(-jnp.inf)))  # inf - inf: NaN, still found
    assert not bool(bad(jnp.full((6,), 1e38)))  # finite, though its sum overflows
    assert not bool(bad(jnp.zeros((0,)))) and not bool(bad(jnp.arange(3)))  # empty; integers are not checked
    assert bool(bad(jnp.full((SUM_TEST_SIZE,), jnp.inf, jnp.float16)))
    assert not bool(bad(jnp.full((SUM_TEST_SIZE,), 60000.0, jnp.float16)))  # summed in float32


@pytest.mark.parametrize("chunk", [1, None])
def test_a_trace_that_overflows_is_named_at_its_step(chunk):
    """Per step the drivers check the traces at the end of the call only (a pass over every trace
    at every step costs 1.24x a D-RTRL step) and run a bad call again with every check: the
    message still names the trace and the step it overflowed at, as the 16-step chunks do."""
    T = 12
    xs = jnp.ones((T, B, N_IN)).at[6:8].set(3e38)
    ys = jnp.zeros((T, B, N_OUT))
    learner = etprop.compile(TraceOverflow(), etprop.D_RTRL, xs[0], batch_size=B)
    with pytest.raises(etprop.NumericalError,
                       match=r"^etrace_grad: the eligibility trace of 'w' became NaN or inf at step 7"):
        learner.etrace_grad(xs, ys, mse, mask=jnp.ones(T).at[6:8].set(0.0), closed_form_chunk=chunk)
