"""Copying task: memorise a short symbol sequence, wait, then reproduce it in order."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from etprop.errors import ArgumentError
from etprop.tasks.base import Batch, Task

__all__ = ["Copying"]


class Copying(Task):
    """Recall ``length`` symbols drawn from ``n_symbols`` after a blank ``delay``.

    Timeline (``T = 2 * length + delay``)::

        [0, length)                     one-hot symbol i on channels [0, n_symbols)
        [length, length + delay)        blank (all zeros)
        [length + delay, T)             'go' channel (index n_symbols) on; recall symbol i

    ``inputs`` ``(T, B, n_symbols + 1)``; ``targets`` ``(T, B)`` int32, the symbol to recall at the
    recall steps and 0 elsewhere; ``mask`` 1 on the recall steps.
    The 'go' channel stays on through the recall so the net need not count the delay itself.
    """

    name = "copying"
    kind = "classification"
    spiking_input = False
    # Small enough for a 64-unit GRU to beat chance within a minute of CPU training.
    defaults = {"n_symbols": 4, "length": 5, "delay": 10}
    may_be_zero = frozenset({"delay"})

    def _validate(self):
        if self.n_symbols < 2:
            raise ArgumentError(f"task 'copying': n_symbols must be >= 2, got {self.n_symbols}")

    @property
    def n_in(self) -> int:
        return self.n_symbols + 1

    @property
    def n_out(self) -> int:
        return self.n_symbols

    @property
    def n_steps(self) -> int:
        return 2 * self.length + self.delay

    @property
    def chance(self) -> float:
        return 1.0 / self.n_symbols

    def batch(self, key: jax.Array, batch_size: int) -> Batch:
        batch_size = self._check_batch_size(batch_size)
        L, D, S = self.length, self.delay, self.n_symbols
        symbols = jax.random.randint(key, (L, batch_size), 0, S, dtype=jnp.int32)   # (L, B)
        shown = jax.nn.one_hot(symbols, S + 1, dtype=jnp.float32)                  # go channel 0
        blank = jnp.zeros((D, batch_size, S + 1), jnp.float32)
        go = jnp.zeros((L, batch_size, S + 1), jnp.float32).at[..., S].set(1.0)
        inputs = jnp.concatenate([shown, blank, go], axis=0)
        targets = jnp.concatenate([jnp.zeros((L + D, batch_size), jnp.int32), symbols], axis=0)
        mask = jnp.concatenate([jnp.zeros(L + D, jnp.float32), jnp.ones(L, jnp.float32)])
        return Batch(inputs, targets, mask)
