"""Which model a constructor call asks for: etprop's own, or brainpy.state's under the same name.

braintrace.nn forwards ``IF``, ``LIF``, ``ALIF``, ``Expon``, ``Alpha`` and ``DualExpon`` to
brainpy.state; `etprop.nn` has classes of its own under those names. A call written against
brainpy.state's signature must get brainpy.state's model (a port computes what it wrote), so each
of these classes looks at its arguments before it is built (``__new__``):

* ``convention='brainpy'``, or any keyword only brainpy.state's signature has (``spk_fun``,
  ``spk_reset``, ``V_initializer``, ``g_initializer``, ...), or an argument only its positional
  order explains (a neuron's parameters after ``in_size``; a synapse's ``name`` string second)
  -> the brainpy.state model (`etprop.nn.brainpy_style`);
* otherwise (``convention='etprop'``, the default) -> etprop's own class.

The brainpy.state variants register themselves here (`register`), so that the modules of
etprop's own classes do not import them (the variants import those modules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import brainstate

from etprop.errors import ArgumentError

__all__ = ["CONVENTIONS", "Variant", "register", "choose", "describer", "check_convention", "BySignature"]

CONVENTIONS = ("etprop", "brainpy")


@dataclass(frozen=True)
class Variant:
    """A brainpy.state model standing in for an etprop class.

    Attributes:
      cls: the class built for brainpy.state's signature.
      keywords: the keywords only brainpy.state's signature has.
      positional: ``positional(args) -> bool``: whether the positional arguments after
        ``in_size`` can only be brainpy.state's.
      resolve: ``resolve(cls) -> type``, the class to build now (e.g. ``cls`` with brainpy.state's
        mixins once brainpy.state is loaded); default ``cls`` itself.
    """

    cls: type
    keywords: frozenset
    positional: Callable[[tuple], bool]
    resolve: Callable[[type], type] | None = None


_VARIANTS: dict[type, Variant] = {}


def register(own: type, variant: Variant) -> None:
    """Make ``variant.cls`` what ``own(...)`` builds for brainpy.state's signature (and an
    ``isinstance`` of ``own``)."""
    _VARIANTS[own] = variant
    own.register(variant.cls)  # etprop's classes are ABCs (brainstate's node metaclass)


def check_convention(convention) -> str:
    if convention not in CONVENTIONS:
        raise ArgumentError(f"convention must be 'etprop' (etprop's own model) or 'brainpy' (brainpy.state's "
                            f"signature and dynamics, as braintrace.nn forwards it), got {convention!r}")
    return convention


def choose(own: type, args: tuple, kwargs: dict) -> type | None:
    """The brainpy.state class to build for ``own(*args, **kwargs)``, or None for ``own`` itself."""
    variant = _VARIANTS.get(own)
    convention = kwargs.get("convention")
    if convention is not None:
        check_convention(convention)
    if variant is None:
        if convention == "brainpy":
            raise ArgumentError(f"{own.__name__} has no brainpy.state signature; drop convention='brainpy'")
        return None
    theirs = sorted(variant.keywords.intersection(kwargs))
    positional = bool(args[1:]) and variant.positional(args[1:])
    if convention == "etprop":
        if theirs or positional:
            what = f"keywords {theirs}" if theirs else "positional parameters after in_size"
            raise ArgumentError(f"{own.__name__}(convention='etprop') got brainpy.state's {what}; drop "
                                f"convention='etprop' to build brainpy.state's {own.__name__}, or use etprop's "
                                f"keywords (help(etprop.nn.{own.__name__}))")
        return None
    if convention == "brainpy" or theirs or positional:
        return variant.cls if variant.resolve is None else variant.resolve(variant.cls)
    return None


def describer(own: type, args: tuple, kwargs: dict):
    """``own.desc(*args, **kwargs)``: a `brainstate.mixin.ParamDescriber` of the class that
    ``own(*args, **kwargs)`` builds (so that brainpy.state's projections see brainpy.state's model)."""
    variant = choose(own, args, kwargs)
    return brainstate.mixin.ParamDescriber(own if variant is None else variant, *args, **kwargs)


class BySignature:
    """Mixin of etprop's classes that brainpy.state's models stand in for: ``cls(*args, **kwargs)``
    builds what `choose` picks for those arguments, ``cls.desc(*args, **kwargs)`` describes it.

    Examples:
        >>> import etprop
        >>> from etprop.nn.signatures import BySignature
        >>> issubclass(etprop.nn.LIF, BySignature), issubclass(etprop.nn.Expon, BySignature)
        (True, True)
    """

    def __new__(cls, *args, **kwargs):
        variant = choose(cls, args, kwargs)
        return super().__new__(cls if variant is None else variant)

    @classmethod
    def desc(cls, *args, **kwargs):
        """A `brainstate.mixin.ParamDescriber` of what ``cls(*args, **kwargs)`` builds."""
        return describer(cls, args, kwargs)
