"""More gated rate cells, the ones braintrace also ships: `MiniLSTM`, `CFNCell`, `URLSTMCell`.

Built as the cells of `etprop.nn.rnn` (zero-initialised hidden states, gates through
`etprop.nn.Linear` on ``[x, h]``), so every weight goes through an ETP operator and is traced;
their cosines to BPTT are pinned in ``tests/nn/test_rnn.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import brainstate
import jax
import jax.numpy as jnp

from etprop import operators as ops
from etprop.nn.compat import accepts_keywords
from etprop.nn.initializers import Init, init_array, split_keys
from etprop.nn.linear import Linear
from etprop.nn.cells import RNNCell, activation_fn, concat_xh, make_gates

__all__ = ["MiniLSTM", "CFNCell", "URLSTMCell"]


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class MiniLSTM(RNNCell):
    r"""minLSTM-style cell: forget and input gates on ``[x, h]``, a linear candidate of ``x``.

    .. math::

        f_t &= \sigma([x_t, h_{t-1}]\, W_f + b_f) \qquad
        i_t = \sigma([x_t, h_{t-1}]\, W_i + b_i) \\
        h_t &= f_t \odot h_{t-1} + i_t \odot (x_t\, W_x + b_x)

    States: ``h`` ``(num_out,)``. Parameters: ``Wf``, ``Wi``, ``Wx``. Returns ``h_t``.

    Online learning: all three traced; the diagonal Jacobian is :math:`f_t`, the recurrence
    through the gates' input ``[x, h]`` is dropped (D-RTRL approximates BPTT).

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> cell = etprop.nn.MiniLSTM(3, 8, key=1)
        >>> cell.Wf.weight.value.shape, cell.Wx.weight.value.shape    # gates on [x, h]; candidate on x
        ((11, 8), (3, 8))
        >>> cell(jnp.ones(3)).shape
        (8,)
    """

    def __init__(self, num_in: int, num_out: int, *, w_init: Init = None, b_init: Init = None, key=None,
                 name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        k1, k2 = split_keys(key, 2)
        g = make_gates(("f", "i"), num_in + num_out, num_out, w_init, b_init, k1)
        self.Wf, self.Wi = g["f"], g["i"]
        self.Wx = Linear(num_in, num_out, w_init=w_init, b_init=b_init, key=k2)

    def update(self, x):
        xh = concat_xh(x, self.h.value)
        f = jax.nn.sigmoid(self.Wf(xh))
        i = jax.nn.sigmoid(self.Wi(xh))
        self.h.value = f * self.h.value + i * self.Wx(x)
        return self.h.value


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class CFNCell(RNNCell):
    r"""Chaos-free network cell (Laurent & von Brecht 2017, "A recurrent neural network without chaos").

    .. math::

        \theta_t &= \sigma([x_t, h_{t-1}]\, W_\theta + b_\theta) \qquad
        \eta_t = \sigma([x_t, h_{t-1}]\, W_\eta + b_\eta) \\
        h_t &= \theta_t \odot \phi(h_{t-1}) + \eta_t \odot \phi(x_t\, W_h + b_h)

    States: ``h`` ``(num_out,)``. Parameters: ``Wf`` (:math:`W_\theta`), ``Wi``
    (:math:`W_\eta`), ``Wh``. Returns ``h_t``.

    Online learning: all three traced; the diagonal Jacobian is
    :math:`\theta_t \phi'(h_{t-1})`, the recurrence through the gates' input is dropped.

    Examples:
        >>> import brainstate, jax.numpy as jnp, etprop
        >>> cell = etprop.nn.CFNCell(3, 8)
        >>> _ = brainstate.nn.init_all_states(cell, batch_size=4)
        >>> for _ in range(10):                                   # h stays bounded: no chaos
        ...     h = cell(jnp.ones((4, 3)))
        >>> h.shape, float(abs(h).max()) < 2.0
        ((4, 8), True)
    """

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        k1, k2 = split_keys(key, 2)
        g = make_gates(("f", "i"), num_in + num_out, num_out, w_init, b_init, k1)
        self.Wf, self.Wi = g["f"], g["i"]
        self.Wh = Linear(num_in, num_out, w_init=w_init, b_init=b_init, key=k2)

    def update(self, x):
        h = self.h.value
        xh = concat_xh(x, h)
        theta = jax.nn.sigmoid(self.Wf(xh))
        eta = jax.nn.sigmoid(self.Wi(xh))
        self.h.value = theta * self.activation(h) + eta * self.activation(self.Wh(x))
        return self.h.value


def _urlstm_bias(key, shape, dtype):
    """The forget bias of Gu et al. (2020): ``b = -log(1 / u - 1)``, ``u ~ U(1/n, 1 - 1/n)``, so the
    gates start spread over timescales."""
    n = shape[-1]
    uu = jax.random.uniform(key, shape, dtype, 1.0 / n, 1.0 - 1.0 / n)
    return -jnp.log(1.0 / uu - 1.0)


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class URLSTMCell(RNNCell):
    r"""LSTM with the uniform-refine gates of Gu et al. (2020, "Improving the gating mechanism of RNNs").

    .. math::

        f_t &= \sigma([x_t, h_{t-1}]\, W_f + b) \qquad r_t = \sigma([x_t, h_{t-1}]\, W_r - b) \\
        g_t &= 2 r_t f_t + (1 - 2 r_t) f_t^2 \\
        c_t &= g_t \odot c_{t-1} + (1 - g_t) \odot \phi([x_t, h_{t-1}]\, W_u) \\
        h_t &= \sigma([x_t, h_{t-1}]\, W_o) \odot \phi(c_t)

    ``b`` (``forget_bias``, trainable, through `etprop.element_wise`) starts as
    ``-log(1/u - 1)``, ``u ~ U(1/n, 1 - 1/n)``: gates spread over timescales.

    States: ``h``, ``c`` (``S = 2`` per unit). Parameters: ``Wf``, ``Wr``, ``Wu``, ``Wo``
    (no biases) and ``forget_bias``. Returns ``h_t``.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> cell = etprop.nn.URLSTMCell(3, 8, key=0)
        >>> cell.forget_bias.value.shape, cell.Wf.bias is None     # one shared trainable bias, no gate biases
        ((8,), True)
        >>> [cell(jnp.ones(3)).shape, cell.c.value.shape]
        [(8,), (8,)]
    """

    state_names = ("h", "c")

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", *,
                 w_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        keys = split_keys(key, 5)
        self.Wf, self.Wr, self.Wu, self.Wo = (Linear(num_in + num_out, num_out, bias=False, w_init=w_init, key=k)
                                              for k in keys[:4])
        self.forget_bias = brainstate.ParamState(init_array(_urlstm_bias, keys[4], (num_out,), "forget_bias"))

    def update(self, x):
        xh = concat_xh(x, self.h.value)
        b = ops.element_wise(self.forget_bias.value)
        f = jax.nn.sigmoid(self.Wf(xh) + b)
        r = jax.nn.sigmoid(self.Wr(xh) - b)
        g = 2.0 * r * f + (1.0 - 2.0 * r) * f ** 2
        c = g * self.c.value + (1.0 - g) * self.activation(self.Wu(xh))
        self.c.value = c
        self.h.value = jax.nn.sigmoid(self.Wo(xh)) * self.activation(c)
        return self.h.value
