r"""`SpikingRecurrentLayer`: a recurrent layer of LIF / ALIF neurons (the e-prop network).

.. math::

    I^t &= x^t W_{in} + z^{t-1} \tilde W_{rec}, \qquad
    \tilde W_{rec} = M \odot \begin{cases} W_{rec} & \text{no Dale's law} \\
                                    \operatorname{diag}(\sigma)\,|W_{rec}| & \text{Dale's law} \end{cases} \\
    z^t &= \mathrm{neuron}(I^t)

``M`` is 0 on the diagonal (no self-connections, unless ``self_connections=True``) and 1
elsewhere; ``sigma_i = +1`` for the first ``round(dale * n_rec)`` (excitatory) neurons and
``-1`` for the rest (inhibitory), so every outgoing weight of a neuron has its sign. The
mask and sign are applied inside ``etprop.matmul`` through ``weight_fn``, so the gradient
is w.r.t. the raw ``W_rec`` and the constraint holds whatever value it takes.
"""

from __future__ import annotations

import brainstate
import jax
import jax.numpy as jnp
import numpy as np

from etprop import operators as ops
from etprop.errors import ArgumentError
from etprop.nn.neurons import ALIF, GIF, IF, LIF, Neuron
from etprop.nn.readout import init_weight
from etprop.nn.units import batch_shape, filled

__all__ = ["SpikingRecurrentLayer"]

_NEURONS = {"if": IF, "lif": LIF, "alif": ALIF, "gif": GIF}


class SpikingRecurrentLayer(brainstate.nn.Module):
    r"""Recurrent spiking layer: input and recurrent weights through ``etprop.matmul``.

    .. math::

        I^t = x^t W_{in} + z^{t-1} \tilde W_{rec}, \qquad z^t = \mathrm{neuron}(I^t)

    with ``\tilde W_{rec}`` the recurrent weight after the self-connection mask and, with
    ``dale``, Dale's law (see the module docstring). ``update(x)`` returns ``z^t``.

    States: the neuron's (``neuron.v``; ``neuron.a`` for ALIF; ...) and ``z`` (the
    spikes of the previous step, fed back). They all have shape ``(n_rec,)`` and depend
    on each other only per neuron within a step, so they form one hidden group
    (S = 2 for LIF, 3 for ALIF).

    Online learning: ``w_in`` and ``w_rec`` are both traced into that group (each
    ``etprop.matmul`` output drives the neuron element-wise); a trainable neuron ``tau``
    too. The recurrent influence of a neuron on *other* neurons passes through the
    ``w_rec`` operator, whose input is cut: D-RTRL and ES-D-RTRL keep the per-neuron
    (diagonal) part of the hidden Jacobian, as e-prop does, so the gradient is an
    approximation of BPTT (exact when ``w_rec = 0``).

    Args:
      n_in, n_rec: numbers of inputs and recurrent neurons.
      neuron: ``'lif'``, ``'alif'``, ``'if'``, ``'gif'`` or a neuron module of shape
        ``(n_rec,)``; ``**neuron_kwargs`` go to the neuron class (e.g. ``tau``,
        ``tau_a``, ``spike_fn``, ``V_th``; with potentials in mV give ``R=1 * u.mV``).
      dale: None, or the fraction of excitatory neurons (Dale's law on ``w_rec``).
      self_connections: keep the diagonal of ``w_rec``.
      w_in_init, w_rec_init: arrays, initializers or None (``N(0, scale^2/fan_in)`` with
        ``in_scale`` / ``rec_scale``); ``seed`` for the default draws.

    Examples:
        >>> import brainstate, brainunit as u, jax.numpy as jnp, etprop
        >>> with brainstate.environ.context(dt=1.0 * u.ms):
        ...     layer = etprop.nn.SpikingRecurrentLayer(3, 8, neuron="alif", tau=20 * u.ms)
        ...     _ = brainstate.nn.init_all_states(layer, batch_size=2)
        ...     z = layer(jnp.ones((2, 3)))               # this step's spikes, (B, n_rec)
        >>> z.shape
        (2, 8)
    """

    def __init__(self, n_in: int, n_rec: int, neuron="lif", *, dale: float | None = None,
                 self_connections: bool = False, w_in_init=None, w_rec_init=None, in_scale: float = 1.0,
                 rec_scale: float = 1.0, seed=None, name=None, **neuron_kwargs):
        super().__init__(name=name)
        for what, v in (("n_in", n_in), ("n_rec", n_rec)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ArgumentError(f"SpikingRecurrentLayer: '{what}' must be a positive int, got {v!r}")
        self.n_in, self.n_rec = int(n_in), int(n_rec)
        self.in_size, self.out_size = (self.n_in,), (self.n_rec,)
        self.varshape = self.out_size
        if isinstance(neuron, str):
            if neuron.lower() not in _NEURONS:
                raise ArgumentError(f"neuron must be one of {sorted(_NEURONS)} or a neuron module, got {neuron!r}")
            self.neuron = _NEURONS[neuron.lower()](self.n_rec, **neuron_kwargs)
        else:
            if neuron_kwargs:
                raise ArgumentError("neuron_kwargs apply only when neuron is given by name")
            if not isinstance(neuron, Neuron) or tuple(neuron.varshape) != (self.n_rec,):
                raise ArgumentError(f"neuron must be an etprop.nn neuron of shape ({self.n_rec},), got {neuron!r}")
            self.neuron = neuron
        k_in = k_rec = None
        if seed is not None:
            k_in, k_rec = jax.random.split(jax.random.key(seed) if isinstance(seed, int) else seed)
        self.w_in = brainstate.ParamState(init_weight(w_in_init, (self.n_in, self.n_rec), seed=k_in,
                                                      scale=in_scale))
        w_rec = init_weight(w_rec_init, (self.n_rec, self.n_rec), seed=k_rec, scale=rec_scale)
        self.self_connections = bool(self_connections)
        mask = np.ones((self.n_rec, self.n_rec))
        if not self.self_connections:
            np.fill_diagonal(mask, 0.0)
        self.dale = dale
        if dale is not None:
            if not 0.0 <= float(dale) <= 1.0:
                raise ArgumentError(f"dale is the fraction of excitatory neurons, in [0, 1]; got {dale!r}")
            n_exc = int(round(float(dale) * self.n_rec))
            sign = np.where(np.arange(self.n_rec) < n_exc, 1.0, -1.0)
            self.n_exc = n_exc
            self._sign = sign[:, None] * mask
            w_rec = jnp.abs(w_rec)
        else:
            self.n_exc = None
            self._sign = mask
        self._mask = mask
        self.w_rec = brainstate.ParamState(w_rec)
        self.init_state()

    def _rec_weight_fn(self, w):
        """The effective recurrent weight: mask (and Dale's signs) applied to the raw one."""
        sign = jnp.asarray(self._sign, dtype=w.dtype)
        return (jnp.abs(w) if self.dale is not None else w) * sign

    @property
    def effective_w_rec(self):
        """``\\tilde W_{rec}`` as used in the step."""
        return self._rec_weight_fn(self.w_rec.value)

    def init_state(self, batch_size=None, **kwargs):
        """Create ``z`` (``brainstate.nn.init_all_states`` also initialises the neuron)."""
        self.z = brainstate.HiddenState(filled(batch_shape(self.varshape, batch_size), 0.0))

    def reset_state(self, batch_size=None, **kwargs):
        self.z.value = filled(batch_shape(self.varshape, batch_size), 0.0)

    def update(self, x):
        current = (ops.matmul(x, self.w_in.value)
                   + ops.matmul(self.z.value, self.w_rec.value, weight_fn=self._rec_weight_fn))
        s = self.neuron(current)
        self.z.value = s
        return s
