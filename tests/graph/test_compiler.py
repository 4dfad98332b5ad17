"""Compiler: what it finds, and the errors it raises on models it cannot handle."""

import brainstate as bs
import jax
import jax.numpy as jnp
import pytest

import etprop
from tests.algorithms.models import ALIF, ElementwiseRNN, LIFExpSyn


class NoETP(bs.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((3, 4)))
        self.h = bs.HiddenState(jnp.zeros(4))

    def update(self, x):
        self.h.value = jnp.tanh(x @ self.w.value + self.h.value)
        return self.h.value


class WritesParam(bs.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((3, 4)))
        self.h = bs.HiddenState(jnp.zeros(4))

    def update(self, x):
        self.h.value = etprop.matmul(x, self.w.value)
        self.w.value = self.w.value * 0.99
        return self.h.value


class ETPInScan(bs.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((4, 4)))
        self.h = bs.HiddenState(jnp.zeros(4))

    def update(self, x):
        w = self.w.value
        h, _ = jax.lax.scan(lambda c, _: (jnp.tanh(etprop.matmul(c, w)), None), self.h.value + x, None, length=2)
        self.h.value = h
        return h


class MixesPositions(bs.nn.Module):
    """h' = roll(h) + x W: the within-group Jacobian is a permutation, not diagonal."""

    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((3, 4)) * 0.1)
        self.h = bs.HiddenState(jnp.zeros(4))

    def update(self, x):
        self.h.value = 0.5 * jnp.roll(self.h.value, 1) + etprop.matmul(x, self.w.value)
        return self.h.value


class NoHidden(bs.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((3, 4)))

    def update(self, x):
        return etprop.matmul(x, self.w.value)


def test_no_etp_operator_raises_compilation_error():
    with pytest.raises(etprop.CompilationError, match=r"NoETP.*etprop.matmul"):
        etprop.compile(NoETP(), etprop.D_RTRL, jnp.ones(3))


def test_param_written_in_update_raises():
    with pytest.raises(etprop.NotSupportedError, match=r"ParamState 'w' is written"):
        etprop.compile(WritesParam(), etprop.D_RTRL, jnp.ones(3))


def test_etp_inside_control_flow_raises():
    with pytest.raises(etprop.NotSupportedError, match=r"matmul.*inside 'scan'"):
        etprop.compile(ETPInScan(), etprop.D_RTRL, jnp.ones(4))


def test_model_without_hidden_state_raises():
    with pytest.raises(etprop.CompilationError, match="nothing to carry traces"):
        etprop.compile(NoHidden(), etprop.D_RTRL, jnp.ones(3))


def test_position_mixing_group_is_reported_not_silently_wrong():
    with pytest.warns(UserWarning, match="mixes positions"):
        learner = etprop.compile(MixesPositions(), etprop.D_RTRL, jnp.ones(3))
    assert learner.graph.relations == ()
    assert "mixes positions" in learner.graph.untraced["w"]
    assert "mixes positions" in learner.report()


def test_batch_size_mismatch_is_a_clear_error():
    m = ElementwiseRNN(3, 4, 2)
    with pytest.raises(etprop.CompilationError, match=r"hidden state 'h' has shape \(4,\) but batch_size=2"):
        etprop.compile(m, etprop.D_RTRL, jnp.ones((2, 3)), batch_size=2)
    with pytest.raises(etprop.CompilationError, match="leading batch axis"):
        etprop.compile(m, etprop.D_RTRL, jnp.ones((3,)), batch_size=2)


def test_algorithm_must_be_a_class_a_rule_name_or_a_config():
    with pytest.raises(etprop.ArgumentError, match="learner class"):
        etprop.compile(ElementwiseRNN(3, 4, 2), 3, jnp.ones(3))
    assert isinstance(etprop.compile(ElementwiseRNN(3, 4, 2), "d_rtrl", jnp.ones(3)), etprop.D_RTRL)


def test_learner_needs_compile_first():
    algo = etprop.D_RTRL(ElementwiseRNN(3, 4, 2))
    with pytest.raises(etprop.ArgumentError, match="compile_graph"):
        algo.step(jnp.ones(3))


def test_groups_are_deterministic_and_named():
    a = etprop.compile(LIFExpSyn(4, 5, 2), etprop.D_RTRL, jnp.ones(4)).graph
    b = etprop.compile(LIFExpSyn(4, 5, 2), etprop.D_RTRL, jnp.ones(4)).graph
    assert [g.names for g in a.groups] == [g.names for g in b.groups] == [("g", "v")]
    assert [(r.leaf_name, r.group) for r in a.relations] == [(r.leaf_name, r.group) for r in b.relations]
    assert {r.leaf_name for r in a.relations} == {"w['bias']", "w['weight']"}


def test_hybrid_chooses_per_relation():
    learner = etprop.compile(ALIF(200, 8, 2), etprop.HybridDimVjpAlgorithm, jnp.ones(200))
    kinds = {r.leaf_name: learner._kinds[i] for i, r in enumerate(learner.graph.relations)}
    # element-wise threshold gain: per-parameter; 200x8 input weight: factorised is smaller
    assert kinds == {"beta": "param", "w": "io"}
    rep = learner.report()
    assert "factorised trace is smaller" in rep and "per-parameter trace" in rep


def test_es_decay_validation():
    with pytest.raises(etprop.ArgumentError):
        etprop.ES_D_RTRL(ElementwiseRNN(3, 4, 2), decay_or_rank=1.0)
    with pytest.raises(etprop.ArgumentError):
        etprop.ES_D_RTRL(ElementwiseRNN(3, 4, 2), decay_or_rank=0)
    assert etprop.ES_D_RTRL(ElementwiseRNN(3, 4, 2), decay_or_rank=3).alpha == 0.5


class TransformOutside(bs.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((3, 4)))
        self.h = bs.HiddenState(jnp.zeros(4))

    def update(self, x):
        self.h.value = 0.5 * self.h.value + etprop.matmul(x, jnp.abs(self.w.value))
        return self.h.value


class TransformInside(TransformOutside):
    def update(self, x):
        self.h.value = 0.5 * self.h.value + etprop.matmul(x, self.w.value, weight_fn=jnp.abs)
        return self.h.value


def test_weight_transformed_outside_the_operator_is_explained():
    learner = etprop.compile(TransformOutside(), etprop.D_RTRL, jnp.ones(3))
    assert learner.graph.relations == ()
    assert "pass the transform as weight_fn" in learner.graph.untraced["w"]
    inside = etprop.compile(TransformInside(), etprop.D_RTRL, jnp.ones(3))
    assert [r.leaf_name for r in inside.graph.relations] == ["w"]


class _CrossShape(bs.nn.Module):
    """A scalar state driven by the mean of a vector state, and driving it back."""

    def __init__(self):
        super().__init__()
        self.w = bs.ParamState(jnp.ones((2, 3)) * 0.3)
        self.h = bs.HiddenState(jnp.zeros(3))
        self.s = bs.HiddenState(jnp.zeros(()))

    def update(self, x):
        self.h.value = 0.5 * self.h.value + jnp.tanh(etprop.matmul(x, self.w.value)) + 0.1 * self.s.value
        self.s.value = 0.9 * self.s.value + jnp.mean(self.h.value)
        return self.h.value


def test_states_of_different_shapes_depending_on_each_other_are_an_error_for_trace_learners():
    with pytest.raises(etprop.NotSupportedError, match=r"'h' -> 's'.*cross_shape='warn'"):
        etprop.compile(_CrossShape(), etprop.D_RTRL, jnp.ones(2))
    with pytest.warns(UserWarning, match=r"drops the dependence .*'h' -> 's'"):
        learner = etprop.compile(_CrossShape(), etprop.ES_D_RTRL, jnp.ones(2), cross_shape="warn")
    assert ("h", "s") in learner.graph.cross_shape_paths
    etprop.compile(_CrossShape(), etprop.BPTT, jnp.ones(2))  # exact: every path is kept
    with pytest.raises(etprop.ArgumentError, match="cross_shape"):
        etprop.compile(_CrossShape(), etprop.D_RTRL, jnp.ones(2), cross_shape="ignore")


class _SubSteps(bs.nn.Module):
    """An integrator with sub-steps inside update(): scan, static fori_loop, cond or while_loop."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.w = bs.ParamState(jax.random.normal(jax.random.key(0), (3, 5)) * 0.5)
        self.v = bs.HiddenState(jnp.zeros(5))

    def update(self, x):
        i = etprop.matmul(x, self.w.value)
        v = self.v.value
        euler = lambda c: c + 0.25 * (-c + jnp.tanh(i))
        if self.kind == "scan":
            v = jax.lax.scan(lambda c, _: (euler(c), None), v, None, length=4)[0]
        elif self.kind == "fori":
            v = jax.lax.fori_loop(0, 4, lambda k, c: euler(c), v)
        elif self.kind == "cond":
            v = jax.lax.cond(jnp.sum(x) > 0, lambda a: 0.9 * a + i, lambda a: 0.5 * a + i, v)
        elif self.kind == "while":
            v = jax.lax.while_loop(lambda c: c[0] < 4, lambda c: (c[0] + 1, euler(c[1])), (0, v))[1]
        self.v.value = v
        return v


@pytest.mark.parametrize("kind", ["scan", "fori", "cond"])
def test_control_flow_inside_update_is_traced_exactly(x64, kind):
    from tests.conftest import bptt_reference, rel_err
    xs = jax.random.normal(jax.random.key(1), (10, 3))
    ys = jax.random.normal(jax.random.key(2), (10, 5))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    ref, _ = bptt_reference(_SubSteps(kind), xs, ys, mse)
    learner = etprop.compile(_SubSteps(kind), etprop.D_RTRL, xs[0])
    grads, _ = learner.etrace_grad(xs, ys, mse)
    assert [r.leaf_name for r in learner.graph.relations] == ["w"]
    assert float(jnp.max(jnp.abs(ref["w"]))) > 0
    assert rel_err(grads, ref) <= 1e-10


def test_while_loop_over_differentiable_values_is_refused_clearly():
    with pytest.raises(etprop.NotSupportedError, match=r"while_loop.*reverse mode.*lax.scan"):
        etprop.compile(_SubSteps("while"), etprop.D_RTRL, jnp.ones(3))
