"""Pattern generation: regress fixed sums of sinusoids from frozen Poisson input (Bellec et al. 2020)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from etprop.tasks.base import Batch, RegressionTask, spike_prob

__all__ = ["Pattern"]


class Pattern(RegressionTask):
    """Reproduce ``n_patterns`` fixed target curves, each cued by its own frozen spike pattern.

    Pattern ``k`` is a ``(length, n_inputs)`` Poisson spike raster at ``input_rate`` and a
    ``(length, n_outputs)`` target, each output a sum of sinusoids with ``freqs`` cycles per
    sequence, amplitudes uniform in [0.5, 2] and phases uniform in [0, 2 pi), scaled to peak
    |value| 1. Both are drawn ONCE from ``seed`` (numpy, so they do not depend on JAX's PRNG
    settings) and never change: every batch shows the same inputs. With ``n_patterns > 1`` the
    key picks which pattern each sample shows; with one pattern the key is unused.

    ``targets`` ``(T, B, n_outputs)`` float32; ``mask`` all ones. Defaults follow Bellec et
    al.'s 1, 2, 3 and 5 Hz components over one second, shrunk to 200 steps and 50 inputs.
    ``etprop train --task pattern`` fits them as the paper does, with a recurrent network of
    leaky integrate-and-fire neurons (``--model lif``) read out by leaky integrators, 300
    updates (`train_defaults`; measured in ``benchmarks/RESULTS.md``, issue 17).
    """

    name = "pattern"
    spiking_input = True
    defaults = {"n_inputs": 50, "n_outputs": 1, "length": 200, "n_patterns": 1, "input_rate": 50.0,
                "dt": 1.0, "freqs": (1.0, 2.0, 3.0, 5.0), "seed": 0}
    may_be_zero = frozenset({"seed"})
    train_defaults = {"model": "lif", "steps": 300}

    def __init__(self, **overrides):
        super().__init__(**overrides)
        inputs, targets = self._draw()
        object.__setattr__(self, "_inputs", inputs)
        object.__setattr__(self, "_targets", targets)

    def _validate(self):
        self._check_prob("input_rate")

    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The frozen ``(P, T, n_inputs)`` spikes and ``(P, T, n_outputs)`` targets."""
        rng = np.random.default_rng(self.seed)
        P, T = self.n_patterns, self.length
        spikes = (rng.random((P, T, self.n_inputs)) < spike_prob(self.input_rate, self.dt))
        freqs = np.asarray(self.freqs)
        amp = rng.uniform(0.5, 2.0, (P, 1, self.n_outputs, freqs.size))
        phase = rng.uniform(0.0, 2 * np.pi, (P, 1, self.n_outputs, freqs.size))
        t = (np.arange(T) / T)[None, :, None, None]
        curves = np.sum(amp * np.sin(2 * np.pi * freqs * t + phase), axis=-1)    # (P, T, n_out)
        curves /= np.max(np.abs(curves), axis=1, keepdims=True)
        return spikes.astype(np.float32), curves.astype(np.float32)

    @property
    def frozen_inputs(self) -> np.ndarray:
        """``(n_patterns, T, n_inputs)`` float32 spike rasters (a copy)."""
        return self._inputs.copy()

    @property
    def patterns(self) -> np.ndarray:
        """``(n_patterns, T, n_outputs)`` float32 target curves (a copy)."""
        return self._targets.copy()

    @property
    def n_in(self) -> int:
        return self.n_inputs

    @property
    def n_out(self) -> int:
        return self.n_outputs

    @property
    def target_variance(self) -> float:
        # Samples draw patterns uniformly, so the best constant is the mean over patterns and time.
        return float(np.sum(np.var(self._targets.astype(np.float64), axis=(0, 1))))

    def batch(self, key: jax.Array, batch_size: int) -> Batch:
        batch_size = self._check_batch_size(batch_size)
        if self.n_patterns == 1:
            which = jnp.zeros(batch_size, jnp.int32)
        else:
            which = jax.random.randint(key, (batch_size,), 0, self.n_patterns)
        inputs = jnp.swapaxes(jnp.asarray(self._inputs)[which], 0, 1)               # (T, B, n_in)
        targets = jnp.swapaxes(jnp.asarray(self._targets)[which], 0, 1)             # (T, B, n_out)
        return Batch(inputs, targets, jnp.ones(self.length, jnp.float32))
