"""Parameter initialisation shared by the layers of `etprop.nn` (see `etprop.nn.linear` for the
conventions): arrays and quantities, `braintools.init` initialisers and ``jax.nn.initializers``,
keys from an int seed, a PRNG key or brainstate's global generator."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.errors import ArgumentError

__all__ = ["Init", "as_key", "default_float", "is_braintools_init", "init_array", "bias_init", "split_keys",
           "positive_int", "one_of", "maybe_param", "value_of", "param_holder", "new_param", "LECUN", "ZEROS"]

Init = Callable | jax.Array | np.ndarray | None


# -- initialisation helpers ----------------------------------------------------------------------

def as_key(key=None) -> jax.Array:
    """A PRNG key from an ``int`` seed, a key (returned as is) or ``None`` (brainstate's global RNG)."""
    if key is None:
        return brainstate.random.split_key()
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


def default_float():
    """JAX's default float dtype: float32, or float64 under ``jax_enable_x64``."""
    return jnp.zeros(()).dtype


def is_braintools_init(init) -> bool:
    """Whether ``init`` is a `braintools.init` initialiser (called as ``init(shape, rng=...)``)."""
    mod = sys.modules.get("braintools.init")  # a user who made one has imported braintools
    return mod is not None and isinstance(init, getattr(mod, "Initialization", ()))


def init_array(init: Init, key, shape: Sequence[int], name: str, dtype=None):
    """Create a parameter value from ``init``: an array or quantity, a `braintools.init`
    initialiser or ``init(key, shape, dtype)``. A unit of the result is kept: the value is a
    `brainunit.Quantity` then, a plain array otherwise."""
    shape = tuple(int(s) for s in shape)
    dtype = default_float() if dtype is None else dtype
    try:
        if is_braintools_init(init):
            value = init(shape, rng=brainstate.random.RandomState(as_key(key)))
        elif callable(init):
            value = init(key, shape, dtype)
        else:
            value = init
        mantissa, unit = u.split_mantissa_unit(value)
        mantissa = jnp.asarray(mantissa, dtype)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"the initialiser of '{name}' failed for shape {shape}: {err}. Give an array or quantity "
                            f"of that shape, a braintools.init initialiser, or init(key, shape, dtype)") from None
    if tuple(mantissa.shape) != shape:
        raise ArgumentError(f"the initial value of '{name}' has shape {tuple(mantissa.shape)}, expected {shape}")
    return mantissa if unit.is_unitless and unit.factor == 1.0 else u.Quantity(mantissa, unit=unit)


def bias_init(b_init: Init, weight):
    """``b_init``, or zeros in the weight's unit when none is given."""
    if b_init is not None:
        return b_init
    unit = u.get_unit(weight)
    if unit.is_unitless:
        return ZEROS
    return lambda key, shape, dtype: u.Quantity(jnp.zeros(shape, dtype), unit=unit)


def split_keys(key, n: int):
    return list(jax.random.split(as_key(key), n))


def positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ArgumentError(f"'{name}' must be a positive int, got {v!r}")
    return int(v)


def one_of(value, name: str, meanings: dict[str, str]):
    """``value`` if it is one of ``meanings``' keys, else an `ArgumentError` that lists them, each
    with its meaning: ``one_of("x", "reset", {"zero": "v <- 0"})`` -> "reset must be 'zero' (v <- 0),
    got 'x'"."""
    if value not in tuple(meanings):
        listed = " or ".join(f"{k!r} ({m})" for k, m in meanings.items())
        raise ArgumentError(f"{name} must be {listed}, got {value!r}")
    return value


def maybe_param(enabled, init, key, shape, name, param_type=None, layer: str = "layer"):
    """A parameter of ``shape`` held by ``param_type`` (see `param_holder`), or None when not ``enabled``."""
    if not enabled:
        return None
    return new_param(param_holder(param_type, layer), init_array(init, key, shape, name), layer, name)


# -- braintrace's param_type= ---------------------------------------------------------------------

def _type_name(obj) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def param_holder(param_type, layer: str):
    """The class that holds a layer's arrays (braintrace's ``param_type=``), checked.

    ``None`` means `brainstate.ParamState` (trainable). Any other callable ``param_type(value)``
    returning an object with a ``.value`` is accepted: a `ParamState` subclass (trainable, e.g. to
    select parameters by class), a `brainstate.LongTermState` or `brainstate.FakeState`
    (frozen: etprop differentiates only `ParamState`). Short-term states (`HiddenState`, ...) are
    refused: they are the dynamics etprop traces, and a weight must not be one."""
    if param_type is None:
        return brainstate.ParamState
    if not callable(param_type):
        raise ArgumentError(f"{layer}: 'param_type' must be a state class such as brainstate.ParamState (trainable) "
                            f"or brainstate.FakeState (frozen), got {param_type!r}")
    if isinstance(param_type, type) and issubclass(param_type, brainstate.ShortTermState):
        raise ArgumentError(f"{layer}: param_type={_type_name(param_type)} is a short-term state (the dynamics "
                            f"etprop traces); hold the weights in brainstate.ParamState or a subclass (trainable), "
                            f"or in brainstate.LongTermState / brainstate.FakeState (frozen)")
    return param_type


def new_param(param_type, value, layer: str, name: str):
    """``param_type(value)``, the holder of parameter ``name``; a failure is an `ArgumentError`."""
    try:
        state = param_type(value)
    except (TypeError, ValueError) as err:
        raise ArgumentError(f"{layer}: param_type={_type_name(param_type)} could not hold '{name}': {err}. Give a "
                            f"class called as param_type(value), e.g. brainstate.ParamState") from None
    if not hasattr(state, "value") or isinstance(state, brainstate.ShortTermState):
        raise ArgumentError(f"{layer}: param_type={_type_name(param_type)} returned {type(state).__name__} for "
                            f"'{name}', expected a state with a .value (brainstate.ParamState, LongTermState or "
                            f"FakeState)")
    return state


def value_of(state):
    return None if state is None else state.value


LECUN = jax.nn.initializers.lecun_normal()
ZEROS = jax.nn.initializers.zeros
