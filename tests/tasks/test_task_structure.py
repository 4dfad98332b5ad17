"""The literature's set-ups: the default `evidence` and `dms` tasks and the network and run
settings `etprop train --task T` builds for them (issue 17)."""

import jax
import numpy as np
import pytest

from etprop.errors import ArgumentError
from etprop.experiment.config import GLOBAL_DEFAULTS, TrainConfig
from etprop.tasks import DMS, Evidence, get_task


def test_default_evidence_is_the_cue_accumulation_task_of_eprop():
    task = Evidence()
    assert task.dt == 10.0                                          # ms per step
    # four populations of 10 input neurons: left, right, recall, noise
    assert (task.pop_size, task.n_noise, task.n_in) == (10, 10, 40)
    # 7 cues of 100 ms, each followed by 50 ms of silence, a 1,000 ms delay, a 150 ms recall
    ms = lambda steps: steps * task.dt
    assert task.n_cues == 7 and (ms(task.cue_steps), ms(task.gap_steps)) == (100.0, 50.0)
    assert (ms(task.delay), ms(task.recall_steps), ms(task.n_steps)) == (1000.0, 150.0, 2200.0)
    cue = task.cue_of_step()
    starts = [int(np.flatnonzero(cue == c)[0]) for c in range(7)]
    assert starts == [15 * c for c in range(7)] and all((cue == c).sum() == 10 for c in range(7))
    assert np.all(cue[7 * 15:] == -1)                               # nothing shown through the delay
    mask = task.recall_mask()
    assert mask.sum() == 15 and np.all(mask[-15:] == 1)
    assert (task.cue_rate, task.noise_rate) == (40.0, 10.0)         # Hz


def test_default_evidence_input_rates_and_silent_delay():
    task = Evidence()
    batch = jax.jit(task.batch, static_argnums=1)(jax.random.key(0), 128)
    x = np.asarray(batch.inputs)                                    # (T, B, 40)
    cue_end, recall0 = 7 * 15, task.n_steps - task.recall_steps
    left, right, recall, noise = (x[..., 10 * k:10 * (k + 1)] for k in range(4))
    assert np.all(left[cue_end:] == 0) and np.all(right[cue_end:] == 0)        # cues only in the cue period
    assert np.all(recall[:recall0] == 0) and recall[recall0:].mean() == pytest.approx(0.4, abs=0.03)
    assert noise.mean() == pytest.approx(0.1, abs=0.01)             # 10 Hz x 10 ms
    shown = np.asarray(task.cue_of_step() >= 0)
    cue_spikes = (left + right)[shown].mean()                       # one side fires during a cue
    assert cue_spikes == pytest.approx(0.4, abs=0.03)               # 40 Hz x 10 ms


def test_default_dms_has_a_long_delay():
    task = DMS()
    assert task.dt == 2.0                                            # ms per step
    # a 1,000 ms delay of 500 steps (issue 17: delays of 500-1,000 steps); 150 ms periods
    assert task.delay >= 500 and task.delay * task.dt == 1000.0
    assert (task.cue_steps, task.recall_steps) == (75, 75) and task.n_steps == 725
    sample, test, decision = task.windows()
    assert np.flatnonzero(sample).tolist() == list(range(75))
    assert np.flatnonzero(test).tolist() == list(range(575, 650))    # after 500 silent steps
    assert decision.sum() == 75 and np.all(decision[-75:])
    batch = jax.jit(task.batch, static_argnums=1)(jax.random.key(1), 64)
    x = np.asarray(batch.inputs)
    stim = x[:, :, :20]
    assert np.all(stim[75:575] == 0)                                 # silent delay
    shown = stim[:75].reshape(75, 64, 2, 10).max(axis=-1)            # which stimulus fires
    assert np.all(shown.sum(axis=-1) <= 1)
    assert stim[:75].sum(axis=-1).mean() == pytest.approx(10 * 0.08, abs=0.05)   # 40 Hz x 2 ms x 10
    assert x[..., 30:].mean() == pytest.approx(0.02, abs=0.005)      # noise: 10 Hz x 2 ms


def test_tasks_give_their_run_settings_and_explicit_ones_win():
    cfg = TrainConfig(task="evidence")
    assert (cfg.model, cfg.hidden, cfg.batch, cfg.steps, cfg.schedule_steps) == ("alif", 100, 64, 600, 600)
    dms = TrainConfig(task="dms")
    assert (dms.model, dms.hidden, dms.batch, dms.steps, dms.schedule_steps, dms.lr) == \
        ("alif", 100, 32, 1000, 1000, 0.025)
    pattern = TrainConfig(task="pattern")  # the paper's LIF network fits the sinusoids
    assert (pattern.model, pattern.hidden, pattern.batch, pattern.steps, pattern.schedule_steps) == \
        ("lif", 64, 32, 300, 300)
    plain = TrainConfig()
    assert {k: getattr(plain, k) for k in GLOBAL_DEFAULTS} == GLOBAL_DEFAULTS
    mine = TrainConfig(task="evidence", model="lif", hidden=8, batch=2, steps=3)
    assert (mine.model, mine.hidden, mine.batch, mine.steps, mine.schedule_steps) == ("lif", 8, 2, 3, 600)


def test_alif_network_is_half_lif_half_adaptive():
    import brainunit as u

    from etprop.experiment.models import build_model

    net = build_model("alif", 40, 10, 2, dt=10.0)
    beta = np.asarray(net.rec.neuron.beta)
    assert net.n_adaptive == 5 and np.all(beta[:5] == 0) and np.all(beta[5:] > 0)
    assert net.rec.neuron._tau_a._fixed == 2000.0 * u.ms


def test_run_traces_spiking_models_with_the_tasks_dt():
    import brainunit as u

    from etprop.experiment.runner import Run

    tiny = {"n_cues": 1, "cue_steps": 1, "gap_steps": 0, "delay": 1, "recall_steps": 1}
    run = Run(TrainConfig(task="evidence", model="alif", algo="bptt", hidden=4, batch=2, steps=1, eval_every=0,
                          task_args=tiny))
    assert run.dt == 10.0 * u.ms
    assert Run(TrainConfig(task="copying", hidden=4, batch=2, steps=1, eval_every=0,
                           task_args={"length": 2, "delay": 1})).dt == 1.0 * u.ms


def test_bad_rate_for_the_step_names_it():
    with pytest.raises(ArgumentError, match="cue_rate=200.0 Hz gives spike probability 2 > 1 per step of dt=10"):
        get_task("evidence", cue_rate=200.0)
