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
