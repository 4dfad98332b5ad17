r"""Rate RNN cells whose weights learn online by eligibility traces.

Every cell is a `brainstate.nn.Module` with

* ``init_state(batch_size=None)``: creates its `brainstate.HiddenState` s, of shape
  ``(n,)`` or ``(batch_size, n)``, zero-initialised (also called by ``__init__``, so a
  cell works unbatched without it; `brainstate.nn.init_all_states` calls it);
* ``reset_state(batch_size=None)``: sets them back to zeros of that shape;
* ``update(x)``: one time step, ``x`` ``(num_in,)`` or ``(batch, num_in)``.

Every trainable weight goes through an ETP operator (the gates through `etprop.nn.Linear`,
on the concatenation ``[x, h]`` or on ``x`` alone; the LRU through `etprop.matmul` and
`etprop.element_wise`),
so no weight is left untrained. How each is learned follows from the compiled graph
(`learner.report()`):

* a weight whose operator output drives the hidden state through element-wise
  operations is **traced**: D-RTRL keeps a per-parameter trace ``dh/dW`` propagated by
  the *diagonal* of the hidden Jacobian, ES-D-RTRL a factorised trace (input trace x
  output trace);
* a weight whose output reaches the hidden state only through the *input* of another
  ETP operator (the GRU reset gate), or no hidden state at all (the LRU output
  projection), is **not traced**: it gets its exact gradient through the current step;
* recurrence through an operator's input (``h`` inside ``[x, h] W``) is the dense part
  of the hidden Jacobian. D-RTRL drops it, so it equals BPTT only for cells without it
  (`MiniGRU`, `LRUCell`); for the others it is an approximation (cosines to BPTT are
  measured in ``tests/nn/test_rnn.py``).

==================  ============  ===================================  ==================  ===============
cell                states        traced (D-RTRL: per-parameter)       not traced          D-RTRL vs BPTT
==================  ============  ===================================  ==================  ===============
`VanillaRNNCell`    h             W                                    --                  approximate
`GRUCell`           h             Wz, Wh                               Wr (reset gate)     approximate
`MGUCell`           h             Wf, Wh                               --                  approximate
`LSTMCell`          h, c (S=2)    Wi, Wf, Wg, Wo                       --                  approximate
`MinimalRNNCell`    h             Wx, Wu                               --                  approximate
`MiniGRU`           h             Wz, Wh                               --                  exact
`LRUCell`           h_re, h_im    nu_log, theta_log, gamma_log,        C_re, C_im, D       exact
                    (S=2)         B_re, B_im                           (output side)
==================  ============  ===================================  ==================  ===============

Initialisation: gate weights LeCun normal (std ``1/sqrt(fan_in)``), biases zero (the
LSTM forget-gate bias one), hidden states zero. ``w_init``/``b_init`` take an array or
a ``jax.nn.initializers`` callable, ``key`` an ``int`` seed, a PRNG key, or None
(brainstate's global RNG); see `etprop.nn.linear`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from etprop.nn.cells import RNNCell, activation_fn, concat_xh, make_gates
from etprop.nn.compat import accepts_keywords
from etprop.nn.initializers import Init, split_keys
from etprop.nn.linear import Linear
from etprop.nn.lru import LRUCell

__all__ = ["RNNCell", "VanillaRNNCell", "GRUCell", "MGUCell", "LSTMCell", "MinimalRNNCell", "MiniGRU",
           "LRUCell"]


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class VanillaRNNCell(RNNCell):
    r"""Elman RNN cell.

    .. math::

        h_t = \phi\big([x_t, h_{t-1}]\, W + b\big)

    with :math:`\phi` = ``activation`` (default ``tanh``).

    States: ``h`` ``(num_out,)``. Parameters: ``W.weight`` ``(num_in + num_out, num_out)``,
    ``W.bias``. Returns ``h_t``.

    Online learning: ``W`` is traced (its output drives ``h`` through :math:`\phi`, an
    element-wise tail). ``h_{t-1}`` reaches ``h_t`` *only* through ``W``'s input, so the
    diagonal hidden Jacobian D-RTRL keeps is zero: the per-parameter trace is the
    immediate term ``dh_{t-1}/dW`` with ``h_{t-2}`` fixed, i.e. D-RTRL is truncated BPTT
    over the last two steps. ES-D-RTRL replaces ``x_{t-1}`` in that term by a smoothed
    input trace. Both are approximations; see the measured cosines in the tests.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> cell = etprop.nn.VanillaRNNCell(3, 8, activation="relu")   # unbatched: h is (8,)
        >>> h = cell(jnp.ones(3))
        >>> h.shape, bool((h >= 0).all())
        ((8,), True)
    """

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        self.W = Linear(num_in + num_out, num_out, w_init=w_init, b_init=b_init, key=key)

    def update(self, x):
        self.h.value = self.activation(self.W(concat_xh(x, self.h.value)))
        return self.h.value


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class GRUCell(RNNCell):
    r"""Gated recurrent unit (Cho et al. 2014).

    .. math::

        z_t &= \sigma([x_t, h_{t-1}]\, W_z + b_z) \\
        r_t &= \sigma([x_t, h_{t-1}]\, W_r + b_r) \\
        \tilde h_t &= \phi([x_t, r_t \odot h_{t-1}]\, W_h + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    States: ``h`` ``(num_out,)``. Parameters: ``Wz``, ``Wr``, ``Wh`` (each ``.weight``
    ``(num_in + num_out, num_out)`` and ``.bias``). Returns ``h_t``.

    Online learning: the update-gate and candidate weights ``Wz``, ``Wh`` are traced (their
    outputs drive ``h`` element-wise); the diagonal Jacobian kept by D-RTRL is
    :math:`1 - z_t`. The reset-gate weight ``Wr`` is **not traced**: ``r_t`` reaches ``h_t``
    only through the input of ``Wh``, another ETP operator, so it gets its exact gradient
    through the current step (nonzero, never silently untrained). The recurrence through
    ``[x, h] W`` is dense, so D-RTRL and ES-D-RTRL approximate BPTT.

    Examples:
        >>> import brainstate, jax.numpy as jnp, etprop
        >>> cell = etprop.nn.GRUCell(3, 8)
        >>> _ = brainstate.nn.init_all_states(cell, batch_size=4)    # hidden states (4, 8)
        >>> cell(jnp.ones((4, 3))).shape                              # one step
        (4, 8)
    """

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        g = make_gates(("z", "r", "h"), num_in + num_out, num_out, w_init, b_init, key)
        self.Wz, self.Wr, self.Wh = g["z"], g["r"], g["h"]

    def update(self, x):
        h = self.h.value
        xh = concat_xh(x, h)
        z = jax.nn.sigmoid(self.Wz(xh))
        r = jax.nn.sigmoid(self.Wr(xh))
        cand = self.activation(self.Wh(concat_xh(x, r * h)))
        self.h.value = (1.0 - z) * h + z * cand
        return self.h.value


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class MGUCell(RNNCell):
    r"""Minimal gated unit (Zhou et al. 2016): a GRU whose forget gate also resets.

    .. math::

        f_t &= \sigma([x_t, h_{t-1}]\, W_f + b_f) \\
        \tilde h_t &= \phi([x_t, f_t \odot h_{t-1}]\, W_h + b_h) \\
        h_t &= (1 - f_t) \odot h_{t-1} + f_t \odot \tilde h_t

    States: ``h`` ``(num_out,)``. Parameters: ``Wf``, ``Wh``. Returns ``h_t``.

    Online learning: both weights are traced. ``f_t`` drives ``h_t`` directly (through
    :math:`(1 - f_t) h_{t-1} + f_t \tilde h_t`), so unlike the GRU's reset gate it has a
    trace; its path through ``Wh``'s input is kept only within the current step. The
    diagonal Jacobian is :math:`1 - f_t`; the dense recurrence through ``[x, h] W`` is
    dropped, so D-RTRL and ES-D-RTRL approximate BPTT.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> cell = etprop.nn.MGUCell(3, 8, key=0)                # a seed: the same weights every time
        >>> hs = [cell(x) for x in jnp.ones((5, 3))]            # five steps, unbatched
        >>> len(hs), hs[-1].shape
        (5, (8,))
    """

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        g = make_gates(("f", "h"), num_in + num_out, num_out, w_init, b_init, key)
        self.Wf, self.Wh = g["f"], g["h"]

    def update(self, x):
        h = self.h.value
        f = jax.nn.sigmoid(self.Wf(concat_xh(x, h)))
        cand = self.activation(self.Wh(concat_xh(x, f * h)))
        self.h.value = (1.0 - f) * h + f * cand
        return self.h.value


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class LSTMCell(RNNCell):
    r"""Long short-term memory cell (Hochreiter & Schmidhuber 1997, with forget gate).

    .. math::

        i_t &= \sigma([x_t, h_{t-1}]\, W_i + b_i) \qquad
        f_t = \sigma([x_t, h_{t-1}]\, W_f + b_f) \\
        g_t &= \phi([x_t, h_{t-1}]\, W_g + b_g) \qquad
        o_t = \sigma([x_t, h_{t-1}]\, W_o + b_o) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot \phi(c_t)

    ``b_f`` starts at ``forget_bias`` (default 1).

    States: ``h`` and ``c``, each ``(num_out,)``: one hidden group with ``S = 2`` states
    per unit. Parameters: ``Wi``, ``Wf``, ``Wg``, ``Wo``. Returns ``h_t``.

    Online learning: all four gate weights are traced (``i, f, g`` drive ``c``, ``o``
    drives ``h``; each ``(S=2)`` trace follows the per-unit 2x2 Jacobian
    :math:`\partial(c_t, h_t)/\partial(c_{t-1}, h_{t-1})` with ``h_{t-1}``-columns zero,
    since ``h_{t-1}`` acts only through the gates' inputs). That dense recurrence is
    dropped, so D-RTRL and ES-D-RTRL approximate BPTT.

    Examples:
        >>> import brainstate, jax.numpy as jnp, etprop
        >>> cell = etprop.nn.LSTMCell(3, 8)
        >>> _ = brainstate.nn.init_all_states(cell, batch_size=4)
        >>> h = cell(jnp.ones((4, 3)))
        >>> h.shape, cell.c.value.shape, float(cell.Wf.bias.value[0])   # the forget bias starts at 1
        ((4, 8), (4, 8), 1.0)
    """

    state_names = ("h", "c")

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", forget_bias: float = 1.0,
                 *, w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        fb = jax.nn.initializers.constant(forget_bias) if b_init is None else b_init
        g = make_gates(("i", "f", "g", "o"), num_in + num_out, num_out, w_init, b_init, key, b_inits={"f": fb})
        self.Wi, self.Wf, self.Wg, self.Wo = g["i"], g["f"], g["g"], g["o"]

    def update(self, x):
        xh = concat_xh(x, self.h.value)
        i = jax.nn.sigmoid(self.Wi(xh))
        f = jax.nn.sigmoid(self.Wf(xh))
        g = self.activation(self.Wg(xh))
        o = jax.nn.sigmoid(self.Wo(xh))
        c = f * self.c.value + i * g
        self.c.value = c
        self.h.value = o * self.activation(c)
        return self.h.value


@accepts_keywords({"in_size": "num_in", "out_size": "num_out", "phi": "activation"}, state_init=True)
class MinimalRNNCell(RNNCell):
    r"""MinimalRNN (Chen 2017): the input is mapped to a latent once; a gate mixes it in.

    .. math::

        z_t &= \phi(x_t\, W_x + b_x) \\
        u_t &= \sigma([z_t, h_{t-1}]\, W_u + b_u) \\
        h_t &= u_t \odot h_{t-1} + (1 - u_t) \odot z_t

    States: ``h`` ``(num_out,)``. Parameters: ``Wx`` ``(num_in, num_out)``, ``Wu``
    ``(2 num_out, num_out)``. Returns ``h_t``.

    Online learning: both traced. ``z_t`` drives ``h_t`` directly (the
    :math:`(1 - u_t) z_t` term); ``u_t`` drives it element-wise; the diagonal Jacobian is
    :math:`u_t`. The gate's recurrent part (``h_{t-1}`` inside ``[z, h] W_u``) is dense,
    and ``Wx``'s path through ``Wu``'s input mixes units, so D-RTRL and ES-D-RTRL
    approximate BPTT (both paths are exact within the current step).

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> cell = etprop.nn.MinimalRNNCell(3, 8)
        >>> cell.Wx.weight.value.shape, cell.Wu.weight.value.shape    # x -> latent z; [z, h] -> gate
        ((3, 8), (16, 8))
        >>> cell(jnp.ones(3)).shape
        (8,)
    """

    def __init__(self, num_in: int, num_out: int, activation: str | Callable = "tanh", *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        kx, ku = split_keys(key, 2)
        self.Wx = Linear(num_in, num_out, w_init=w_init, b_init=b_init, key=kx)
        self.Wu = Linear(2 * num_out, num_out, w_init=w_init, b_init=b_init, key=ku)

    def update(self, x):
        h = self.h.value
        z = self.activation(self.Wx(x))
        u = jax.nn.sigmoid(self.Wu(concat_xh(z, h)))
        self.h.value = u * h + (1.0 - u) * z
        return self.h.value


@accepts_keywords({"in_size": "num_in", "out_size": "num_out"}, state_init=True)
class MiniGRU(RNNCell):
    r"""minGRU (Feng et al. 2024, "Were RNNs all we needed?"): gates from the input only.

    .. math::

        z_t &= \sigma(x_t\, W_z + b_z) \\
        \tilde h_t &= \phi(x_t\, W_h + b_h) \\
        h_t &= (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    :math:`\phi` = ``activation``, default the identity (the paper's sequential minGRU).
    The recurrence is linear in ``h`` with input-only coefficients, so the sequence can
    also be computed by a parallel scan.

    States: ``h`` ``(num_out,)``. Parameters: ``Wz``, ``Wh`` (``(num_in, num_out)`` each).
    Returns ``h_t``.

    Online learning: both traced. The hidden Jacobian is exactly diagonal,
    :math:`\partial h_t / \partial h_{t-1} = \mathrm{diag}(1 - z_t)`, so **D-RTRL equals
    BPTT**; ES-D-RTRL approximates it (its input trace uses one decay for all units).

    Examples:
        >>> import brainstate, jax.numpy as jnp, etprop
        >>> cell = etprop.nn.MiniGRU(3, 8)                        # the gates see x only
        >>> _ = brainstate.nn.init_all_states(cell, batch_size=2)
        >>> ys = [cell(jnp.ones((2, 3))) for _ in range(3)]
        >>> ys[-1].shape
        (2, 8)
    """

    def __init__(self, num_in: int, num_out: int, activation: str | Callable | None = None, *,
                 w_init: Init = None, b_init: Init = None, key=None, name: str | None = None):
        super().__init__(num_in, num_out, name=name)
        self.activation = activation_fn(activation)
        g = make_gates(("z", "h"), num_in, num_out, w_init, b_init, key)
        self.Wz, self.Wh = g["z"], g["h"]

    def update(self, x):
        z = jax.nn.sigmoid(self.Wz(x))
        cand = self.activation(self.Wh(x))
        self.h.value = (1.0 - z) * self.h.value + z * cand
        return self.h.value
