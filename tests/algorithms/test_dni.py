"""DNI: synthetic gradients at window exits, for the parameters that have no trace.

The defining properties: an untrained (zero) synthesiser is exactly the truncated window rule;
a synthesiser that returns the true future cotangent makes the windows' gradients of the
untraced parameters telescope to BPTT; the traced parameters' gradients never change; a
synthesiser fit by `train_synthetic_gradient` moves the untraced gradients towards BPTT.
"""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from tests.algorithms.models import ElementwiseRNN
from tests.conftest import bptt_reference, rel_err

T, K = 12, 3  # four windows of three steps
PLAIN, TRACED = ("w_in", "b"), ("a", "w")


class PlainInputCell(bs.nn.Module):
    """A two-state group (g, v) with untraced parameters feeding it:

    u = tanh(x @ w_in)                                   (plain op: w_in untraced)
    g' = sigmoid(a) * g + matmul(u, w) + b               (a, w traced; b plain)
    v' = 0.8 v + tanh(g');  out = v' @ w_out             (w_out: readout)

    The hidden Jacobian is per-position block-diagonal, so D-RTRL is exact for a and w.
    """

    def __init__(self, n_in=3, n_hid=4, n_out=2, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 5)
        self.w_in = bs.ParamState(jax.random.normal(k[0], (n_in, n_in)) * 0.7)
        self.w = bs.ParamState(jax.random.normal(k[1], (n_in, n_hid)) * 0.7)
        self.a = bs.ParamState(jax.random.normal(k[2], (n_hid,)))
        self.b = bs.ParamState(jax.random.normal(k[3], (n_hid,)) * 0.3)
        self.w_out = bs.ParamState(jax.random.normal(k[4], (n_hid, n_out)) * 0.5)
        self.n = n_hid

    def init_state(self, batch_size=None, **kwargs):
        shape = (self.n,) if batch_size is None else (batch_size, self.n)
        self.g, self.v = bs.HiddenState(jnp.zeros(shape)), bs.HiddenState(jnp.zeros(shape))

    def update(self, x):
        u = jnp.tanh(x @ self.w_in.value)
        decay = etprop.element_wise(self.a.value, weight_fn=jax.nn.sigmoid)
        self.g.value = decay * self.g.value + etprop.matmul(u, self.w.value) + self.b.value
        self.v.value = 0.8 * self.v.value + jnp.tanh(self.g.value)
        return self.v.value @ self.w_out.value


class LinearRNN(bs.nn.Module):
    """h' = sigmoid(a) * h + x @ w_in + b, out = h' @ w_out, from a random h^0: linear, so the
    future cotangent of a quadratic loss is (up to the finite horizon) affine in h."""

    def __init__(self, n_in=3, n_hid=4, n_out=2, seed=0):
        super().__init__()
        k = jax.random.split(jax.random.key(seed), 4)
        self.w_in = bs.ParamState(jax.random.normal(k[0], (n_in, n_hid)) * 0.5)
        self.b = bs.ParamState(jax.random.normal(k[1], (n_hid,)) * 0.5)
        self.a = bs.ParamState(jnp.linspace(-1.0, 1.0, n_hid))
        self.w_out = bs.ParamState(jax.random.normal(k[2], (n_hid, n_out)) * 0.5)
        self.n, self.key = n_hid, k[3]

    def init_state(self, batch_size=None, **kwargs):
        shape = (self.n,) if batch_size is None else (batch_size, self.n)
        self.h = bs.HiddenState(jax.random.normal(self.key, shape))

    def update(self, x):
        decay = etprop.element_wise(self.a.value, weight_fn=jax.nn.sigmoid)
        self.h.value = decay * self.h.value + x @ self.w_in.value + self.b.value
        return self.h.value @ self.w_out.value


def sq(out, y):
    return jnp.sum((out - y) ** 2)


def _model(cls, batch_size, **kw):
    m = cls(**kw)
    bs.nn.init_all_states(m, batch_size=batch_size)
    return m


def _data(B, T=T, n_in=3, n_out=2):
    lead = (T,) if B is None else (T, B)
    return (jax.random.normal(jax.random.key(1), lead + (n_in,)),
            jax.random.normal(jax.random.key(2), lead + (n_out,)))


def bptt_with_future_cotangents(learner, model, xs, ys, step_loss, k):
    """By BPTT on the whole sequence, in one reverse pass: the parameters' gradients (keyed as
    `bptt_reference` keys them) and ``dL_{>b}/dh^b`` at every window exit ``b = k, 2k, ..., T``
    (0 at T) as each group's ``(*positions, states)`` slab: the gradient w.r.t. a zero
    perturbation added to the hidden states after each step's output."""
    hidden = learner.graph.mf.hidden_states
    init = [st.value for st in hidden]

    def total(eps):
        def step(x, y, e):
            loss = step_loss(model.update(x), y)
            for st, ei in zip(hidden, e):
                st.value = st.value + ei
            return loss

        return jnp.sum(bs.transform.for_loop(step, xs, ys, eps))

    params = model.states(bs.ParamState)
    dp, g = bs.transform.grad(total, params, argnums=0)([jnp.zeros(xs.shape[:1] + v.shape) for v in init])
    for st, v in zip(hidden, init):
        st.value = v
    future = [{grp.index: jnp.stack([g[m][b - 1] for m in grp.members], -1) for grp in learner.graph.groups}
              for b in range(k, xs.shape[0] + 1, k)]
    return {".".join(map(str, p)): v for p, v in dp.items()}, future


_RUNS = {}


@pytest.fixture
def mixed_runs(precision64):
    """Window gradients on PlainInputCell (batch 2): D-RTRL (the truncated rule), DNI with a zero
    synthesiser and DNI with a random one, and BPTT; computed once for the tests below."""
    if not _RUNS:
        xs, ys = _data(2)
        drtrl = etprop.compile(_model(PlainInputCell, 2), "d_rtrl", xs[0], batch_size=2)
        _RUNS["truncated"] = drtrl.etrace_grad(xs, ys, sq, window=K)[0]
        dni = etprop.compile(_model(PlainInputCell, 2), "dni", xs[0], batch_size=2)
        dni.attach_synthesizer(etprop.SyntheticGradient(dni.group_signal_shapes()))
        _RUNS["zero"] = dni.etrace_grad(xs, ys, sq, window=K)[0]
        dni.reset()
        dni.attach_synthesizer(etprop.SyntheticGradient(dni.group_signal_shapes(), scale=0.5, seed=3))
        _RUNS["random"] = dni.etrace_grad(xs, ys, sq, window=K)[0]
        _RUNS["bptt"] = bptt_reference(_model(PlainInputCell, 2), xs, ys, sq)[0]
    return _RUNS


def test_untrained_synthesiser_is_exactly_the_truncated_rule(mixed_runs):
    zero, truncated = mixed_runs["zero"], mixed_runs["truncated"]
    assert set(zero) == set(truncated) == set(PLAIN + TRACED + ("w_out",))
    for name in truncated:
        assert np.array_equal(zero[name], truncated[name]), name
    # and the truncated rule does lose the untraced parameters' cross-window credit here
    assert min(rel_err(truncated[n], mixed_runs["bptt"][n]) for n in PLAIN) > 0.1


def test_synthesiser_leaves_the_traced_gradients_unchanged(mixed_runs):
    random, truncated = mixed_runs["random"], mixed_runs["truncated"]
    for name in TRACED + ("w_out",):  # traced, and a readout that reaches no hidden state
        assert np.array_equal(random[name], truncated[name]), name
    for name in PLAIN:
        assert rel_err(random[name], truncated[name]) > 1e-3, name
    for name in TRACED:  # D-RTRL is exact on this model: the traces carry the credit
        assert rel_err(random[name], mixed_runs["bptt"][name]) < 1e-10, name


def test_oracle_synthesiser_telescopes_to_bptt(precision64):
    xs, ys = _data(None)
    model = _model(PlainInputCell, None)
    learner = etprop.compile(model, "dni", xs[0])
    synth = etprop.SyntheticGradient(learner.group_signal_shapes())
    learner.attach_synthesizer(synth)
    ref, future = bptt_with_future_cotangents(learner, model, xs, ys, sq, K)
    assert all(float(jnp.max(jnp.abs(f))) == 0.0 for f in future[-1].values())  # nothing follows h^T
    total = None
    for k, g in enumerate(future):  # the oracle M(h) = 0 h + g_k: the exact future of window k
        for gid, slab in g.items():
            synth.biases[gid].value = jnp.reshape(slab, (-1,))
        grads, _ = learner.etrace_grad(xs[k * K:(k + 1) * K], ys[k * K:(k + 1) * K], sq, window=K)
        total = grads if total is None else jax.tree.map(jnp.add, total, grads)
    assert set(ref) == set(total)
    errs = {n: rel_err(total[n], ref[n]) for n in ref}
    assert max(errs.values()) < 1e-6, errs


def test_fitted_synthesiser_moves_untraced_gradients_towards_bptt(precision64):
    B, T_, k = 2, 24, 4
    xs = 0.5 * jax.random.normal(jax.random.key(1), (T_, B, 3)).at[k:].set(0.0)  # a cue, then free decay
    ys = jnp.zeros((T_, B, 2))
    learner = etprop.compile(_model(LinearRNN, B), "dni", xs[0], batch_size=B)
    learner.attach_synthesizer(etprop.SyntheticGradient(learner.group_signal_shapes()))
    params = learner.params()
    losses = etprop.train_synthetic_gradient(learner, xs, chunk_size=k, loss_fn=lambda out: jnp.sum(out ** 2) / B,
                                             lr=0.1, epochs=40)
    assert len(losses) == 40 and losses[-1] < 0.3 * losses[0], losses  # measured: 0.082 -> 0.015
    assert all(np.array_equal(v, learner.params()[n]) for n, v in params.items())  # the model did not move
    learner.reset()
    fitted, _ = learner.etrace_grad(xs, ys, sq, window=k)
    learner.attach_synthesizer(etprop.SyntheticGradient(learner.group_signal_shapes()))  # untrained: truncated
    learner.reset()
    truncated, _ = learner.etrace_grad(xs, ys, sq, window=k)
    ref, _ = bptt_reference(_model(LinearRNN, B), xs, ys, sq)
    for name in ("w_in", "b"):  # measured: w_in 0.30 -> 0.021, b 0.39 -> 0.039
        err_fit, err_trunc = rel_err(fitted[name], ref[name]), rel_err(truncated[name], ref[name])
        assert err_trunc > 0.2 and err_fit < 0.25 * err_trunc, (name, err_fit, err_trunc)
    assert rel_err(fitted["a"], ref["a"]) < 1e-10


def test_fit_with_a_braintools_optimiser_moves_only_the_synthesiser(precision64):
    import braintools
    xs, _ = _data(2)
    learner = etprop.compile(_model(PlainInputCell, 2), "dni", xs[0], batch_size=2)
    synth = etprop.SyntheticGradient(learner.group_signal_shapes())
    learner.attach_synthesizer(synth)
    opt = braintools.optim.SGD(lr=0.05)
    opt.register_trainable_weights(synth.states_dict())
    params = learner.params()
    losses = etprop.train_synthetic_gradient(learner, xs, chunk_size=K, optimizer=opt, epochs=2, batch_size=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert float(jnp.max(jnp.abs(synth.weights[0].value))) > 0
    assert all(np.array_equal(v, learner.params()[n]) for n, v in params.items())


def test_compile_by_name_and_braintrace_window_convention(mixed_runs):
    assert etprop.RuleConfig.of("dni").build() is etprop.DNI is etprop.rule("DNI")
    assert etprop.RuleConfig.of("dni").signal == "bootstrapped"
    xs, ys = _data(2)
    learner = etprop.compile(_model(PlainInputCell, 2), "dni", xs[0], batch_size=2)
    assert type(learner) is etprop.DNI and learner.group_signal_shapes() == {0: (4, 2)}
    assert "synthetic gradient" in learner.report() and "w_in, b" in learner.report()
    learner.attach_synthesizer(etprop.SyntheticGradient(learner.group_signal_shapes(), scale=0.5, seed=3))
    ours = mixed_runs["random"]  # etrace_grad(xs, ys, sq, window=K) of the same model and synthesiser

    @bs.transform.jit
    def braintrace_form(xs, ys):  # braintrace's: step_fn calls the learner on a window
        step = lambda x, y: jnp.mean(jnp.sum((learner(etprop.MultiStepData(x)) - y) ** 2, -1), -1)
        return learner.etrace_grad(xs, ys, step_fn=step, chunk_size=K, reduction="sum")

    learner.reset()
    theirs = braintrace_form(xs, ys)
    assert rel_err({k[0]: v for k, v in theirs.items()}, {k[0]: ours[k[0]] for k in theirs}) < 1e-12


def test_errors_name_the_argument_and_what_to_do(precision64):
    model = ElementwiseRNN(3, 4, 2)
    learner = etprop.compile(model, "dni", jnp.ones(3))
    with pytest.raises(etprop.ArgumentError, match=r"no synthesizer.*SyntheticGradient\(learner.group_signal_shapes"):
        learner.etrace_grad(jnp.ones((6, 3)), jnp.ones((6, 2)), sq, window=3)
    with pytest.raises(etprop.ArgumentError, match=r"no synthesizer"):
        etprop.train_synthetic_gradient(learner, jnp.ones((6, 3)))
    with pytest.raises(etprop.ArgumentError, match=r"built for hidden groups \{0: \(5, 1\)\}.*\{0: \(4, 1\)\}"):
        learner.attach_synthesizer(etprop.SyntheticGradient({0: (5, 1)}))
    with pytest.raises(etprop.ArgumentError, match="must be an etprop.SyntheticGradient, got dict"):
        etprop.DNI(model, synthesizer={0: (4, 1)})
    with pytest.raises(etprop.ArgumentError, match="group_shapes"):
        etprop.SyntheticGradient({0: (4, 0)})
    learner.attach_synthesizer(etprop.SyntheticGradient(learner.group_signal_shapes()))
    with pytest.raises(etprop.ArgumentError, match=r"length 7 is not a multiple of window=3.*Trim.*to 6"):
        learner.etrace_grad(jnp.ones((7, 3)), jnp.ones((7, 2)), sq, window=3)
    with pytest.raises(etprop.ArgumentError, match=r"length 7 is not a multiple of chunk_size=3"):
        etprop.train_synthetic_gradient(learner, jnp.ones((7, 3)), chunk_size=3)
    with pytest.raises(etprop.ArgumentError, match=r"chunk_size must be an int >= 1, got 0"):
        etprop.train_synthetic_gradient(learner, jnp.ones((6, 3)), chunk_size=0)
    with pytest.raises(etprop.ArgumentError, match=r"batch_size=4.*compiled for batch_size=None"):
        etprop.train_synthetic_gradient(learner, jnp.ones((6, 3)), batch_size=4)
    with pytest.raises(etprop.ArgumentError, match="needs an etprop.DNI learner, got D_RTRL"):
        etprop.train_synthetic_gradient(etprop.D_RTRL(model), jnp.ones((6, 3)))
    with pytest.raises(etprop.NotSupportedError, match="train_online"):
        learner.train_online(jnp.ones((6, 3)), jnp.ones((6, 2)), sq, None)
