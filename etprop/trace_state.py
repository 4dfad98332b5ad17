"""`EligibilityTrace`: the brainstate state that holds an algorithm's traces."""

import brainstate

__all__ = ["EligibilityTrace"]


class EligibilityTrace(brainstate.ShortTermState):
    """Eligibility traces carried forward by an online algorithm.

    A `brainstate.ShortTermState`, so it is reset with the model's other
    short-term states, is visible to brainstate transforms, and is distinct from
    the model's `brainstate.HiddenState`s (the compiler never treats a trace as a
    hidden state of the model).
    """
