"""The library's exceptions; every error etprop raises on purpose derives from `EtpropError`."""

__all__ = ["EtpropError", "NotSupportedError", "CompilationError", "OperandError", "ArgumentError",
           "NumericalError", "CheckpointError"]


class EtpropError(Exception):
    """Base class of all errors raised by etprop."""


class NotSupportedError(EtpropError, NotImplementedError):
    """An operation, model structure or option that etprop does not support.

    The message says what is unsupported and what to change.
    """


class CompilationError(EtpropError):
    """The model's update could not be compiled into an eligibility-trace graph."""


class OperandError(EtpropError, ValueError):
    """An operand of an ETP operator has the wrong rank, shape, dtype or unit.

    Also a `ValueError`, so code that catches JAX's shape errors keeps working.
    """


class ArgumentError(EtpropError, ValueError):
    """An argument of an etprop function or class is invalid (wrong type, range or unit)."""


class NumericalError(EtpropError, FloatingPointError):
    """A loss, gradient or state became NaN or infinite; the message names where."""


class CheckpointError(ArgumentError):
    """A checkpoint cannot be used: missing, unreadable, damaged, of another format or version,
    holding NaN/inf, or written by a different run. The message names the file and what to do.

    An `ArgumentError` too: the checkpoint directory is an argument (``--resume DIR``).
    """
