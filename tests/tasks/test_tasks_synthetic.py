"""etprop.tasks: shapes, determinism, masks, ground-truth labels, metrics and argument checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from etprop.errors import ArgumentError
from etprop.tasks import TASKS, Adding, Batch, Copying, DMS, Evidence, Pattern, Task, get_task

# Small sizes keep compilation and sampling cheap; semantics do not depend on them.
SMALL = {"copying": {}, "dms": {"delay": 10, "cue_steps": 15, "recall_steps": 15}, "evidence": {"delay": 10},
         "pattern": {"length": 40, "n_patterns": 3}, "adding": {"length": 20}}
B = 256  # one batch size throughout: one compilation per task configuration


@functools.lru_cache(maxsize=None)
def _jitted(task):
    return jax.jit(task.batch, static_argnums=1)


def sample(task, seed=0, batch_size=B):
    return _jitted(task)(jax.random.key(seed), batch_size)


def small(name, **kw):
    return get_task(name, **{**SMALL[name], **kw})


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shapes_and_dtypes(name):
    task = small(name)
    batch = sample(task)
    T = task.n_steps
    assert isinstance(task, Task) and task.name == name and isinstance(batch, Batch)
    assert batch.inputs.shape == (T, B, task.n_in) and batch.inputs.dtype == jnp.float32
    assert batch.mask.shape == (T,) and batch.mask.dtype == jnp.float32
    if task.kind == "classification":
        assert batch.targets.shape == (T, B) and batch.targets.dtype == jnp.int32
        assert int(batch.targets.min()) >= 0 and int(batch.targets.max()) < task.n_out
    else:
        assert task.kind == "regression"
        assert batch.targets.shape == (T, B, task.n_out) and batch.targets.dtype == jnp.float32
    if task.spiking_input:
        assert set(np.unique(np.asarray(batch.inputs))) <= {0.0, 1.0}
    assert len(jax.tree.leaves(batch)) == 3


@pytest.mark.parametrize("name", ["adding", "evidence"])  # float and spike paths
def test_dtypes_hold_under_x64(name, x64):
    batch = jax.jit(small(name).batch, static_argnums=1)(jax.random.key(0), 2)
    assert batch.inputs.dtype == jnp.float32 and batch.mask.dtype == jnp.float32
    assert batch.targets.dtype in (jnp.int32, jnp.float32)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_per_key(name):
    task = small(name)
    a, b, c = sample(task, 0), sample(task, 0), sample(task, 1)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # Pattern's inputs are frozen; with several patterns the key still picks which one is shown.
    assert not np.array_equal(a.targets, c.targets) or not np.array_equal(a.inputs, c.inputs)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_perfect_prediction_scores_one(name):
    task = small(name)
    batch = sample(task)
    if task.kind == "classification":
        outs = 20.0 * jax.nn.one_hot(batch.targets, task.n_out)
    else:
        outs = batch.targets
    assert float(task.accuracy(outs, batch)) == pytest.approx(1.0, abs=1e-5)
    assert float(task.loss(outs, batch)) < 1e-6


@pytest.mark.parametrize("name", sorted(TASKS))
def test_constant_guess_scores_about_chance(name):
    task = small(name)
    batch = sample(task)
    T = task.n_steps
    if task.kind == "classification":
        outs = jnp.zeros((T, B, task.n_out)).at[..., 0].set(1.0)      # always class 0
        tol = 0.1                                                      # ~3 sd at 256 trials
    else:
        # The best constant: the targets' mean over the masked entries of this batch.
        w = batch.mask[:, None, None]
        mean = jnp.sum(w * batch.targets, axis=(0, 1)) / (jnp.sum(batch.mask) * B)
        outs = jnp.broadcast_to(mean, batch.targets.shape)
        tol = 0.3                                                      # adding: ~3 sd at 256 trials
    assert float(task.accuracy(outs, batch)) == pytest.approx(task.chance, abs=tol)


def test_step_loss_is_per_sample_and_vmappable():
    cls, reg = Copying(), Adding()
    out = jnp.array([1.0, 2.0, 0.5, -1.0])
    assert float(cls.step_loss(out, 1)) == pytest.approx(-float(jax.nn.log_softmax(out)[1]), rel=1e-6)
    assert float(reg.step_loss(jnp.array([0.5]), jnp.array([2.0]))) == pytest.approx(2.25)
    outs = jnp.ones((5, 4))
    np.testing.assert_allclose(jax.vmap(cls.step_loss)(outs, jnp.arange(5) % 4), np.full(5, np.log(4)), rtol=1e-6)


def test_loss_is_mask_weighted_mean():
    task = Copying()
    batch = sample(task)
    outs = jax.random.normal(jax.random.key(3), (task.n_steps, B, task.n_out))
    per = np.asarray(jax.vmap(jax.vmap(task.step_loss))(outs, batch.targets))
    on = np.asarray(batch.mask) > 0
    assert float(task.loss(outs, batch)) == pytest.approx(per[on].mean(), rel=1e-5)


# -- ground truth, task by task -----------------------------------------------------------------------

def test_copying_layout_and_labels():
    task = small("copying")
    batch = sample(task)
    x, y, m = (np.asarray(a) for a in (batch.inputs, batch.targets, batch.mask))
    L, D, S = task.length, task.delay, task.n_symbols
    assert task.n_steps == 2 * L + D and task.chance == pytest.approx(1 / S)
    np.testing.assert_array_equal(m, [0] * (L + D) + [1] * L)
    shown = x[:L, :, :S]
    assert np.all(shown.sum(-1) == 1) and np.all(x[:L, :, S] == 0)        # one symbol, no go
    assert np.all(x[L:L + D] == 0)                                          # blank delay
    assert np.all(x[L + D:, :, S] == 1) and np.all(x[L + D:, :, :S] == 0)   # go, no symbol
    np.testing.assert_array_equal(y[L + D:], shown.argmax(-1))              # recall in order


def test_evidence_label_is_majority_side_of_cue_spikes():
    # Saturating cue rate (one spike per neuron and step) and no noise: every cue is unambiguous.
    task = Evidence(n_cues=5, cue_steps=4, gap_steps=2, delay=3, recall_steps=4, cue_rate=1000.0,
                    noise_rate=0.0, pop_size=6, dt=1.0)
    batch = sample(task)
    x, y, m = (np.asarray(a) for a in (batch.inputs, batch.targets, batch.mask))
    p, period = 6, 6
    left, right, recall = x[..., :p].sum(-1), x[..., p:2 * p].sum(-1), x[..., 2 * p:3 * p].sum(-1)
    votes = []
    for c in range(5):
        w = slice(c * period, c * period + 4)
        l, r = left[w].sum(0), right[w].sum(0)
        assert np.all((l > 0) != (r > 0))                                    # exactly one side per cue
        votes.append(r > 0)
        assert np.all(left[c * period + 4:(c + 1) * period] == 0)           # silent gaps
    expected = (np.sum(votes, axis=0) > 2).astype(np.int32)
    np.testing.assert_array_equal(y, np.broadcast_to(expected, y.shape))
    np.testing.assert_array_equal(m, (np.arange(task.n_steps) >= task.n_steps - 4).astype(np.float32))
    assert np.all(recall[m > 0] == p) and np.all(recall[m == 0] == 0)
    assert 0 < expected.mean() < 1


def test_evidence_noise_rate():
    task = small("evidence")
    x = np.asarray(sample(task).inputs)
    p = task.noise_rate * task.dt * 1e-3                                          # 10 Hz at dt ms
    assert x[..., 3 * task.pop_size:].mean() == pytest.approx(p, rel=0.2)


@pytest.mark.parametrize("n_stimuli", [2, 3])
def test_dms_label_is_match_of_sample_and_test(n_stimuli):
    task = DMS(n_stimuli=n_stimuli, cue_steps=5, delay=7, recall_steps=3, cue_rate=500.0,
               noise_rate=0.0, pop_size=4, dt=1.0)
    batch = sample(task)
    x, y = np.asarray(batch.inputs), np.asarray(batch.targets)
    counts = x[..., :4 * n_stimuli].reshape(task.n_steps, B, n_stimuli, 4).sum(-1)  # (T, B, S)
    in_sample, in_test, in_recall = task.windows()
    seen_sample, seen_test = counts[in_sample].sum(0), counts[in_test].sum(0)
    assert np.all((seen_sample > 0).sum(-1) == 1) and np.all((seen_test > 0).sum(-1) == 1)
    expected = (seen_sample.argmax(-1) == seen_test.argmax(-1)).astype(np.int32)
    np.testing.assert_array_equal(y, np.broadcast_to(expected, y.shape))
    assert expected.mean() == pytest.approx(0.5, abs=0.1)
    assert np.all(counts[~(in_sample | in_test)] == 0)                      # silent delay / recall
    np.testing.assert_array_equal(np.asarray(batch.mask), in_recall.astype(np.float32))
    assert task.chance == 0.5 and task.n_out == 2


def test_adding_target_is_sum_of_marked_values():
    task = small("adding")
    batch = sample(task)
    x, y = np.asarray(batch.inputs), np.asarray(batch.targets)
    values, marker, half = x[..., 0], x[..., 1], task.length // 2
    assert np.all(marker.sum(0) == 2)
    assert np.all(marker[:half].sum(0) == 1) and np.all(marker[half:].sum(0) == 1)  # one per half
    np.testing.assert_allclose(y[-1, :, 0], (values * marker).sum(0), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch.mask), [0] * (task.length - 1) + [1])


def test_pattern_input_is_frozen_and_seeded():
    task = Pattern(length=30, n_inputs=8, n_outputs=2)
    a, b = sample(task, 0, batch_size=4), sample(task, 1, batch_size=4)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.inputs[:, 0], task.frozen_inputs[0])
    np.testing.assert_array_equal(a.inputs[:, 3], a.inputs[:, 0])            # same for every sample
    np.testing.assert_array_equal(np.asarray(a.mask), np.ones(30))
    again = Pattern(length=30, n_inputs=8, n_outputs=2)
    np.testing.assert_array_equal(again.frozen_inputs, task.frozen_inputs)
    other = Pattern(length=30, n_inputs=8, n_outputs=2, seed=1)
    assert not np.array_equal(other.frozen_inputs, task.frozen_inputs)
    assert not np.array_equal(other.patterns, task.patterns)
    np.testing.assert_allclose(np.abs(task.patterns).max(axis=1), 1.0, rtol=1e-6)  # peak |target| 1


def test_pattern_samples_pair_inputs_with_their_target():
    task = small("pattern")
    batch = sample(task)
    for i in range(32):
        k = [np.array_equal(batch.inputs[:, i], f) for f in task.frozen_inputs].index(True)
        np.testing.assert_array_equal(batch.targets[:, i], task.patterns[k])


# -- configuration, errors, identity ---------------------------------------------------------------------

def test_overrides_and_registry():
    assert set(TASKS) == {"copying", "dms", "evidence", "pattern", "adding"}
    task = get_task("copying", n_symbols=6, length="3", delay=0)              # strings parse (CLI)
    assert (task.n_symbols, task.length, task.delay, task.n_in, task.n_out, task.n_steps) == (6, 3, 0, 7, 6, 6)
    assert get_task("pattern", freqs="1,4").freqs == (1.0, 4.0)
    assert get_task("dms").spiking_input and not get_task("adding").spiking_input
    assert Copying().config == {"n_symbols": 4, "length": 5, "delay": 10}


@pytest.mark.parametrize("name, kw, needle", [
    ("nope", {}, "copying"),
    ("copying", {"lenght": 3}, "lenght"),
    ("copying", {"length": 0}, "length"),
    ("copying", {"delay": -1}, "delay"),
    ("copying", {"n_symbols": 1}, "n_symbols"),
    ("copying", {"length": 2.5}, "length"),
    ("copying", {"length": "abc"}, "length"),
    ("copying", {"length": True}, "length"),
    ("evidence", {"n_cues": 4}, "n_cues"),
    ("evidence", {"cue_rate": 2000.0}, "cue_rate"),
    ("dms", {"noise_rate": -1.0}, "noise_rate"),
    ("dms", {"dt": 0.0}, "dt"),
    ("pattern", {"freqs": (1.0, -2.0)}, "freqs"),
    ("adding", {"length": 1}, "length"),
])
def test_bad_arguments_raise(name, kw, needle):
    with pytest.raises(ArgumentError, match=needle):
        get_task(name, **kw)


def test_tasks_are_immutable_hashable_values():
    a, b = Copying(delay=3), get_task("copying", delay=3)
    assert a == b and hash(a) == hash(b) and a != Copying() and a != Adding()
    with pytest.raises(AttributeError):
        a.delay = 5
    f = jax.jit(lambda key, task: task.batch(key, 2).inputs, static_argnums=1)
    assert f(jax.random.key(0), a).shape == (a.n_steps, 2, a.n_in)
