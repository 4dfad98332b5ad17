"""The linear recurrent unit `LRUCell` (Orvieto et al. 2023): a diagonal complex recurrence,
its weights through `etprop.matmul` and `etprop.element_wise` (see `etprop.nn.rnn` for how the
rate cells learn online)."""

from __future__ import annotations

import math

import brainstate
import jax
import jax.numpy as jnp

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn.cells import RNNCell
from etprop.nn.compat import accepts_keywords
from etprop.nn.initializers import default_float, init_array, split_keys

__all__ = ["LRUCell"]


def _lru_modulus(nu_log):
    return jnp.exp(-jnp.exp(nu_log))


@accepts_keywords({"d_model": "num_in", "d_hidden": "num_hidden"})
class LRUCell(RNNCell):
    r"""Linear recurrent unit (Orvieto et al. 2023), with the complex state as two real ones.

    .. math::

        \lambda &= \exp(-e^{\nu} + i\, e^{\theta}), \qquad \gamma = e^{\gamma_{\log}} \\
        h_t &= \lambda \odot h_{t-1} + \gamma \odot (x_t B), \qquad B = B_{re} + i B_{im} \\
        y_t &= \mathrm{Re}(h_t C) + D \odot x_t, \qquad C = C_{re} + i C_{im}

    In real arithmetic, with :math:`\lambda = a + i b`, :math:`a = e^{-e^\nu}\cos e^\theta`,
    :math:`b = e^{-e^\nu}\sin e^\theta`:

    .. math::

        h^{re}_t &= a\, h^{re}_{t-1} - b\, h^{im}_{t-1} + \gamma \odot (x_t B_{re}) \\
        h^{im}_t &= b\, h^{re}_{t-1} + a\, h^{im}_{t-1} + \gamma \odot (x_t B_{im}) \\
        y_t &= h^{re}_t C_{re} - h^{im}_t C_{im} + D \odot x_t

    Initialisation as in the paper: :math:`|\lambda|` uniform on the ring
    ``[r_min, r_max]``, phase uniform in ``[0, max_phase]``,
    :math:`\gamma = \sqrt{1 - |\lambda|^2}`, ``B`` entries normal with std
    ``1/sqrt(2 num_in)``, ``C`` std ``1/sqrt(num_hidden)``, ``D`` standard normal.

    Args:
      num_in: input size ``H``; num_hidden: ``N`` complex units; num_out: output size
        (default ``num_in``; the skip ``D`` needs ``num_out == num_in``).
      r_min, r_max, max_phase: initial eigenvalue ring and phase range.
      skip: learn the element-wise skip ``D``.
      key: seed or PRNG key.

    States: ``h_re`` and ``h_im``, each ``(num_hidden,)``: one hidden group with ``S = 2``
    states per unit. Parameters: ``nu_log``, ``theta_log``, ``gamma_log`` ``(N,)`` (through
    `etprop.element_wise`), ``B_re``, ``B_im`` ``(H, N)``, ``C_re``, ``C_im`` ``(N, out)``
    (through `etprop.matmul`), ``D`` ``(H,)`` (through `etprop.element_wise`). Returns
    ``y_t``.

    Online learning: ``nu_log``, ``theta_log``, ``gamma_log``, ``B_re``, ``B_im`` are
    traced; the recurrence is diagonal per unit (a 2x2 rotation-scaling block on
    ``(h_re, h_im)``), so **D-RTRL equals BPTT**. ``C`` and ``D`` act on the output only
    (they reach no hidden state): not traced, exact gradient through the current step,
    which for a memoryless readout is the BPTT gradient.

    Examples:
        >>> import brainstate, jax.numpy as jnp, etprop
        >>> lru = etprop.nn.LRUCell(3, 16)                 # 16 complex units; output size = input size
        >>> _ = brainstate.nn.init_all_states(lru, batch_size=4)
        >>> lru(jnp.ones((4, 3))).shape
        (4, 3)
        >>> sorted(lru.states(brainstate.HiddenState))     # one group, S = 2
        [('h_im',), ('h_re',)]
    """

    state_names = ("h_re", "h_im")

    def __init__(self, num_in: int, num_hidden: int, num_out: int | None = None, *, r_min: float = 0.0,
                 r_max: float = 0.99, max_phase: float = 2 * math.pi, skip: bool = True, key=None,
                 name: str | None = None):
        num_out = num_in if num_out is None else num_out
        super().__init__(num_in, num_out, state_size=num_hidden, name=name)
        if not 0.0 <= r_min < r_max < 1.0:
            raise ArgumentError(f"LRUCell: need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if skip and num_out != num_in:
            raise ArgumentError(f"LRUCell: the skip D is element-wise and needs num_out == num_in "
                                f"({num_out} != {num_in}); pass skip=False")
        self.num_hidden = self.state_size
        N, H = self.num_hidden, self.num_in
        dt = default_float()
        k = split_keys(key, 7)
        u1 = jax.random.uniform(k[0], (N,), dt)
        u2 = jax.random.uniform(k[1], (N,), dt)
        nu_log = jnp.log(-0.5 * jnp.log(jnp.maximum(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2, 1e-12)))
        theta_log = jnp.log(max_phase * jnp.maximum(u2, 1e-6))
        gamma_log = jnp.log(jnp.sqrt(1.0 - jnp.exp(-2.0 * jnp.exp(nu_log))))
        self.nu_log = brainstate.ParamState(nu_log)
        self.theta_log = brainstate.ParamState(theta_log)
        self.gamma_log = brainstate.ParamState(gamma_log)
        normal = jax.nn.initializers.normal
        self.B_re = brainstate.ParamState(init_array(normal(1 / math.sqrt(2 * H)), k[2], (H, N), "B_re"))
        self.B_im = brainstate.ParamState(init_array(normal(1 / math.sqrt(2 * H)), k[3], (H, N), "B_im"))
        self.C_re = brainstate.ParamState(init_array(normal(1 / math.sqrt(N)), k[4], (N, num_out), "C_re"))
        self.C_im = brainstate.ParamState(init_array(normal(1 / math.sqrt(N)), k[5], (N, num_out), "C_im"))
        self.D = brainstate.ParamState(init_array(normal(1.0), k[6], (H,), "D")) if skip else None

    def eigenvalues(self) -> jax.Array:
        """The complex diagonal recurrence :math:`\\lambda` ``(num_hidden,)``."""
        return jnp.exp(-jnp.exp(self.nu_log.value) + 1j * jnp.exp(self.theta_log.value))

    def update(self, x):
        modulus = ops.element_wise(self.nu_log.value, weight_fn=_lru_modulus)
        phase = ops.element_wise(self.theta_log.value, weight_fn=jnp.exp)
        gamma = ops.element_wise(self.gamma_log.value, weight_fn=jnp.exp)
        a, b = modulus * jnp.cos(phase), modulus * jnp.sin(phase)
        h_re, h_im = self.h_re.value, self.h_im.value
        self.h_re.value = a * h_re - b * h_im + gamma * ops.matmul(x, self.B_re.value)
        self.h_im.value = b * h_re + a * h_im + gamma * ops.matmul(x, self.B_im.value)
        y = ops.matmul(self.h_re.value, self.C_re.value) - ops.matmul(self.h_im.value, self.C_im.value)
        if self.D is not None:
            y = y + ops.element_wise(self.D.value) * x
        return y
