"""`etprop train` run in-process on tiny budgets: outputs, exact resume, errors."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from etprop import cli
from etprop.experiment import Run, TrainConfig, load_checkpoint, progress
from etprop.experiment import runner as runner_mod

TINY = ["--batch", "4", "--hidden", "8", "--quiet", "--task-arg", "length=2", "--task-arg", "delay=2"]


def _rows(path):
    with open(os.path.join(path, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]


def _saved_state(path):
    with np.load(os.path.join(path, "checkpoint", "state.npz")) as data:
        return {k: data[k] for k in data.files}


def test_train_writes_metrics_figures_and_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc = cli.main(["train", "--steps", "4", "--eval-every", "2", "--out", out] + TINY)
    assert rc == 0
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    cos = [float(r["grad_cos_bptt"]) for r in rows if r["grad_cos_bptt"]]
    assert len(cos) == 2 and all(-1.0 <= c <= 1.0 + 1e-6 for c in cos)
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    assert os.path.isfile(os.path.join(out, "checkpoint", "meta.json"))
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("done: task=copying model=gru algo=d_rtrl updates=4 eval accuracy=")
    assert "peak" in summary and "chance 0.250" in summary


def test_resume_continues_bit_for_bit(tmp_path):
    """6 updates straight == 3 updates, stop, resume to 6: same metrics and parameters.
    With --carry-state the hidden states and traces cross updates, so they must be restored too."""
    common = ["--algo", "d_rtrl", "--eval-every", "2", "--carry-state", "--no-plots"] + TINY
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli.main(["train", "--steps", "6", "--out", a] + common) == 0
    assert cli.main(["train", "--steps", "3", "--out", b] + common) == 0
    assert len(_rows(b)) == 3
    assert cli.main(["train", "--resume", b, "--steps", "6", "--quiet", "--no-plots"]) == 0
    assert _rows(a) == _rows(b)
    assert cli.main(["train", "--resume", b, "--steps", "6", "--quiet", "--no-plots"]) == 2  # nothing to do
    pa, pb = _saved_state(a), _saved_state(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert any("traces" in k for k in pa) and any("hidden" in k for k in pa)


def test_interrupt_saves_a_checkpoint_that_resumes_exactly(tmp_path, monkeypatch, capsys):
    """Ctrl-C during training leaves a checkpoint of the last finished update."""
    common = ["--algo", "es_d_rtrl", "--eval-every", "0", "--carry-state", "--no-plots"] + TINY
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli.main(["train", "--steps", "5", "--out", a] + common) == 0

    real_update = progress.Progress.update

    def interrupt_at_3(self, step, **m):
        real_update(self, step, **m)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.Progress, "update", interrupt_at_3)
    assert cli.main(["train", "--steps", "5", "--out", b] + common) == 130
    monkeypatch.setattr(progress.Progress, "update", real_update)
    assert "interrupted after update 3" in capsys.readouterr().out
    assert cli.main(["train", "--resume", b, "--quiet", "--no-plots"]) == 0
    assert _rows(a) == _rows(b)


@pytest.mark.parametrize("model,task,algo,args", [
    ("lif", "evidence", "es_d_rtrl", ["n_cues=1", "cue_steps=3", "gap_steps=1", "delay=2", "recall_steps=2"]),
    ("alif", "dms", "d_rtrl", ["cue_steps=3", "delay=3", "recall_steps=2"]),
    ("lru", "adding", "hybrid", ["length=6"]),
    ("gru", "pattern", "bptt", ["length=8", "n_inputs=6"]),
])
def test_every_model_runs_on_a_task(tmp_path, model, task, algo, args):
    out = str(tmp_path / model)
    argv = ["train", "--model", model, "--task", task, "--algo", algo, "--steps", "2", "--batch", "2",
            "--hidden", "6", "--eval-every", "0", "--quiet", "--out", out]
    for a in args:
        argv += ["--task-arg", a]
    assert cli.main(argv) == 0
    rows = _rows(out)
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    if model in ("lif", "alif"):
        assert os.path.getsize(os.path.join(out, "activity.png")) > 1000


def test_spiking_record_gives_spikes_and_potentials(tmp_path):
    cfg = TrainConfig(task="evidence", model="lif", algo="d_rtrl", batch=2, hidden=5, eval_every=0,
                      task_args={"n_cues": 1, "cue_steps": 3, "gap_steps": 1, "delay": 2, "recall_steps": 2})
    with runner_mod.brainstate.environ.context(dt=1.0 * runner_mod.u.ms):
        run = Run(cfg)
        state = run.initial_state()
        batch = run.task.batch(jax.random.key(0), 2)
        obs, outs = run.record(state["params"], batch.inputs)
    T = run.task.n_steps
    assert obs["spikes"].shape == (T, 5) and obs["v"].shape == (T, 5)
    assert set(np.unique(obs["spikes"])) <= {0.0, 1.0}
    assert outs.shape == (T, run.task.n_out)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--steps", "-3"], "--steps: expected a positive integer, got '-3'"),
    (["train", "--task", "nope"], "argument --task: invalid choice: 'nope'"),
    (["train", "--lr", "abc"], "--lr: expected a positive number, got 'abc'"),
    (["train", "--decay", "1.5"], "--decay: expected a number in (0, 1), got '1.5'"),
    (["train", "--task-arg", "delay"], "expected KEY=VALUE"),
])
def test_bad_flag_values_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv,needle", [
    (["train", "--task-arg", "bogus=3"], "bogus"),
    (["train", "--algo", "d_rtrl", "--decay", "0.5"], "--decay applies to es_d_rtrl and hybrid"),
    (["train", "--resume", "/nonexistent/run"], "no checkpoint in '/nonexistent/run'"),
    (["train", "--algo", "bptt", "--update", "step"], "BPTT has no per-step gradient"),
])
def test_library_errors_are_one_line(argv, needle, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and err.startswith("etprop train: error:")


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    out = str(tmp_path / "gru")
    assert cli.main(["train", "--steps", "1", "--eval-every", "0", "--no-plots", "--out", out] + TINY) == 0
    cfg = TrainConfig(model="lru", batch=4, hidden=8, eval_every=0, task_args={"length": 2, "delay": 2})
    run = Run(cfg)
    with pytest.raises(Exception, match="has no entry|expects"):
        load_checkpoint(out, run.initial_state())


def test_help_and_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "etprop", "train", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0
    for flag in ("--task", "--model", "--algo", "--steps", "--batch", "--hidden", "--seed", "--lr", "--decay",
                 "--out", "--resume", "metrics.csv", "checkpoint/"):
        assert flag in res.stdout


def test_progress_line_reports_rate_and_eta():
    import io
    s = io.StringIO()
    p = progress.Progress(10, stream=s, log_interval=0.0)
    p.update(5, loss=0.5, acc=0.75)
    line = s.getvalue()
    assert line.startswith("5/10 [") and "loss 0.5" in line and "acc 0.75" in line
    assert "step/s" in line and "ETA" in line


@pytest.mark.parametrize("algo", ["eprop", "uoro"])
def test_rules_with_their_own_options_train(tmp_path, algo):
    """e-prop gets its random feedback seed and UORO its key from --seed."""
    out = str(tmp_path / algo)
    assert cli.main(["train", "--algo", algo, "--steps", "2", "--eval-every", "0", "--no-plots", "--out", out]
                    + TINY) == 0
    assert len(_rows(out)) == 2


@pytest.mark.parametrize("command,names", [
    ("tasks", ["copying", "dms", "evidence", "pattern", "adding"]),
    ("models", ["gru", "lif", "alif", "lru"]),
    ("algos", ["bptt", "d_rtrl", "es_d_rtrl", "eprop", "snap", "uoro", "rtrl"]),
])
def test_list_commands_name_every_choice(command, names, capsys):
    assert cli.main([command]) == 0
    out = capsys.readouterr().out
    for n in names:
        assert n in out
    assert all(len(line) < 400 for line in out.splitlines())


def test_update_at_every_step_resumes_exactly(tmp_path):
    """--update step: an optimiser update at every time step (true online learning); the run
    state after each batch still checkpoints and resumes bit for bit."""
    common = ["--update", "step", "--eval-every", "0", "--carry-state", "--no-plots", "--lr", "1e-3"] + TINY
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli.main(["train", "--steps", "3", "--out", a] + common) == 0
    assert cli.main(["train", "--steps", "2", "--out", b] + common) == 0
    assert cli.main(["train", "--resume", b, "--steps", "3", "--quiet", "--no-plots"]) == 0
    assert _rows(a) == _rows(b)
    seq = str(tmp_path / "seq")
    assert cli.main(["train", "--steps", "3", "--out", seq] + common[2:]) == 0
    pa, ps = _saved_state(a), _saved_state(seq)
    key = next(k for k in pa if k.startswith("['params']"))
    assert not np.array_equal(pa[key], ps[key])  # T updates per batch, not one


@pytest.mark.parametrize("update", ["sequence", pytest.param("step", marks=pytest.mark.slow)])
def test_cosine_schedule_extends_and_resumes_exactly(tmp_path, update):
    """The learning-rate schedule is a function of the update number (its count is in the
    optimiser state): a run extended past the end of the decay (--schedule-steps 4) with
    --resume --steps matches the uninterrupted run bit for bit, and the schedule changes the run."""
    common = ["--update", update, "--schedule-steps", "4", "--eval-every", "0", "--carry-state", "--no-plots",
              "--lr", "3e-3"] + TINY
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    assert cli.main(["train", "--steps", "6", "--out", a] + common) == 0
    assert cli.main(["train", "--steps", "3", "--out", b] + common) == 0
    assert cli.main(["train", "--resume", b, "--steps", "6", "--quiet", "--no-plots"]) == 0
    assert _rows(a) == _rows(b)
    pa, pb = _saved_state(a), _saved_state(b)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    assert cli.main(["train", "--steps", "6", "--out", c, "--schedule", "constant"] + common) == 0
    assert _rows(a)[-1] != _rows(c)[-1]
    if update == "sequence":  # the first update at --lr itself
        assert _rows(a)[:1] == _rows(c)[:1]


@pytest.mark.slow  # resume exactness is covered by test_resume_continues_bit_for_bit
def test_checkpoint_without_schedule_resumes_at_a_constant_rate(tmp_path):
    """A checkpoint written before --schedule and --eval-batch existed (no such keys in its
    settings) was trained at a constant learning rate, and resumes so."""
    import json

    common = ["--schedule", "constant", "--eval-every", "0", "--no-plots"] + TINY
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert cli.main(["train", "--steps", "4", "--out", a] + common) == 0
    assert cli.main(["train", "--steps", "2", "--out", b] + common) == 0
    meta_path = os.path.join(b, "checkpoint", "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    for key in ("schedule", "schedule_steps", "eval_batch"):
        del meta["config"][key]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    assert cli.main(["train", "--resume", b, "--steps", "4", "--quiet", "--no-plots"]) == 0
    assert _rows(a) == _rows(b)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["train", "--schedule-steps", "0"], "--schedule-steps: expected a positive integer, got '0'"),
    (["train", "--eval-batch", "0"], "--eval-batch: expected a positive integer, got '0'"),
])
def test_bad_schedule_and_eval_batch_flags_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("field,value,needle", [
    ("schedule", "linear", "--schedule must be one of"),
    ("schedule_steps", 0, "--schedule-steps must be a positive integer"),
    ("eval_batch", 2.5, "--eval-batch must be a positive integer"),
])
def test_schedule_and_eval_batch_settings_are_validated(field, value, needle):
    from etprop.errors import ArgumentError

    with pytest.raises(ArgumentError, match=needle):
        TrainConfig(**{field: value}).validate()


def test_checkpoint_holds_every_task_parameter_and_old_ones_say_what_they_assume(tmp_path):
    """A checkpoint records the task's parameters in full, so a run resumes on its own task when a
    later etprop changes the defaults; a checkpoint that lacks some (written before) resumes with
    today's defaults for them and says so."""
    import json

    from etprop.experiment.runner import TrainConfig, train

    run = str(tmp_path / "run")
    cfg = TrainConfig(task="copying", model="gru", batch=2, hidden=4, steps=1, eval_every=0, eval_batch=2,
                      task_args={"length": 2, "delay": 1})
    train(cfg, out=run, plots_enabled=False, progress=False, log=lambda *a: None)
    meta_path = os.path.join(run, "checkpoint", "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    assert meta["config"]["task_args"] == {"n_symbols": 4, "length": 2, "delay": 1}
    meta["config"]["task_args"] = {"length": 2, "delay": 1}  # as a checkpoint of an earlier etprop
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    lines = []
    train(resume=run, steps=2, plots_enabled=False, progress=False, log=lines.append)
    notes = [ln for ln in lines if ln.startswith("note:")]
    assert len(notes) == 1 and "n_symbols=4" in notes[0] and "'copying'" in notes[0], lines
