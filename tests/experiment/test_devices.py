"""`etprop train --devices N`: data parallel from the command line, checkpoints across device counts.

Each run is a fresh process (the CPU device count is fixed when jax starts). A run on four
forced CPU devices, checkpointed and resumed on one, writes the losses of a one-device run.
"""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

TINY = ["--task", "copying", "--model", "gru", "--hidden", "8", "--batch", "4", "--eval-every", "0",
        "--eval-batch", "4", "--no-plots", "--quiet"]


def _train(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "etprop", "train", *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _losses(out):
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f)])


@pytest.mark.slow  # three `etprop train` processes (~50-70 s on CI's 2 cores)
def test_four_devices_resumed_on_one_equal_one_device(tmp_path):
    four, one = str(tmp_path / "four"), str(tmp_path / "one")
    _train(*TINY, "--devices", "4", "--steps", "4", "--ckpt-every", "2", "--out", four)
    _train(*TINY, "--resume", four, "--steps", "6", "--devices", "1")
    _train(*TINY, "--steps", "6", "--out", one)
    a, b = _losses(four), _losses(one)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_two_devices_train(tmp_path):
    """The quick suite's check of the path (the slow test above compares with one device)."""
    out = str(tmp_path / "two")
    _train(*TINY, "--devices", "2", "--steps", "2", "--out", out)
    losses = _losses(out)
    assert len(losses) == 2 and np.all(np.isfinite(losses))
