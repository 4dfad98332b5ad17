"""Delayed match-to-sample with Poisson spike input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError
from etprop.tasks.base import Batch, Task, population_spikes, spike_prob

__all__ = ["DMS"]


class DMS(Task):
    """See a sample stimulus, hold it through a delay, see a test stimulus, report match or not.

    Input populations (channels in this order), ``p = pop_size``, ``S = n_stimuli``::

        stimulus k [k p, (k+1) p)  for k < S   fires at cue_rate while stimulus k is shown
        recall [S p, (S+1) p)                 fires at cue_rate during the decision period
        noise [(S+1) p, (S+1) p + n_noise)    fires at noise_rate throughout

    Timeline (``T = 2 * cue_steps + delay + recall_steps``): sample for ``cue_steps``, ``delay``
    silent steps, test for ``cue_steps``, then the decision period. Half the trials match (test =
    sample); otherwise the test is one of the other stimuli, uniformly.

    ``targets`` ``(T, B)`` int32, 1 = match and 0 = non-match at every step; ``mask`` 1 on the
    decision steps.

    Defaults: a delay of 1,000 ms in 500 steps of ``dt = 2 ms``, the long-memory regime of
    delayed match-to-sample (delays of 500-1,000 steps, issue 17), with e-prop's input coding
    (populations of 10 neurons at 40 Hz, noise at 10 Hz): sample 150 ms (75 steps), delay
    1,000 ms (500 steps), test 150 ms (75 steps), decision 150 ms (75 steps): ``T = 725`` steps
    = 1,450 ms. The trial is the same in ms as the earlier one at ``dt = 10 ms`` (145 steps);
    the finer step makes the delay 500 steps long, for the learners to carry their traces and
    gradients through, while rates and the networks' time constants, in Hz and ms, do not change
    (a 40 Hz neuron spikes in a 2 ms step with probability 0.08). ``dt = 1 ms`` (1,450 steps)
    would not train within the 5-minute budget of a default run on a CPU. Shrink ``delay`` for
    tests.

    ``etprop train --task dms`` uses e-prop's network (``--model alif``: 50 LIF and 50 adaptive
    neurons, ``tau_a = 2000 ms``) with the settings of `train_defaults`: batch 32, 1,000 updates
    and Adam at ``lr = 0.025``. The learning rate is 2.5 times the global 0.01 because the
    spiking layer's weights are drawn with a scale ``1 / dt`` (one spike moves a membrane by
    the same amount at any ``dt``), i.e. five times larger at 2 ms than at 10 ms, while Adam's
    step is absolute: at 0.01 BPTT reached 0.65 in 600 updates (0.99 at 0.025, 0.98 at 0.05).
    Batch 32, not 64, because an update at batch 64 costs more than twice one at 32 here
    (D-RTRL 0.59 s against 0.18 s on one CPU core), so 1,000 updates of 32 fit the budget
    where 400 of 64 barely would (`benchmarks/RESULTS.md`, issue 17).
    """

    name = "dms"
    kind = "classification"
    spiking_input = True
    defaults = {"n_stimuli": 2, "pop_size": 10, "n_noise": 10, "cue_steps": 75, "delay": 500,
                "recall_steps": 75, "cue_rate": 40.0, "noise_rate": 10.0, "dt": 2.0}
    may_be_zero = frozenset({"n_noise", "delay"})
    train_defaults = {"model": "alif", "hidden": 100, "batch": 32, "steps": 1000, "lr": 0.025}

    def _validate(self):
        if self.n_stimuli < 2:
            raise ArgumentError(f"task 'dms': n_stimuli must be >= 2, got {self.n_stimuli}")
        self._check_prob("cue_rate")
        self._check_prob("noise_rate")

    @property
    def n_in(self) -> int:
        return (self.n_stimuli + 1) * self.pop_size + self.n_noise

    @property
    def n_out(self) -> int:
        return 2

    @property
    def n_steps(self) -> int:
        return 2 * self.cue_steps + self.delay + self.recall_steps

    @property
    def chance(self) -> float:
        return 0.5

    def windows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(T,)`` bool masks of the sample, test and decision periods."""
        t = np.arange(self.n_steps)
        test_start = self.cue_steps + self.delay
        return (t < self.cue_steps,
                (t >= test_start) & (t < test_start + self.cue_steps),
                t >= self.n_steps - self.recall_steps)

    def batch(self, key: jax.Array, batch_size: int) -> Batch:
        batch_size = self._check_batch_size(batch_size)
        S, B = self.n_stimuli, batch_size
        k_sample, k_match, k_other, k_spike = jax.random.split(key, 4)
        sample = jax.random.randint(k_sample, (B,), 0, S, dtype=jnp.int32)
        match = jax.random.bernoulli(k_match, 0.5, (B,))
        # A shift in [1, S) never lands back on the sample, and is uniform over the others.
        other = (sample + jax.random.randint(k_other, (B,), 1, S, dtype=jnp.int32)) % S
        test = jnp.where(match, sample, other)

        in_sample, in_test, in_recall = (jnp.asarray(w)[:, None] for w in self.windows())
        shown = jnp.where(in_sample, sample, jnp.where(in_test, test, -1))           # (T, B), -1: none
        pc, pn = spike_prob(self.cue_rate, self.dt), spike_prob(self.noise_rate, self.dt)
        prob = jnp.concatenate([
            jax.nn.one_hot(shown, S, dtype=jnp.float32) * pc,                      # -1 -> all zeros
            jnp.broadcast_to(in_recall, shown.shape)[..., None].astype(jnp.float32) * pc,
            jnp.full(shown.shape + (1,), pn, jnp.float32)], axis=-1)
        inputs = population_spikes(k_spike, prob, (self.pop_size,) * (S + 1) + (self.n_noise,))
        targets = jnp.broadcast_to(match.astype(jnp.int32), (self.n_steps, B))
        mask = jnp.asarray(self.windows()[2], jnp.float32)
        return Batch(inputs, targets, mask)
