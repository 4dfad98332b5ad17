"""The `Task` base class, the `Batch` pytree and the small helpers the synthetic tasks share.

Conventions, shared by every task:

* time is the leading axis: ``inputs`` is ``(T, B, n_in)``, outputs are ``(T, B, n_out)``;
* ``mask`` is ``(T,)``, one weight per step shared by the whole batch, nonzero only at the
  steps where the loss and the accuracy are read (decision or recall steps);
* ``targets`` only matter where ``mask > 0``; elsewhere they hold a filler (see each task).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError

__all__ = ["Batch", "Task", "RegressionTask", "spike_prob", "population_spikes"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of a task, time-major.

    Attributes:
        inputs: ``(T, B, n_in)`` float32.
        targets: ``(T, B)`` int32 class labels (classification) or ``(T, B, n_out)`` float32 (regression).
        mask: ``(T,)`` float32 weight of each step's loss, shared by the batch.
    """

    inputs: jax.Array
    targets: jax.Array
    mask: jax.Array

    @property
    def n_steps(self) -> int:
        return self.inputs.shape[0]

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[1]


def spike_prob(rate_hz: float, dt_ms: float) -> float:
    """Probability of a Poisson spike in one step of ``dt_ms`` at ``rate_hz``."""
    return rate_hz * dt_ms * 1e-3


def population_spikes(key: jax.Array, prob: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
    """Bernoulli spikes of neuron populations.

    Args:
        key: PRNG key.
        prob: ``(T, B, P)`` spike probability of each of the ``P`` populations at each step.
        sizes: the ``P`` population sizes; population ``p`` owns the next ``sizes[p]`` channels.

    Returns:
        ``(T, B, sum(sizes))`` float32 array of 0/1 spikes.
    """
    per_channel = jnp.repeat(prob, np.asarray(sizes), axis=-1, total_repeat_length=sum(sizes))
    return jax.random.bernoulli(key, per_channel).astype(jnp.float32)


def _coerce(task: str, key: str, value: Any, default: Any) -> Any:
    """Cast ``value`` to the type of ``default`` (strings are parsed, so a CLI can pass them raw)."""
    try:
        if isinstance(default, bool):
            raise TypeError  # no boolean task parameters; keeps True from passing as 1
        if isinstance(default, int):
            if isinstance(value, str):
                value = int(value)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, (bool, np.bool_)):
                raise TypeError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
            return value
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            value = tuple(float(v) for v in value)
            if not value or not all(math.isfinite(v) for v in value):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ArgumentError(f"task {task!r}: {key}={value!r} is not a valid {type(default).__name__}")


class Task:
    """A synthetic sequence task: sizes, a batch sampler, the per-step loss and the accuracy.

    Subclasses set the class attributes below and the `defaults` table, then implement
    `batch` and the size properties. Every entry of `defaults` is a keyword of ``__init__``
    and becomes an attribute of the instance. A task is immutable and hashable, so it can be
    closed over by jitted functions or passed as a static argument.
    """

    name: ClassVar[str]
    kind: ClassVar[str]            # 'classification' | 'regression'
    spiking_input: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
    # The `etprop train` settings (model, hidden, batch, steps, lr, schedule_steps) this task runs
    # with unless given (`etprop.experiment.config.task_train_defaults`); the rest are global.
    train_defaults: ClassVar[dict[str, Any]] = {}
    # Parameters that may be 0 (delays, gaps, optional populations); every other int must be >= 1.
    may_be_zero: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **overrides):
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise ArgumentError(f"task {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(self.defaults)}")
        config = {}
        for key, default in self.defaults.items():
            value = _coerce(self.name, key, overrides.get(key, default), default)
            floor = 0 if key in self.may_be_zero else 1
            if isinstance(default, int) and value < floor:
                raise ArgumentError(f"task {self.name!r}: {key} must be >= {floor}, got {value}")
            if isinstance(default, float) and value < 0:
                raise ArgumentError(f"task {self.name!r}: {key} must be >= 0, got {value}")
            if isinstance(default, tuple) and min(value) <= 0:
                raise ArgumentError(f"task {self.name!r}: {key} must be positive, got {value}")
            config[key] = value
        object.__setattr__(self, "_config", config)
        for key, value in config.items():
            object.__setattr__(self, key, value)
        self._validate()

    def _validate(self) -> None:
        """Check relations between parameters; raise `ArgumentError` naming the bad one."""

    def _check_batch_size(self, batch_size) -> int:
        """``batch_size`` of `batch`, a positive Python int (static under jit), or `ArgumentError`."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ArgumentError(f"task {self.name!r}: batch_size must be a positive int (static under jit: "
                                f"jax.jit(task.batch, static_argnums=1)), got {batch_size!r}")
        return int(batch_size)

    def _check_outs(self, outs, batch: "Batch", where: str) -> None:
        """``outs`` must be ``(T, B, n_out)`` for ``batch`` (static shapes: also under jit)."""
        want = (batch.n_steps, batch.batch_size, self.n_out)
        if tuple(np.shape(outs)) != want:
            raise ArgumentError(f"task {self.name!r}: {where}(outs, batch) needs outs of shape (T, B, n_out) = "
                                f"{want}, got {tuple(np.shape(outs))}")

    def _check_prob(self, key: str) -> None:
        """A Poisson rate must give at most one spike per step of ``self.dt`` (ms, > 0)."""
        if self.dt <= 0:
            raise ArgumentError(f"task {self.name!r}: dt must be > 0 ms, got {self.dt}")
        p = spike_prob(getattr(self, key), self.dt)
        if p > 1:
            raise ArgumentError(f"task {self.name!r}: {key}={getattr(self, key)} Hz gives spike "
                                f"probability {p:.3g} > 1 per step of dt={self.dt} ms")

    def __setattr__(self, key, value):
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one with get_task")

    @property
    def config(self) -> dict[str, Any]:
        """The full parameter set (defaults merged with overrides)."""
        return dict(self._config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self._config == other._config

    def __hash__(self):
        return hash((type(self), tuple(self._config.items())))

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        raise NotImplementedError

    @property
    def n_out(self) -> int:
        raise NotImplementedError

    @property
    def n_steps(self) -> int:
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """`accuracy` of a guesser: 1/n_classes (classification) or 0 (regression, mean predictor)."""
        raise NotImplementedError

    @property
    def target_variance(self) -> float:
        """Regression only: mean squared error of predicting the targets' mean, summed over outputs.

        It normalises the regression accuracy; a property of the task, not of one batch, so the
        score does not depend on the batch size.
        """
        raise NotImplementedError

    # -- data, loss, metric --------------------------------------------------------------------------
    def batch(self, key: jax.Array, batch_size: int) -> Batch:
        """Sample a batch; a pure, jit-able function of ``key`` (``batch_size`` static)."""
        raise NotImplementedError

    def step_loss(self, out: jax.Array, target: jax.Array) -> jax.Array:
        """Loss of ONE sample at ONE step.

        Args:
            out: ``(n_out,)`` network output (logits for classification).
            target: scalar int class (classification) or ``(n_out,)`` (regression).

        Returns:
            Scalar: cross-entropy, or squared error summed over outputs.
        """
        if self.kind == "classification":
            logp = jax.nn.log_softmax(out, axis=-1)
            return -jnp.take(logp, target, axis=-1)
        return jnp.sum(jnp.square(out - target), axis=-1)

    def loss(self, outs: jax.Array, batch: Batch) -> jax.Array:
        """Mask-weighted mean of `step_loss` over time and batch.

        Args:
            outs: ``(T, B, n_out)``.

        Returns:
            Scalar: ``sum_t mask_t mean_b step_loss / sum_t mask_t``.
        """
        self._check_outs(outs, batch, "loss")
        per_step = jax.vmap(jax.vmap(self.step_loss))(outs, batch.targets)  # (T, B)
        return jnp.sum(batch.mask * jnp.mean(per_step, axis=1)) / jnp.sum(batch.mask)

    def accuracy(self, outs: jax.Array, batch: Batch) -> jax.Array:
        """Score of ``outs`` ``(T, B, n_out)`` on ``batch``; higher is better, 1 is perfect.

        Classification: mask-weighted fraction of steps and samples whose argmax output is the
        target class (constant guessing scores about `chance`).
        Regression: ``1 - NMSE``, the mask-weighted mean squared error (summed over outputs)
        divided by `target_variance`; predicting the targets' mean scores about 0 (`chance`),
        worse predictions score below 0.
        """
        self._check_outs(outs, batch, "accuracy")
        weight = batch.mask[:, None] / (jnp.sum(batch.mask) * outs.shape[1])  # (T, 1)
        if self.kind == "classification":
            hit = (jnp.argmax(outs, axis=-1) == batch.targets).astype(jnp.float32)
            return jnp.sum(weight * hit)
        sq = jnp.sum(jnp.square(outs - batch.targets), axis=-1)                # (T, B)
        return 1.0 - jnp.sum(weight * sq) / self.target_variance


class RegressionTask(Task):
    """A regression task over ``length`` steps (its ``defaults`` have a ``length``): `n_steps` is
    ``length``; `chance` is 0, the score of predicting the targets' mean."""

    kind = "regression"

    @property
    def n_steps(self) -> int:
        return self.length

    @property
    def chance(self) -> float:
        return 0.0
