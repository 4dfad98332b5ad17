import os

# Compiling is most of this suite's time: a module's tests run 4-5x faster from a warm compilation
# cache. The suite compiles with LLVM's backend optimisation off (XLA's HLO passes, fusions included,
# still run: the fused-reduce miscompile of shared/design/pitfalls.md reproduces at this level too),
# which cuts compile time by about a third; the HLO is the same, only the machine code (and with
# it the last bits of some float results) may differ, within every tolerance the tests use.
# ETPROP_TEST_XLA_OPT=default tests with XLA's default level instead (benchmarks always do). Set
# before jax starts its backend; a level the user's XLA_FLAGS name is kept.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if os.environ.get("ETPROP_TEST_XLA_OPT", "0") != "default" and "xla_backend_optimization_level" not in _FLAGS:
    os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run a test in float64; restore the previous setting afterwards."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


@pytest.fixture
def precision64():
    """float64 for jax *and* brainstate (``environ.set(precision=64)``, which braintools'
    initialisers follow); restores both afterwards."""
    import brainstate
    prev_x64 = jax.config.jax_enable_x64
    prev = brainstate.environ.get("precision", 32)
    brainstate.environ.set(precision=64)
    try:
        yield
    finally:
        brainstate.environ.set(precision=prev)
        jax.config.update("jax_enable_x64", prev_x64)


# -- helpers shared by the test modules (import them from tests.conftest) ----------------------

def bptt_reference(model, xs, ys, step_loss, *, dt=None):
    """The exact gradient of ``sum_t mean_b step_loss(out_tb, y_tb)``, by `jax.grad` over a
    `brainstate.transform.for_loop` of the model itself: independent of etprop's compiler
    and learners. Each step runs in ``environ.context(i=i, t=i * dt)``, as etprop's drivers
    do. Returns ``({'a.b': grad}, loss)`` keyed by dotted state path; the model's states end
    where the sequence leaves them.
    """
    import brainstate
    import jax.numpy as jnp

    params = model.states(brainstate.ParamState)
    T = jax.tree.leaves(xs)[0].shape[0]

    def total():
        def step(i, x, y):
            ctx = brainstate.environ.context(i=i) if dt is None else brainstate.environ.context(i=i, t=i * dt)
            with ctx:
                out = model.update(x)
            per = jax.vmap(step_loss)(out, y) if jnp.ndim(y) > 1 else step_loss(out, y)
            return jnp.mean(per)

        losses = brainstate.transform.for_loop(step, jnp.arange(T), xs, ys)
        return jnp.sum(losses)

    grads, loss = brainstate.transform.grad(total, params, return_value=True)()
    return {".".join(map(str, k)): v for k, v in grads.items()}, loss


def rel_err(a, b) -> float:
    """Largest ``max|a - b| / max|b|`` over matching leaves (mantissas)."""
    import brainunit as u
    import jax.numpy as jnp
    a = [u.get_mantissa(x) for x in jax.tree.leaves(a, is_leaf=u.math.is_quantity)]
    b = [u.get_mantissa(x) for x in jax.tree.leaves(b, is_leaf=u.math.is_quantity)]
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30)) for x, y in zip(a, b))


def cosine(a, b) -> float:
    """Cosine between two gradient pytrees, all leaves (mantissas) concatenated."""
    import brainunit as u
    import jax.numpy as jnp
    flat = lambda t: jnp.concatenate([jnp.ravel(u.get_mantissa(x))
                                      for x in jax.tree.leaves(t, is_leaf=u.math.is_quantity)])
    a, b = flat(a), flat(b)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-300))


def train_with_braintools(learner, model, xs, ys, *, lr: float, updates: int) -> list:
    """The training loop braintrace's docs write: a braintools Adam over the model's ParamStates, a
    fresh step_fn lambda per call, braintrace's mean reduction, under `brainstate.transform.jit`;
    the learner is reset before every update. Returns the losses."""
    import brainstate
    import braintools
    import jax.numpy as jnp

    opt = braintools.optim.Adam(lr=lr)
    opt.register_trainable_weights(model.states(brainstate.ParamState))

    @brainstate.transform.jit
    def train(xs, ys):
        grads, loss = learner.etrace_grad(xs, ys, step_fn=lambda x, y: jnp.mean((learner(x) - y) ** 2),
                                          return_value=True, loss_output="scalar")
        opt.update(grads)
        return loss

    losses = []
    for _ in range(updates):
        learner.reset()
        losses.append(float(train(xs, ys)))
    return losses


# -- helpers shared by the learner tests (tests/algorithms, tests/nn) ----------------------------

def seq_data(model_in, model_out, T, B, seed=1, scale=1.0):
    """``(xs, ys)``: normal inputs (times ``scale``) and targets, leading ``(T,)`` or ``(T, B)``."""
    import jax
    k1, k2 = jax.random.split(jax.random.key(seed))
    lead = (T,) if B is None else (T, B)
    return (jax.random.normal(k1, lead + (model_in,)) * scale, jax.random.normal(k2, lead + (model_out,)))


def zero_init_grads(model_fn, algo, xs, ys, B=None, **opts):
    """``(grads, loss, learner)`` of ``etrace_grad(xs, ys, mse)`` on ``model_fn()`` compiled with
    ``algo``; with ``B`` every hidden state is zeroed with a leading batch axis first."""
    import brainstate as bs
    import jax.numpy as jnp

    import etprop
    from tests.algorithms.models import mse

    model = model_fn()
    if B is not None:
        for st_ in model.states(bs.HiddenState).values():
            st_.value = jnp.zeros((B,) + st_.value.shape)
    learner = etprop.compile(model, algo, xs[0], batch_size=B, **opts)
    grads, loss = learner.etrace_grad(xs, ys, mse)
    return grads, loss, learner


def plain_rel_err(a, b):
    """Largest ``max|a - b| / max|b|`` over matching leaves (plain arrays)."""
    import jax.numpy as jnp
    a, b = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30)) for x, y in zip(a, b))


def plain_cos(a, b):
    """Cosine between two pytrees of plain arrays, all leaves concatenated."""
    import jax.numpy as jnp
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(b)])
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
