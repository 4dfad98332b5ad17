"""The adding problem (Hochreiter & Schmidhuber, 1997)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from etprop.errors import ArgumentError
from etprop.tasks.base import Batch, RegressionTask

__all__ = ["Adding"]


class Adding(RegressionTask):
    """Output, at the last step, the sum of the two values the marker channel points at.

    ``inputs`` ``(T, B, 2)``: channel 0 holds values uniform in [0, 1), channel 1 is 1 at two
    steps and 0 elsewhere, one marker in each half of the sequence (so the memory span is about
    ``T / 2`` or more). ``targets`` ``(T, B, 1)`` float32, the sum at every step; ``mask`` 1 at the
    last step only. The sum of two U(0, 1) values has variance 1/6, the `target_variance`.
    """

    name = "adding"
    spiking_input = False
    defaults = {"length": 50}

    def _validate(self):
        if self.length < 2:
            raise ArgumentError(f"task 'adding': length must be >= 2 (two markers), got {self.length}")

    @property
    def n_in(self) -> int:
        return 2

    @property
    def n_out(self) -> int:
        return 1

    @property
    def target_variance(self) -> float:
        return 1.0 / 6.0

    def batch(self, key: jax.Array, batch_size: int) -> Batch:
        batch_size = self._check_batch_size(batch_size)
        T, B, half = self.length, batch_size, self.length // 2
        k_val, k_first, k_second = jax.random.split(key, 3)
        values = jax.random.uniform(k_val, (T, B), jnp.float32)
        first = jax.random.randint(k_first, (B,), 0, half)
        second = jax.random.randint(k_second, (B,), half, T)
        t = jnp.arange(T)[:, None]
        marker = ((t == first) | (t == second)).astype(jnp.float32)                  # (T, B)
        total = jnp.sum(values * marker, axis=0)                                      # (B,)
        inputs = jnp.stack([values, marker], axis=-1)
        targets = jnp.broadcast_to(total[None, :, None], (T, B, 1)).astype(jnp.float32)
        mask = jnp.zeros(T, jnp.float32).at[-1].set(1.0)
        return Batch(inputs, targets, mask)
