"""``etprop train`` over several processes (one per host) under ``jax.distributed``.

Every process runs the same command with its own ``--process-id``; together they see
``--devices`` devices (all processes' devices: on a CPU each process makes
``devices / num_processes`` host devices). The run is one SPMD program over a mesh of all of
them: every process generates the global batch of update ``k`` from ``(seed, k)`` inside the
jitted step and computes its devices' slice of it, the gradient is reduced by XLA's
collectives, and every process holds the same replicated parameters.

Who writes what: process 0 alone writes ``metrics.csv``, the figures and the checkpoint; every
process takes part in gathering the arrays it is written from (`host_value`), so a checkpoint
holds whole arrays and resumes on any device count, one process or several. A resumed run
reads the checkpoint in every process: its directory must be visible to all of them (a shared
file system, or a copy on each host).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from etprop.errors import ArgumentError

__all__ = ["start", "is_writer", "host_value", "local_copy", "check_devices"]


def start(coordinator: str, num_processes: int, process_id: int, devices: int | None) -> None:
    """Join the run's ``num_processes`` processes through ``jax.distributed.initialize``.

    Must be called before jax starts a backend. On a CPU the collectives go through gloo and this
    process makes ``devices / num_processes`` host devices (on accelerators the devices are the
    host's own; ``devices`` is then checked against them by `check_devices`).
    """
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ArgumentError(f"--coordinator must be HOST:PORT (the address of process 0, e.g. 10.0.0.1:1234), "
                            f"got {coordinator!r}")
    if num_processes < 2:
        raise ArgumentError(f"--num-processes must be at least 2 for a multi-process run, got {num_processes}; "
                            f"leave out --coordinator for one process")
    if not 0 <= process_id < num_processes:
        raise ArgumentError(f"--process-id must be in [0, {num_processes}) for --num-processes {num_processes}, "
                            f"got {process_id}")
    if devices is not None and devices % num_processes:
        raise ArgumentError(f"--devices {devices} does not split over --num-processes {num_processes}: every "
                            f"process holds the same number of devices; use a multiple of {num_processes}")
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only used by the CPU backend
        jax.config.update("jax_num_cpu_devices", (devices or num_processes) // num_processes)
    except RuntimeError as e:
        raise ArgumentError(f"jax has started already ({e}); a multi-process run must set up jax.distributed "
                            f"before anything uses jax") from None
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def check_devices(devices: int) -> None:
    """With several processes the mesh spans every process's devices: ``devices`` must be all of them."""
    if jax.process_count() > 1 and devices != jax.device_count():
        raise ArgumentError(f"--devices {devices}: a run over {jax.process_count()} processes uses all their "
                            f"devices, {jax.device_count()} ({jax.local_device_count()} per process); pass "
                            f"--devices {jax.device_count()}")


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; the only one without jax.distributed)."""
    return jax.process_index() == 0


def host_value(x) -> np.ndarray:
    """The whole value of ``x`` as a NumPy array, in every process.

    An array split over several processes' devices is gathered (a collective: every process must
    call this, in the same order); any other array is copied from its devices."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # replicated: every process has all of it
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def local_copy(tree):
    """``tree`` with every array spread over several processes replaced by this process's whole
    copy (a collective, see `host_value`): what a jitted function may close over. One process:
    ``tree`` itself."""
    if jax.process_count() == 1:
        return tree

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(host_value(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        return jax.numpy.asarray(host_value(a))
    return jax.tree.map(one, tree)
