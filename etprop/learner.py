"""`etprop.compile`: model + algorithm -> a compiled learner in one call."""

from __future__ import annotations

from etprop.algorithms.base import OnlineAlgorithm
from etprop.errors import ArgumentError

__all__ = ["compile"]


def compile(model, algorithm, *example_inputs, batch_size: int | None = None, cross_shape: str = "error",
            **options) -> OnlineAlgorithm:
    """Build ``algorithm(model, **options)`` and compile it on ``example_inputs``.

    Args:
      model: brainstate module whose ``update(*inputs)`` advances one step.
      algorithm: an algorithm class (``etprop.D_RTRL``, ``etprop.ES_D_RTRL``, ...).
      *example_inputs: inputs of one step (leading batch axis if ``batch_size``).
      batch_size: batch size of the model's states and inputs, or None.
      cross_shape: ``"error"`` (default) or ``"warn"``: what to do when hidden states of
        different shapes depend on each other outside an ETP operator (see
        `OnlineAlgorithm.cross_shape`).
      **options: algorithm options, e.g. ``decay_or_rank=0.9``.
    """
    if not (isinstance(algorithm, type) and issubclass(algorithm, OnlineAlgorithm)):
        raise ArgumentError(f"algorithm must be an etprop algorithm class such as etprop.D_RTRL, got {algorithm!r}")
    learner = algorithm(model, **options)
    learner.cross_shape = cross_shape
    return learner.compile_graph(*example_inputs, batch_size=batch_size)
