"""The demo's number holds: the same ``etprop train`` command run twice gives the same metrics,
and the final accuracy is measured on the whole held-out set (``--eval-batch``)."""

import csv
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from etprop.experiment import Run, TrainConfig
from etprop.experiment import runner as runner_mod

# a tiny demo: the default task, model, algorithm and cosine schedule (decayed within the run),
# a held-out set that is not a whole number of batches
ARGV = ["train", "--steps", "6", "--batch", "4", "--hidden", "8", "--task-arg", "length=2", "--task-arg", "delay=2",
        "--schedule-steps", "4", "--eval-every", "0", "--eval-batch", "18", "--no-plots", "--quiet"]


def _run(out, hash_seed):
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    res = subprocess.run([sys.executable, "-m", "etprop", *ARGV, "--out", out], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    done = res.stdout.strip().splitlines()[-1]
    # the summary line without its wall time and memory
    return re.sub(r" wall .*", "", done)


def _metrics(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]


def test_same_command_twice_gives_identical_metrics(tmp_path):
    """Two fresh processes (different hash seeds): metrics.csv (but for wall_s), the held-out
    accuracy and the saved state are identical."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    done_a, done_b = _run(a, 1), _run(b, 2)
    assert done_a == done_b and "on 18 held-out" in done_a
    rows = _metrics(a)
    assert rows == _metrics(b) and len(rows) == 6
    with np.load(os.path.join(a, "checkpoint", "state.npz")) as sa, np.load(os.path.join(b, "checkpoint",
                                                                                         "state.npz")) as sb:
        assert sa.files == sb.files
        for k in sa.files:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_evaluation_covers_the_held_out_set():
    """``eval_batch`` sequences, ``batch`` at a time: the accuracy is the mean over all of them,
    a set that is not a whole number of batches included (10 = 4 + 4 + 2)."""
    n, B = 10, 4
    cfg = TrainConfig(batch=B, hidden=6, eval_every=0, eval_batch=n, task_args={"length": 2, "delay": 1})
    with runner_mod.brainstate.environ.context(dt=1.0 * runner_mod.u.ms):
        run = Run(cfg)
        params = jax.tree.map(lambda p: p + 0.3 * jnp.sin(jnp.arange(p.size).reshape(p.shape) + p.size),
                              run.initial_state()["params"])
        acc, batch, outs = run.evaluate(params, run.others0)
        held = run.task.batch(jax.random.key(cfg.seed + 10_000), 3 * B)
        forward = jax.jit(lambda x, y: run._seq(params, run.hidden0, run.others0, run.traces0, x, y, held.mask)[-1])
        recall = np.asarray(held.mask) > 0
        hits = [np.asarray(jnp.argmax(forward(held.inputs[:, i:i + B], held.targets[:, i:i + B]), -1)
                           == held.targets[:, i:i + B])[recall] for i in range(0, 3 * B, B)]
    expected = np.concatenate(hits, axis=1)[:, :n].mean()
    assert 0.0 < expected < 1.0  # a non-trivial check
    np.testing.assert_allclose(float(acc), expected, rtol=1e-6)
    assert batch.inputs.shape[1] == B and outs.shape[1] == B
