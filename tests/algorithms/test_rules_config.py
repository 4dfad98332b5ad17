"""RuleConfig: named points, legal combinations, lazy mapping to learner classes."""

import jax.numpy as jnp
import pytest

import etprop
from etprop.algorithms import rules
from tests.algorithms.models import ElementwiseRNN

EXPECTED = {"d_rtrl": "D_RTRL", "es_d_rtrl": "ES_D_RTRL", "hybrid": "HybridDimVjpAlgorithm", "eprop": "EProp",
            "ostl_recurrent": "OSTLRecurrent", "ostl_feedforward": "OSTLFeedforward", "three_factor": "ThreeFactor",
            "rtrl": "RTRL", "snap": "SnAp", "uoro": "UORO", "bptt": "BPTT", "dni": "DNI"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_points_map_to_classes(name):
    cfg = etprop.RuleConfig.of(name)
    assert cfg.rule_name == name
    assert etprop.rule(name) is cfg.build() is getattr(etprop, EXPECTED[name])


def test_named_points_are_distinct_and_cover_the_names():
    assert set(etprop.RuleConfig.names()) == set(EXPECTED)
    points = [etprop.RuleConfig.of(n).point for n in EXPECTED]
    assert len(set(points)) == len(points)


def test_build_passes_fixed_and_user_options():
    model = ElementwiseRNN(3, 4, 2)
    learner = etprop.RuleConfig.of("eprop").build(model, seed=5)
    assert isinstance(learner, etprop.EProp) and learner.feedback == "random" and learner.seed == 5
    lowpass = etprop.RuleConfig(filter="lowpass").build(ElementwiseRNN(3, 4, 2), jnp.ones(3), kappa=0.8)
    assert lowpass.feedback == "symmetric" and lowpass.kappa == 0.8 and lowpass.graph is not None
    with pytest.raises(etprop.ArgumentError, match="kappa"):
        etprop.RuleConfig(filter="lowpass").build(ElementwiseRNN(3, 4, 2))
    with pytest.raises(etprop.ArgumentError, match="feedback"):
        etprop.RuleConfig.of("eprop").build(ElementwiseRNN(3, 4, 2), feedback="symmetric")
    assert isinstance(etprop.rule("ostl_feedforward", ElementwiseRNN(3, 4, 2)), etprop.OSTLFeedforward)


def test_illegal_points_list_the_legal_ones():
    with pytest.raises(etprop.ArgumentError) as e:
        etprop.RuleConfig(trace="io", signal="modulator")
    msg = str(e.value)
    assert "'d_rtrl'" in msg and "'three_factor'" in msg and "'io', 'diagonal', 'group'" in msg
    with pytest.raises(etprop.ArgumentError, match="recursion='sideways'"):
        etprop.RuleConfig(recursion="sideways")
    with pytest.raises(etprop.ArgumentError, match="unknown rule name 'nope'"):
        etprop.RuleConfig.of("nope")
    with pytest.raises(etprop.ArgumentError, match="RuleConfig or a rule name"):
        etprop.rule(3)
    assert etprop.RuleConfig.of("E-Prop") == etprop.RuleConfig.of("eprop")


def test_missing_implementation_is_a_clear_error(monkeypatch):
    point = etprop.RuleConfig.of("snap").point
    monkeypatch.setitem(rules._IMPL, point, ("not_a_module", "SnAp", {}))
    with pytest.raises(etprop.NotSupportedError, match="SnAp.*not_a_module.py"):
        etprop.RuleConfig.of("snap").build()
