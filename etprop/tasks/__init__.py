"""Synthetic sequence tasks for training recurrent and spiking networks online.

Every task is generated in code from a JAX PRNG key (nothing is downloaded)::

    task = get_task("copying", delay=20)
    batch = jax.jit(task.batch, static_argnums=1)(jax.random.key(0), 32)
    loss = task.loss(outs, batch)          # or jax.vmap(task.step_loss) per step
    acc = task.accuracy(outs, batch)

Real event datasets (SHD, N-MNIST) live in `etprop.tasks.datasets` behind the ``datasets`` extra.
"""

from __future__ import annotations

from etprop.errors import ArgumentError
from etprop.tasks.adding import Adding
from etprop.tasks.base import Batch, Task
from etprop.tasks.copying import Copying
from etprop.tasks.dms import DMS
from etprop.tasks.evidence import Evidence
from etprop.tasks.pattern import Pattern

__all__ = ["Task", "Batch", "get_task", "TASKS", "Copying", "DMS", "Evidence", "Pattern", "Adding"]

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Copying, DMS, Evidence, Pattern, Adding)}


def get_task(name: str, **overrides) -> Task:
    """Build the task called ``name`` with its defaults replaced by ``overrides``.

    Raises:
        ArgumentError: unknown ``name`` (the message lists the known ones), unknown parameter,
            or a value of the wrong type or range (the message names the parameter).
    """
    cls = TASKS.get(name)
    if cls is None:
        raise ArgumentError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return cls(**overrides)
