"""Input wrappers that say whether a call is one time step or a window of steps."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from etprop.errors import ArgumentError, NotSupportedError

__all__ = ["SingleStepData", "MultiStepData", "is_input_data", "as_args"]


class _InputData:
    """A pytree holding the positional inputs of one learner call."""

    __slots__ = ("data",)

    def __init__(self, *data: Any):
        if not data:
            raise ArgumentError(f"{type(self).__name__} needs at least one input")
        self.data = tuple(data)

    def __repr__(self):
        shapes = jax.tree.map(lambda a: getattr(a, "shape", type(a).__name__), self.data,
                              is_leaf=lambda a: hasattr(a, "shape"))
        return f"{type(self).__name__}{shapes}"

    def tree_flatten(self):
        return self.data, None

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.data = tuple(children)
        return obj


@jax.tree_util.register_pytree_node_class
class SingleStepData(_InputData):
    """Inputs of one time step. A plain array passed to a learner means the same thing.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> step = etprop.SingleStepData(jnp.ones((16, 3)))       # one step of a batch of 16
        >>> step
        SingleStepData((16, 3),)

        ``learner(step)`` and ``learner(jnp.ones((16, 3)))`` run the same step.
    """


@jax.tree_util.register_pytree_node_class
class MultiStepData(_InputData):
    """Inputs of a window of ``T`` steps: every leaf has time as its leading axis.

    A learner runs the window with exact reverse mode inside it while the
    eligibility trace carries credit from before the window.

    Examples:
        >>> import jax.numpy as jnp, etprop
        >>> window = etprop.MultiStepData(jnp.ones((10, 16, 3)))   # 10 steps, time leading
        >>> window.num_steps
        10

        ``learner(window)`` runs the 10 steps and returns the outputs ``(10, 16, ...)``; gradients
        of a loss of them (``brainstate.transform.grad``) are exact inside the window, with the
        traces carrying credit from before it.
    """

    @property
    def num_steps(self) -> int:
        leaves = jax.tree.leaves(self.data)
        if not leaves or any(jnp.ndim(leaf) == 0 for leaf in leaves):
            raise ArgumentError("MultiStepData needs array leaves with a leading time axis, got "
                                f"shapes {[jnp.shape(leaf) for leaf in leaves]}")
        lengths = {jnp.shape(leaf)[0] for leaf in leaves}
        if len(lengths) != 1:
            raise ArgumentError(f"MultiStepData leaves disagree on the time axis length: {sorted(lengths)}")
        return lengths.pop()


def is_input_data(x) -> bool:
    return isinstance(x, _InputData)


def as_args(inputs, *, multi: bool) -> tuple:
    """The positional inputs of a learner call: a `MultiStepData` window (``multi``), a
    `SingleStepData` step, a tuple, or one array."""
    if isinstance(inputs, MultiStepData):
        if not multi:
            raise NotSupportedError("step() takes one time step; use etrace_grad or learner(MultiStepData(...))")
        return inputs.data
    if isinstance(inputs, SingleStepData):
        if multi:
            raise ArgumentError("etrace_grad needs inputs with a leading time axis, not SingleStepData")
        return inputs.data
    return inputs if isinstance(inputs, tuple) else (inputs,)
