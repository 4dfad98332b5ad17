"""`ArgumentError`s that keep the built-in type etprop.nn raised before, so that code catching it keeps working."""

from etprop.errors import ArgumentError

__all__ = ["ArgumentTypeError", "SettingMissingError"]


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type: an `etprop.ArgumentError`, and a `TypeError` as before."""


class SettingMissingError(ArgumentError, KeyError):
    """A setting the layer reads (``brainstate.environ``'s ``dt``) is not set: an `etprop.ArgumentError`, and a
    `KeyError` as before (``brainstate.environ.get_dt`` raises one)."""

    __str__ = Exception.__str__  # the message itself, not KeyError's repr of it
