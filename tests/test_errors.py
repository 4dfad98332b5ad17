"""The exception hierarchy: every etprop error derives from EtpropError."""

import pytest

import etprop
from etprop import errors

SUBCLASSES = [etprop.NotSupportedError, etprop.CompilationError, etprop.OperandError, etprop.ArgumentError]


def test_base_is_an_exception():
    assert issubclass(etprop.EtpropError, Exception)
    assert etprop.EtpropError is errors.EtpropError


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_subclasses_etprop_error(cls):
    assert issubclass(cls, etprop.EtpropError)
    assert cls is not etprop.EtpropError
    with pytest.raises(etprop.EtpropError, match="boom"):
        raise cls("boom")


@pytest.mark.parametrize("cls", [etprop.OperandError, etprop.ArgumentError], ids=lambda c: c.__name__)
def test_value_errors(cls):
    assert issubclass(cls, ValueError)
    with pytest.raises(ValueError):
        raise cls("bad value")


@pytest.mark.parametrize("cls", [etprop.CompilationError], ids=lambda c: c.__name__)
def test_not_value_errors(cls):
    assert not issubclass(cls, ValueError)


def test_not_supported_is_not_implemented():
    assert issubclass(etprop.NotSupportedError, NotImplementedError)


def test_all_exported():
    for name in ["EtpropError", "NotSupportedError", "CompilationError", "OperandError", "ArgumentError"]:
        assert name in etprop.__all__
        assert name in errors.__all__
        assert getattr(etprop, name) is getattr(errors, name)


def test_bad_sequences_are_library_errors_not_jax_tracebacks():
    import brainstate
    import jax.numpy as jnp

    class Two(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = brainstate.ParamState(jnp.ones((3, 2)))
            self.h = brainstate.HiddenState(jnp.zeros(2))

        def update(self, a, b):
            self.h.value = 0.5 * self.h.value + etprop.matmul(a, self.w.value) + b
            return self.h.value

    learner = etprop.compile(Two(), "d_rtrl", jnp.ones(3), jnp.ones(2))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    with pytest.raises(etprop.ArgumentError, match=r"one leading time length, got leaves of lengths \[4, 5\]"):
        learner.etrace_grad(etprop.MultiStepData(jnp.ones((5, 3)), jnp.ones((4, 2))), jnp.ones((5, 2)), mse)
    with pytest.raises(etprop.ArgumentError, match=r"targets ys have shape \(4, 2\), but the inputs have 5 steps"):
        learner.etrace_grad(etprop.MultiStepData(jnp.ones((5, 3)), jnp.ones((5, 2))), jnp.ones((4, 2)), mse)
    with pytest.raises(etprop.OperandError, match=r"is 6, expected 4 \('x' \(2, 6\), 'weight' \(4, 3\)\)"):
        etprop.matmul(jnp.ones((2, 6)), jnp.ones((4, 3)))


def test_errors_that_keep_their_old_builtin_type():
    """Where etprop raised a KeyError or TypeError before, its error is now an ArgumentError that is still one."""
    import brainunit as u
    import jax.numpy as jnp

    from etprop.nn.surrogate import FastSigmoid

    with pytest.raises(KeyError) as info:
        etprop.get_primitive("no_such_primitive")
    assert isinstance(info.value, etprop.ArgumentError)
    assert str(info.value).startswith("no ETP primitive named 'no_such_primitive'")  # not KeyError's repr
    with pytest.raises(TypeError) as info:
        FastSigmoid(jnp.array(2.0))
    assert isinstance(info.value, etprop.ArgumentError)
    with pytest.raises(KeyError) as info:
        etprop.nn.LIF(3, tau=10.0 * u.ms).update(jnp.ones(3))  # no dt set
    assert isinstance(info.value, etprop.ArgumentError) and str(info.value).startswith("etprop.nn: the time step")
    with pytest.raises(ValueError):  # ArgumentError, a ValueError as before
        etprop.nn.LIF(3, reset="hard")
