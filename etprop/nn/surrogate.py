"""Surrogate spike functions: a Heaviside step forward, a smooth pseudo-derivative backward.

Each is a `jax.custom_jvp`: the forward value is exactly ``H(x) = 1 if x > 0 else 0``
(in the dtype of ``x``); any derivative (``jax.grad``, ``jax.jvp``, and so the
linearisations the etprop learners take) uses the surrogate ``H'(x) ~= g(x)``:

================  =============================================  ==========================
class             surrogate derivative ``g(x)``                   reference
================  =============================================  ==========================
`Sigmoid`         ``alpha * s (1 - s)``, ``s = sigmoid(alpha x)``  derivative of sigmoid
`FastSigmoid`     ``1 / (1 + alpha |x|)^2``                        SuperSpike (Zenke, Ganguli)
`Triangle`        ``gamma * max(0, 1 - alpha |x|)``                piecewise linear (e-prop)
`Arctan`          ``(alpha / 2) / (1 + (pi alpha x / 2)^2)``       ATan (SpikingJelly)
`ReluGrad`        ``max(0, alpha (width - |x|))``                  braintools' ``ReluGrad``
================  =============================================  ==========================

`ReluGrad` also fires at ``x == 0`` (``H(0) = 1``), as ``braintools.surrogate.ReluGrad``
does: it is the default of the brainpy.state signatures of `etprop.nn.brainpy_style`, which
must spike exactly where brainpy.state's neurons spike.

Two equivalent APIs::

    spike_fn = etprop.nn.surrogate.FastSigmoid(alpha=10.)
    s = spike_fn(v - v_th)                      # an object: hashable, reusable
    s = etprop.nn.surrogate.fast_sigmoid(v - v_th, alpha=10.)   # a function

``x`` is normally a dimensionless, normalised distance to threshold, e.g.
``(v - V_th) / (V_th - V_reset)``; a dimensionless `brainunit.Quantity` is accepted,
a quantity with a physical unit raises ``ValueError`` (``alpha`` would be ambiguous).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing

import brainunit as u
import jax
import jax.numpy as jnp

from etprop.errors import ArgumentError
from etprop.nn._errors import ArgumentTypeError

__all__ = ["Surrogate", "Sigmoid", "FastSigmoid", "Triangle", "Arctan", "ReluGrad",
           "sigmoid", "fast_sigmoid", "triangle", "arctan", "heaviside"]


def _plain(x):
    """A dimensionless quantity or array -> array; a unit -> ValueError."""
    if isinstance(x, u.Quantity):
        if not x.is_unitless:
            raise ArgumentError(f"a surrogate spike function needs a dimensionless input (e.g. (v - V_th) / "
                             f"(V_th - V_reset)), got a quantity in {x.unit}")
        x = x.to_decimal()
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def heaviside(x):
    """``1.0 where x > 0 else 0.0`` in the dtype of ``x`` (no surrogate: zero derivative)."""
    x = _plain(x)
    return (x > 0).astype(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _spike(surrogate, x):
    fired = (x >= 0) if surrogate.fires_at_zero else (x > 0)
    return fired.astype(x.dtype)


@_spike.defjvp
def _spike_jvp(surrogate, primals, tangents):
    (x,), (dx,) = primals, tangents
    return _spike(surrogate, x), surrogate.grad(x).astype(x.dtype) * dx


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """Base class: ``self(x)`` is the spike, ``self.grad(x)`` the surrogate derivative.

    Subclasses are frozen dataclasses of Python floats, so instances are hashable
    and compare by value (two ``FastSigmoid(10.)`` are the same function to JAX).
    Subclass and implement `grad` to add a surrogate.
    """

    #: whether ``H(0) = 1`` (a class constant, not a field)
    fires_at_zero: typing.ClassVar[bool] = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ArgumentTypeError(f"{type(self).__name__}.{f.name} must be a Python float, got {v!r}")
            object.__setattr__(self, f.name, float(v))

    def __call__(self, x):
        """Heaviside ``H(x)`` forward; the derivative is `grad`."""
        return _spike(self, _plain(x))

    def grad(self, x):
        """The surrogate derivative ``g(x)`` (plain array in, plain array out)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Sigmoid(Surrogate):
    """``g(x) = alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x))`` (peak ``alpha / 4`` at 0)."""

    alpha: float = 4.0

    def grad(self, x):
        s = jax.nn.sigmoid(self.alpha * x)
        return self.alpha * s * (1.0 - s)


@dataclasses.dataclass(frozen=True)
class FastSigmoid(Surrogate):
    """SuperSpike: ``g(x) = 1 / (1 + alpha |x|)^2`` (peak 1 at 0)."""

    alpha: float = 10.0

    def grad(self, x):
        return 1.0 / (1.0 + self.alpha * jnp.abs(x)) ** 2


@dataclasses.dataclass(frozen=True)
class Triangle(Surrogate):
    """Piecewise linear: ``g(x) = gamma * max(0, 1 - alpha |x|)`` (support ``|x| < 1/alpha``).

    ``Triangle(alpha=1., gamma=0.3)`` is the pseudo-derivative of e-prop (Bellec et al. 2020)
    with ``x = (v - A) / V_th``.
    """

    alpha: float = 1.0
    gamma: float = 1.0

    def grad(self, x):
        return self.gamma * jnp.maximum(0.0, 1.0 - self.alpha * jnp.abs(x))


@dataclasses.dataclass(frozen=True)
class Arctan(Surrogate):
    """``g(x) = (alpha / 2) / (1 + (pi alpha x / 2)^2)``, the derivative of ``atan(pi alpha x / 2) / pi``."""

    alpha: float = 2.0

    def grad(self, x):
        return (self.alpha / 2.0) / (1.0 + (math.pi / 2.0 * self.alpha * x) ** 2)


@dataclasses.dataclass(frozen=True)
class ReluGrad(Surrogate):
    """``g(x) = max(0, alpha (width - |x|))`` (peak ``alpha * width`` at 0), firing at ``x >= 0``:
    braintools' ``ReluGrad`` (brainpy.state's default surrogate), spike for spike."""

    alpha: float = 0.3
    width: float = 1.0
    fires_at_zero: typing.ClassVar[bool] = True

    def grad(self, x):
        return jnp.maximum(0.0, self.alpha * (self.width - jnp.abs(x)))


def sigmoid(x, alpha: float = 4.0):
    """Heaviside forward, `Sigmoid` ``(alpha)`` surrogate derivative."""
    return Sigmoid(alpha)(x)


def fast_sigmoid(x, alpha: float = 10.0):
    """Heaviside forward, `FastSigmoid` ``(alpha)`` surrogate derivative."""
    return FastSigmoid(alpha)(x)


def triangle(x, alpha: float = 1.0, gamma: float = 1.0):
    """Heaviside forward, `Triangle` ``(alpha, gamma)`` surrogate derivative."""
    return Triangle(alpha, gamma)(x)


def arctan(x, alpha: float = 2.0):
    """Heaviside forward, `Arctan` ``(alpha)`` surrogate derivative."""
    return Arctan(alpha)(x)
