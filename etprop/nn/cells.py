"""The base of the rate RNN cells and what they share: `RNNCell` (sizes and zero-initialised
hidden states), the activations by name (`activation_fn`), the gates as `etprop.nn.Linear` layers
(`make_gates`) on the concatenation ``[x, h]`` (`concat_xh`). The cells themselves are in
`etprop.nn.rnn`, `etprop.nn.gated` and `etprop.nn.lru`."""

from __future__ import annotations

from collections.abc import Callable

import brainstate
import jax
import jax.numpy as jnp

from etprop.errors import ArgumentError
from etprop.nn.initializers import default_float, init_array, positive_int, split_keys
from etprop.nn.linear import Linear

__all__ = ["RNNCell", "activation_fn", "make_gates", "concat_xh"]

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu,
                "silu": jax.nn.silu, "elu": jax.nn.elu, "softplus": jax.nn.softplus,
                "identity": lambda x: x}


def activation_fn(act) -> Callable:
    if act is None:
        return _ACTIVATIONS["identity"]
    if callable(act):
        return act
    if isinstance(act, str) and act in _ACTIVATIONS:
        return _ACTIVATIONS[act]
    raise ArgumentError(f"activation must be a callable or one of {sorted(_ACTIVATIONS)}, got {act!r}")


class RNNCell(brainstate.nn.Module):
    """Base of the cells: sizes and zero-initialised hidden states named in ``state_names``.

    Examples:
        >>> import etprop
        >>> issubclass(etprop.nn.GRUCell, etprop.nn.RNNCell)    # the base of every rate cell
        True
        >>> cell = etprop.nn.GRUCell(3, 8)
        >>> cell.num_in, cell.num_out, cell.state_names
        (3, 8, ('h',))
    """

    state_names: tuple[str, ...] = ("h",)
    #: initialiser of the hidden states (braintrace's ``state_init=``): None for zeros, else an
    #: array / quantity / braintools or jax initialiser of shape ``(state_size,)``
    state_init = None

    def __init__(self, num_in: int, num_out: int, state_size: int | None = None, name: str | None = None):
        super().__init__(name=name)
        self.num_in = positive_int(num_in, "num_in")
        self.num_out = positive_int(num_out, "num_out")
        self.state_size = self.num_out if state_size is None else positive_int(state_size, "state_size")
        self.in_size, self.out_size = (self.num_in,), (self.num_out,)
        self.init_state()

    def _zeros(self, batch_size):
        shape = (self.state_size,) if batch_size is None else (int(batch_size), self.state_size)
        if self.state_init is None:
            return jnp.zeros(shape, default_float())
        one = init_array(self.state_init, None, (self.state_size,), "state_init")
        return jnp.broadcast_to(one, shape)

    def init_state(self, batch_size: int | None = None, **kwargs):
        """Create the hidden states, zeros of shape ``(n,)`` or ``(batch_size, n)``."""
        for n in self.state_names:
            setattr(self, n, brainstate.HiddenState(self._zeros(batch_size)))

    def reset_state(self, batch_size: int | None = None, **kwargs):
        """Set the hidden states to zeros of shape ``(n,)`` or ``(batch_size, n)``."""
        for n in self.state_names:
            getattr(self, n).value = self._zeros(batch_size)


def make_gates(names, n_in, n_out, w_init, b_init, key, b_inits=None):
    keys = split_keys(key, len(names))
    b_inits = b_inits or {}
    return {nm: Linear(n_in, n_out, w_init=w_init, b_init=b_inits.get(nm, b_init), key=k)
            for nm, k in zip(names, keys)}


def concat_xh(x, h):
    return jnp.concatenate([x, h], axis=-1)

