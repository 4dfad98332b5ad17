"""Evidence accumulation (cue accumulation), the e-prop benchmark of Bellec et al. (2020)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError
from etprop.tasks.base import Batch, Task, population_spikes, spike_prob

__all__ = ["Evidence"]


class Evidence(Task):
    """Count left and right cues through a delay; at the recall cue, report the majority side.

    Four Poisson input populations (channels in this order)::

        left  [0, p)          fires at cue_rate during a left cue
        right [p, 2p)         fires at cue_rate during a right cue
        recall [2p, 3p)       fires at cue_rate during the recall period
        noise [3p, 3p + n_noise)  fires at noise_rate throughout

    with ``p = pop_size``. Timeline (``T = n_cues * (cue_steps + gap_steps) + delay + recall_steps``):
    ``n_cues`` cues of ``cue_steps``, each followed by a silent gap, the delay, then the recall.
    Each cue's side is a fair coin; ``n_cues`` is odd so there is no tie.

    ``targets`` ``(T, B)`` int32, the label (0 = left, 1 = right) at every step; ``mask`` 1 on the
    recall steps.

    Defaults: the cue-accumulation task of Bellec et al. (2020, Fig. 3) in its timing, at
    ``dt = 10 ms`` a step: 7 cues of 100 ms (10 steps) each followed by 50 ms (5 steps) of
    silence, a delay of 1,000 ms (100 steps), a recall period of 150 ms (15 steps), so
    ``T = 220`` steps = 2,200 ms; four populations of 10 input neurons, cues and recall at
    40 Hz, noise at 10 Hz throughout. What differs from the paper and why:

    * ``dt`` is 10 ms, not 1 ms: the same trial in 220 steps instead of 2,200, so that a run
      trains in minutes on a CPU (every algorithm's cost is linear in the number of steps).
      Rates and the networks' time constants are in Hz and ms, so they do not change with
      ``dt``; at 40 Hz a cue neuron fires in a 10 ms step with probability 0.4, so spike
      timing is coarser (at most one spike a step).
    * the delay is fixed (the paper's trials also end with the recall 2,250 ms after onset);
      the loss is the cross-entropy at every recall step (the paper: of the output averaged
      over the recall period), and there is no firing-rate regulariser in the loss (the
      built-in tasks' loss sees only the network's output).

    ``etprop train --task evidence`` uses the paper's network (``--model alif``: 50 LIF and 50
    adaptive neurons, ``tau_a = 2000 ms``, a leaky readout; see `etprop.experiment.models`)
    with the settings of `train_defaults`.
    """

    name = "evidence"
    kind = "classification"
    spiking_input = True
    defaults = {"n_cues": 7, "pop_size": 10, "n_noise": 10, "cue_steps": 10, "gap_steps": 5,
                "delay": 100, "recall_steps": 15, "cue_rate": 40.0, "noise_rate": 10.0, "dt": 10.0}
    may_be_zero = frozenset({"n_noise", "gap_steps", "delay"})
    train_defaults = {"model": "alif", "hidden": 100, "batch": 64, "steps": 600}

    def _validate(self):
        if self.n_cues % 2 == 0:
            raise ArgumentError(f"task 'evidence': n_cues must be odd (no ties), got {self.n_cues}")
        self._check_prob("cue_rate")
        self._check_prob("noise_rate")

    @property
    def n_in(self) -> int:
        return 3 * self.pop_size + self.n_noise

    @property
    def n_out(self) -> int:
        return 2

    @property
    def n_steps(self) -> int:
        return self.n_cues * (self.cue_steps + self.gap_steps) + self.delay + self.recall_steps

    @property
    def chance(self) -> float:
        return 0.5

    def cue_of_step(self) -> np.ndarray:
        """``(T,)`` int: index of the cue shown at each step, -1 where none is."""
        period = self.cue_steps + self.gap_steps
        t = np.arange(self.n_steps)
        showing = (t < self.n_cues * period) & (t % period < self.cue_steps)
        return np.where(showing, t // period, -1)

    def recall_mask(self) -> np.ndarray:
        """``(T,)`` float32: 1 on the recall steps (the last ``recall_steps``)."""
        return (np.arange(self.n_steps) >= self.n_steps - self.recall_steps).astype(np.float32)

    def batch(self, key: jax.Array, batch_size: int) -> Batch:
        batch_size = self._check_batch_size(batch_size)
        k_side, k_spike = jax.random.split(key)
        sides = jax.random.bernoulli(k_side, 0.5, (batch_size, self.n_cues)).astype(jnp.int32)  # 1 = right
        label = (2 * jnp.sum(sides, axis=1) > self.n_cues).astype(jnp.int32)                     # (B,)

        cue = self.cue_of_step()
        side_t = sides[:, np.maximum(cue, 0)].T                                                  # (T, B)
        showing = jnp.asarray(cue >= 0)[:, None]
        recall = jnp.asarray(self.recall_mask())
        pc, pn = spike_prob(self.cue_rate, self.dt), spike_prob(self.noise_rate, self.dt)
        prob = jnp.stack([showing & (side_t == 0),
                          showing & (side_t == 1),
                          jnp.broadcast_to(recall[:, None] > 0, side_t.shape),
                          jnp.ones(side_t.shape, bool)], axis=-1).astype(jnp.float32)
        prob = prob * jnp.asarray([pc, pc, pc, pn], jnp.float32)
        inputs = population_spikes(k_spike, prob, (self.pop_size,) * 3 + (self.n_noise,))
        targets = jnp.broadcast_to(label, (self.n_steps, batch_size))
        return Batch(inputs, targets, recall)
