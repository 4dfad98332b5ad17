"""`EligibilityTrace`: the brainstate state that holds an algorithm's traces."""

import brainstate

__all__ = ["EligibilityTrace"]


class EligibilityTrace(brainstate.ShortTermState):
    """Eligibility traces carried forward by an online algorithm.

    A `brainstate.ShortTermState`, so it is reset with the model's other
    short-term states, is visible to brainstate transforms, and is distinct from
    the model's `brainstate.HiddenState`s (the compiler never treats a trace as a
    hidden state of the model).

    Examples:
        >>> import brainstate, jax.numpy as jnp, etprop
        >>> trace = etprop.EligibilityTrace(jnp.zeros((3, 4)))
        >>> isinstance(trace, brainstate.ShortTermState), isinstance(trace, brainstate.HiddenState)
        (True, False)

        A compiled trace learner holds its traces in one, ``learner.etrace``.
    """
