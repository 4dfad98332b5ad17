"""`etprop train --devices N`: data parallel from the command line, checkpoints across device counts.

Each run is a fresh process (the CPU device count is fixed when jax starts). A run over two
processes (jax.distributed, 4 devices in all), checkpointed, resumed on one device and then on
four, writes the losses of a one-device run.
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


def _two_processes(*args):
    """``etprop train ARGS`` as two processes under jax.distributed (two CPU devices each, gloo on
    the loopback address); returns their standard outputs (process 0's, process 1's)."""
    import socket

    with socket.socket() as sock:  # a free port for the coordinator
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "etprop", "train", *args, "--coordinator", f"127.0.0.1:{port}",
           "--num-processes", "2", "--process-id"]
    procs = [subprocess.Popen(cmd + [str(pid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for pid in (0, 1)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(stdout)
    return outs


def test_checkpoints_move_between_two_processes_one_device_and_four(tmp_path):
    """Two processes with two devices each (4 in all) train 2 updates; the checkpoint continues on
    1 device to update 4 and on 4 forced devices of one process to update 6: the losses are the
    one-device run's. Process 0 alone logs and writes."""
    run, one = str(tmp_path / "run"), str(tmp_path / "one")
    p0, p1 = _two_processes(*TINY, "--devices", "4", "--steps", "2", "--out", run)
    assert "done:" in p0 and "etprop train" not in p1 and "done:" not in p1  # gloo prints its own lines
    _train(*TINY, "--resume", run, "--steps", "4", "--devices", "1")
    _train(*TINY, "--resume", run, "--steps", "6", "--devices", "4")
    _train(*TINY, "--steps", "6", "--out", one)
    a, b = _losses(run), _losses(one)
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--coordinator", "127.0.0.1:1234"], "missing --num-processes, --process-id"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "--coordinator must be HOST:PORT"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in [0, 2)"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "1", "--process-id", "0"], "--num-processes must be at least 2"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0", "--devices", "3"],
     "--devices 3 does not split over --num-processes 2"),
])
def test_bad_multi_process_arguments_are_one_line(args, message, capsys):
    from etprop.cli import main

    assert main(["train", *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
