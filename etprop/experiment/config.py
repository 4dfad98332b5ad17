"""What defines a run of ``etprop train``: its settings (`TrainConfig`, checked by ``validate``),
the ``--algo`` names it offers (`ALGOS`; `NOT_OFFERED` and `UNAVAILABLE` say why the others are
refused, `refusal`), the options it gives the learner (`algo_options`) and the learning-rate
schedule (`learning_rate`, `SCHEDULES`, `LR_FLOOR`). The run itself is `etprop.experiment.runner`."""

from __future__ import annotations

import dataclasses
import math

import jax

from etprop.algorithms.rules import canonical_name, resolve, rule_names
from etprop.errors import ArgumentError, NotSupportedError
from etprop.experiment.models import MODELS

__all__ = ["TrainConfig", "GLOBAL_DEFAULTS", "task_train_defaults", "ALGOS", "NOT_OFFERED", "UNAVAILABLE", "refusal",
           "algo_options", "learning_rate", "SCHEDULES", "LR_FLOOR"]

#: rules of the registry that ``etprop train`` does not offer, and why (``--algo`` says so)
NOT_OFFERED = {
    "three_factor": "its learning signal is a neuromodulator, which the built-in tasks do not give; use "
                    "etprop.ThreeFactor from Python",
    "dni": "it needs a synthetic-gradient module fitted alongside the network (etprop.train_synthetic_gradient), "
           "which etprop train does not do; use etprop.DNI from Python",
}


def _offered() -> tuple[dict, dict]:
    """``(ALGOS, UNAVAILABLE)``: ``--algo`` name -> learner class, from the one registry of rule
    names (`etprop.algorithms.rules`), every canonical name and alias except `NOT_OFFERED`; and
    the rules whose class this installation lacks -> why (so that one missing class costs only
    its own ``--algo``, which then says so)."""
    algos, unavailable = {}, {}
    for name in rule_names():
        if canonical_name(name) in NOT_OFFERED:
            continue
        try:
            algos[name] = resolve(name)[0]
        except NotSupportedError as e:
            unavailable[name] = " ".join(str(e).split())
    return algos, unavailable


ALGOS, UNAVAILABLE = _offered()


def refusal(algo: str) -> str | None:
    """Why ``--algo algo`` is refused although the registry knows it (None if it is offered or unknown)."""
    if algo in UNAVAILABLE:
        return f"--algo {algo} is not available: {UNAVAILABLE[algo]}"
    if algo in rule_names() and canonical_name(algo) in NOT_OFFERED:
        return f"--algo {algo} is not offered by etprop train: {NOT_OFFERED[canonical_name(algo)]}"
    return None


def algo_options(cfg) -> dict:
    """The options the command passes the learner (from the config)."""
    algo = canonical_name(cfg.algo)
    if algo == "eprop":
        return {"feedback": "random", "seed": cfg.seed}
    if algo == "uoro":
        return {"key": jax.random.key(cfg.seed + 2)}
    return {} if cfg.decay is None else {"decay_or_rank": cfg.decay}


_FACTORISED = {"es_d_rtrl", "hybrid"}

#: ``--schedule`` choices; "cosine" ends at this fraction of ``lr``
SCHEDULES = ("constant", "cosine")
LR_FLOOR = 0.1


def learning_rate(cfg, steps_per_update: int):
    """``cfg.lr``, or the cosine schedule of the optimiser's step count (``steps_per_update``
    optimiser steps per update: ``T`` with ``update="step"``)."""
    if cfg.schedule == "constant":
        return cfg.lr
    import optax

    return optax.cosine_decay_schedule(cfg.lr, cfg.schedule_steps * steps_per_update, alpha=LR_FLOOR)


#: the settings of a run whose task has no `train_defaults` of its own (the copying demo's)
GLOBAL_DEFAULTS = {"model": "gru", "steps": 2000, "batch": 32, "hidden": 64, "lr": 1e-2, "schedule_steps": 2000}


def task_train_defaults(task) -> dict:
    """The run settings of ``task`` (a name): `GLOBAL_DEFAULTS` updated with the task class's
    ``train_defaults`` (the set-up its benchmark is measured with; ``schedule_steps`` follows
    ``steps`` unless the task says otherwise)."""
    from etprop.tasks import TASKS

    own = dict(getattr(TASKS.get(task) if isinstance(task, str) else None, "train_defaults", {}))
    if "steps" in own:
        own.setdefault("schedule_steps", own["steps"])
    return {**GLOBAL_DEFAULTS, **own}


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run (saved in the checkpoint; ``--resume`` reads it back)."""

    # model, steps, batch, hidden, lr and schedule_steps left None take the task's `train_defaults`
    # (`etprop.tasks.Task.train_defaults`), else `GLOBAL_DEFAULTS`; resolved when the config is made
    task: str = "copying"
    model: str | None = None
    algo: str = "d_rtrl"
    steps: int | None = None
    batch: int | None = None
    hidden: int | None = None
    seed: int = 0
    lr: float | None = None
    decay: float | None = None  # ES-D-RTRL / hybrid: decay_or_rank (None: the algorithm's default)
    clip: float = 1.0  # global gradient-norm clip
    schedule: str = "cosine"  # "constant": lr throughout; "cosine": lr -> lr / 10 over schedule_steps updates
    schedule_steps: int | None = None
    eval_every: int = 50  # cosine of the online gradient to BPTT, every this many updates (0: never)
    eval_batch: int = 1024  # held-out sequences of the final evaluation (run `batch` at a time)
    ckpt_every: int = 100
    carry_state: bool = False
    update: str = "sequence"  # "sequence": one update per batch; "step": an update at every time step
    task_args: dict = dataclasses.field(default_factory=dict)
    devices: int = 1  # data parallel over this many devices (the batch split over a mesh axis 'data')

    def __post_init__(self):
        for key, value in task_train_defaults(self.task).items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def validate(self) -> None:
        """Raise `ArgumentError` naming the first setting that is invalid."""
        if self.algo not in ALGOS:
            if refusal(self.algo):
                raise ArgumentError(refusal(self.algo))
            raise ArgumentError(f"unknown algorithm {self.algo!r}; choose one of {sorted(ALGOS)}")
        if self.model not in MODELS:
            raise ArgumentError(f"unknown model {self.model!r}; choose one of {sorted(MODELS)}")
        if not isinstance(self.task, str) or not isinstance(self.task_args, dict):
            raise ArgumentError(f"--task must be a task name and task_args a dict, got {self.task!r}, "
                                f"{self.task_args!r}")
        if isinstance(self.devices, int) and self.devices > 1 and isinstance(self.batch, int) \
                and self.batch % self.devices:
            raise ArgumentError(f"--batch {self.batch} does not split over --devices {self.devices}: use a "
                                f"multiple of {self.devices}")
        for name, floor in (("steps", 1), ("batch", 1), ("hidden", 1), ("seed", 0), ("eval_every", 0),
                            ("ckpt_every", 0), ("schedule_steps", 1), ("eval_batch", 1), ("devices", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < floor:
                kind = "positive" if floor else "non-negative"
                raise ArgumentError(f"--{name.replace('_', '-')} must be a {kind} integer, got {v!r}")
        for name in ("lr", "clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
                raise ArgumentError(f"--{name} must be a positive number, got {v!r}")
        if not isinstance(self.carry_state, bool):
            raise ArgumentError(f"--carry-state is a flag (True or False), got {self.carry_state!r}")
        if self.schedule not in SCHEDULES:
            raise ArgumentError(f"--schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.update not in ("sequence", "step"):
            raise ArgumentError(f"--update must be 'sequence' or 'step', got {self.update!r}")
        if self.update == "step" and canonical_name(self.algo) == "bptt":
            raise ArgumentError("--update step needs an online algorithm: BPTT has no per-step gradient")
        if self.decay is not None:
            if canonical_name(self.algo) not in _FACTORISED:
                raise ArgumentError(f"--decay applies to es_d_rtrl and hybrid, not {self.algo}")
            if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0 < self.decay < 1:
                raise ArgumentError(f"--decay must be in (0, 1), got {self.decay!r}")
