"""The error catalogue: one case per kind of bad input given to a public entry point.

Each case provokes the bad input and names the etprop error it must raise (an `etprop.EtpropError`
subclass, never a bare JAX, NumPy or Python exception) and fragments its message must hold: the
argument's name, what was given (its shape, dtype, unit or value) and what was expected.

``python tests/test_error_catalogue.py`` prints the catalogue as a markdown table (case | error |
message); docs/errors.md holds that table, and `test_docs_table_is_current` keeps the two equal.
"""

from __future__ import annotations

import functools
import pathlib
import re
import sys
import warnings
from typing import Callable, NamedTuple

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

import etprop
import etprop.nn as enn
from etprop import errors
from etprop.errors import CheckpointError
from etprop.experiment import distributed
from etprop.experiment.checkpoint import read_meta
from etprop.experiment.runner import TrainConfig
from etprop.tasks import get_task

DOCS_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "errors.md"


class Case(NamedTuple):
    id: str
    provoke: Callable[[], object]
    error: type
    fragments: tuple[str, ...]


# -- small models (float32, batch 2) --------------------------------------------------------------

class _RNN(brainstate.nn.Module):
    """``h' = h / 2 + tanh(x W + b)``: two inputs per step, ``x`` (B, 3) and an offset ``b`` (B, 4)."""

    def __init__(self):
        super().__init__()
        self.w = brainstate.ParamState(jnp.full((3, 4), 0.1))
        self.h = brainstate.HiddenState(jnp.zeros((2, 4)))

    def update(self, x, b):
        self.h.value = 0.5 * self.h.value + jnp.tanh(etprop.matmul(x, self.w.value) + b)
        return self.h.value


class _ReadsOldState(_RNN):
    """Its output reads the pre-step hidden state besides the new one."""

    def update(self, x, b):
        old = self.h.value
        self.h.value = 0.5 * old + jnp.tanh(etprop.matmul(x, self.w.value) + b)
        return self.h.value + old


class _NoOperator(_RNN):
    def update(self, x, b):
        self.h.value = 0.5 * self.h.value + jnp.tanh(x @ self.w.value + b)
        return self.h.value


class _WhileLoop(_RNN):
    def update(self, x, b):
        y = etprop.matmul(x, self.w.value)
        h = jax.lax.while_loop(lambda c: jnp.sum(c) > 1e3, lambda c: 0.5 * c, self.h.value + y)
        self.h.value = h
        return h


class _WritesParam(_RNN):
    def update(self, x, b):
        self.h.value = 0.5 * self.h.value + etprop.matmul(x, self.w.value)
        self.w.value = self.w.value * 0.9
        return self.h.value


class _CrossShape(brainstate.nn.Module):
    """A scalar state driven by the mean of a vector state, and driving it back (outside an ETP operator)."""

    def __init__(self):
        super().__init__()
        self.w = brainstate.ParamState(jnp.full((2, 3), 0.3))
        self.h = brainstate.HiddenState(jnp.zeros(3))
        self.s = brainstate.HiddenState(jnp.zeros(()))

    def update(self, x):
        self.h.value = 0.5 * self.h.value + jnp.tanh(etprop.matmul(x, self.w.value)) + 0.1 * self.s.value
        self.s.value = 0.9 * self.s.value + jnp.mean(self.h.value)
        return self.h.value


class _LIFNet(brainstate.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = enn.Linear(3, 4)
        self.neu = enn.LIF(4, tau=10.0 * u.ms)

    def update(self, x):
        return self.neu(self.inp(x))


X, B = jnp.ones((2, 3)), jnp.zeros((2, 4))  # one step: x (batch 2, 3 inputs) and the offset b
XS, BS, YS = jnp.ones((5, 2, 3)), jnp.zeros((5, 2, 4)), jnp.zeros((5, 2, 4))  # 5 steps


def mse(out, y):
    return jnp.sum((out - y) ** 2)


@functools.lru_cache(maxsize=None)
def learner():
    """The one compiled model of the catalogue (D-RTRL, batch 2); reset before each use."""
    return etprop.compile(_RNN(), etprop.D_RTRL, X, B, batch_size=2)


def fresh():
    lrn = learner()
    lrn.reset()
    return lrn


def compile_model(model, *inputs, algorithm=etprop.D_RTRL, **kw):
    return lambda: etprop.compile(model, algorithm, *inputs, **kw)


def _step_fn(x, y):
    """braintrace's convention: the step function runs the learner on one step and returns its loss."""
    return jnp.mean(jax.vmap(mse)(learner()((x, B)), y))


def _sequence_fn_jit():
    lrn = fresh()
    fn = jax.jit(lrn.sequence_fn(mse))
    _, hidden, others = lrn.graph.mf.values()
    return fn(lrn.params(), hidden, others, lrn.etrace.value, etprop.MultiStepData(XS, BS[:4]), YS, jnp.ones(5))


def _train_online(xs, ys):
    import optax
    return fresh().train_online(xs, ys, mse, optax.sgd(0.1))


def _lif_update(neuron, x, dt=1.0 * u.ms):
    def run():
        with brainstate.environ.context(dt=dt):
            neuron.init_state()
            return neuron.update(x)
    return run


STRUCTURE = sparse.BCOO.fromdense(jnp.array([[1., 0.], [0., 2.], [3., 0.]]))  # (in 3, out 2), 3 stored values
MS = etprop.MultiStepData

CASES = [
    # -- ETP operators: shapes, ranks, dtypes, units, transforms ------------------------------------
    Case("matmul: inner dimensions differ", lambda: etprop.matmul(jnp.ones((2, 6)), jnp.ones((4, 3))),
         etprop.OperandError, ("'x'", "(2, 6)", "'weight'", "(4, 3)", "expected 4")),
    Case("matmul under jit: inner dimensions differ", lambda: jax.jit(etprop.matmul)(jnp.ones((2, 6)), jnp.ones((4, 3))),
         etprop.OperandError, ("'x'", "(2, 6)", "'weight'", "(4, 3)", "expected 4")),
    Case("matmul: x of rank 3", lambda: etprop.matmul(jnp.ones((2, 2, 4)), jnp.ones((4, 3))),
         etprop.OperandError, ("'x'", "(2, 2, 4)", "rank 3", "(in,) or (batch, in)")),
    Case("matmul: weight of rank 1", lambda: etprop.matmul(jnp.ones((2, 4)), jnp.ones(4)),
         etprop.OperandError, ("'weight'", "(4,)", "(in, out)")),
    Case("matmul: integer weight", lambda: etprop.matmul(jnp.ones((2, 4)), jnp.ones((4, 3), jnp.int32)),
         etprop.OperandError, ("'weight'", "int32", "floating-point")),
    Case("matmul: input of strings", lambda: etprop.matmul(np.full((2, 4), "a"), jnp.ones((4, 3))),
         etprop.OperandError, ("'x'", "<U1", "numeric")),
    Case("matmul: bias of the wrong shape", lambda: etprop.matmul(jnp.ones((2, 4)), jnp.ones((4, 3)), jnp.ones(4)),
         etprop.OperandError, ("'bias'", "(4,)", "expected (3,)")),
    Case("matmul: bias in an incompatible unit",
         lambda: etprop.matmul(jnp.ones((2, 4)) * u.mV, jnp.ones((4, 3)), jnp.ones(3) * u.ms),
         etprop.OperandError, ("'bias'", "unit ms", "units of mV")),
    Case("matmul: unitless bias for an output in mV",
         lambda: etprop.matmul(jnp.ones((2, 4)) * u.mV, jnp.ones((4, 3)), jnp.ones(3)),
         etprop.OperandError, ("'bias'", "unit 1", "units of mV")),
    Case("matmul: weight_fn is not callable", lambda: etprop.matmul(jnp.ones((2, 4)), jnp.ones((4, 3)), weight_fn=3),
         etprop.OperandError, ("'weight'", "callable", "got 3")),
    Case("matmul: weight_fn changes the weight's shape",
         lambda: etprop.matmul(jnp.ones((2, 4)), jnp.ones((4, 3)), weight_fn=jnp.transpose),
         etprop.OperandError, ("'weight'", "(4, 3)", "(3, 4)", "element-wise")),
    Case("element_wise: integer parameter", lambda: etprop.element_wise(jnp.ones(3, jnp.int32)),
         etprop.OperandError, ("'weight'", "int32", "floating-point")),
    Case("grouped_matmul: x does not match the groups",
         lambda: etprop.grouped_matmul(jnp.ones((2, 3, 5)), jnp.ones((3, 4, 5))),
         etprop.OperandError, ("'x'", "(2, 3, 5)", "'weight' (3, 4, 5)", "expected (2, 3, 4)")),
    Case("einsum: no explicit output", lambda: etprop.einsum("ij,jk", jnp.ones((2, 3)), jnp.ones((3, 4))),
         etprop.OperandError, ("equation", "'ij,jk'", "explicit output")),
    Case("einsum: axis sizes differ", lambda: etprop.einsum("i,io->o", jnp.ones((2, 3)), jnp.ones((4, 4))),
         etprop.OperandError, ("'x' (2, 3)", "'weight' (4, 4)", "size 3", "size 4")),
    Case("conv: input channels differ", lambda: etprop.conv(jnp.ones((2, 8, 3)), jnp.ones((3, 4, 5))),
         etprop.OperandError, ("'x'", "3 input channels", "'kernel' (3, 4, 5)", "expects")),
    Case("conv: kernel of rank 2", lambda: etprop.conv(jnp.ones((2, 8, 3)), jnp.ones((3, 3))),
         etprop.OperandError, ("'kernel'", "(3, 3)", "rank 3, 4 or 5")),
    Case("conv: stride 0", lambda: etprop.conv(jnp.ones((2, 8, 3)), jnp.ones((3, 3, 5)), strides=0),
         etprop.OperandError, ("'strides'", "got 0", "positive")),
    Case("conv: unknown padding", lambda: etprop.conv(jnp.ones((2, 8, 3)), jnp.ones((3, 3, 5)), padding="FULL"),
         etprop.OperandError, ("'padding'", "'FULL'", "'SAME'")),
    Case("sparse_matmul: input size differs from the structure",
         lambda: etprop.sparse_matmul(jnp.ones((4, 5)), STRUCTURE.data, sparse_mat=STRUCTURE),
         etprop.OperandError, ("'x'", "(4, 5)", "'sparse_mat' (3, 2)", "expected 3")),
    Case("sparse_matmul: a padded structure (index outside the shape)",
         lambda: etprop.sparse_matmul(jnp.ones(3), jnp.ones(2), sparse_mat=sparse.BCOO(
             (jnp.ones(2), jnp.array([[0, 1], [3, 2]], jnp.int32)), shape=(3, 2))),
         etprop.OperandError, ("stored value 1", "(3, 2)", "outside its shape", "padding")),
    Case("sparse_matmul: a dense array as the structure",
         lambda: etprop.sparse_matmul(jnp.ones((4, 3)), jnp.ones(3), sparse_mat=jnp.ones((3, 2))),
         etprop.OperandError, ("'sparse_mat'", "ArrayImpl", "BCOO")),
    Case("matmul: event is not a bool",
         lambda: etprop.matmul(jnp.ones((2, 3)), jnp.ones((3, 4)), event="yes"),
         etprop.ArgumentError, ("'event'", "'yes'", "True or False")),
    Case("matmul(event=True): x holds values other than 0 and 1",
         lambda: etprop.matmul(jnp.full((2, 3), 0.5), jnp.ones((3, 4)), event=True),
         etprop.OperandError, ("'x'", "0.5", "0s and 1s", "event=False")),
    Case("lora_matmul: ranks of B and A differ",
         lambda: etprop.lora_matmul(jnp.ones((2, 6)), jnp.ones((6, 2)), jnp.ones((3, 5))),
         etprop.OperandError, ("'A'", "(3, 5)", "'B' (6, 2)", "expected 2")),
    Case("lora_matmul: alpha is not a number",
         lambda: etprop.lora_matmul(jnp.ones((2, 6)), jnp.ones((6, 2)), jnp.ones((2, 5)), alpha="x"),
         etprop.OperandError, ("'alpha'", "'x'", "a number")),
    Case("embedding: float indices", lambda: etprop.embedding(jnp.ones(2), jnp.ones((4, 3))),
         etprop.OperandError, ("'indices'", "float32", "integer")),
    Case("embedding: index out of range", lambda: etprop.embedding(jnp.array([5]), jnp.ones((4, 3))),
         etprop.OperandError, ("'indices'", "[5, 5]", "[0, 4)")),
    Case("ETPPrimitive: name is not an identifier", lambda: etprop.ETPPrimitive("bad name", lambda x, p, a: x),
         etprop.ArgumentError, ("name", "'bad name'", "identifier")),
    Case("register_primitive: not an ETPPrimitive", lambda: etprop.register_primitive(etprop.matmul),
         etprop.ArgumentError, ("register_primitive", "function", "etprop.ETPPrimitive")),

    # -- sequences: lengths of xs, ys, MultiStepData leaves, masks --------------------------------
    Case("etrace_grad: ys shorter than xs", lambda: fresh().etrace_grad(MS(XS, BS), YS[:4], mse),
         etprop.ArgumentError, ("ys", "(4, 2, 4)", "5 steps")),
    Case("etrace_grad: MultiStepData leaves of different lengths",
         lambda: fresh().etrace_grad(MS(XS, BS[:4]), YS, mse),
         etprop.ArgumentError, ("input sequences", "[4, 5]", "(5, 2, 3)", "(4, 2, 4)", "one leading time length")),
    Case("train_online: MultiStepData leaves of different lengths", lambda: _train_online(MS(XS, BS[:4]), YS),
         etprop.ArgumentError, ("input sequences", "[4, 5]", "one leading time length")),
    Case("train_online: ys shorter than xs", lambda: _train_online(MS(XS, BS), YS[:4]),
         etprop.ArgumentError, ("ys", "(4, 2, 4)", "5 steps")),
    Case("sequence_fn under jit: MultiStepData leaves of different lengths", _sequence_fn_jit,
         etprop.ArgumentError, ("input sequences", "[4, 5]", "one leading time length")),
    Case("etrace_grad: sequences of length 0", lambda: fresh().etrace_grad(MS(XS[:0], BS[:0]), YS[:0], mse),
         etprop.ArgumentError, ("input sequences", "length 0", "(0, 2, 3)", "at least one time step")),
    Case("BPTT.etrace_grad: no inputs",
         lambda: etprop.compile(_RNN(), etprop.BPTT, X, B, batch_size=2).etrace_grad(None, YS, mse),
         etprop.ArgumentError, ("needs the inputs", "etrace_grad(xs, ys, step_loss)")),
    Case("compile: trace_dtype int8", compile_model(_RNN(), X, B, batch_size=2, trace_dtype=jnp.int8),
         etprop.ArgumentError, ("trace_dtype", "int8", "bfloat16")),
    Case("etrace_grad(step_fn=): sequences of different lengths",
         lambda: fresh().etrace_grad(XS, YS[:4], step_fn=_step_fn),
         etprop.ArgumentError, ("sequences", "4 at", "5 at", "one leading time length")),
    Case("etrace_grad: mask of the wrong length", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, mask=jnp.ones(4)),
         etprop.ArgumentError, ("mask", "(4,)", "(5,)")),
    Case("etrace_grad: complex mask", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, mask=jnp.ones(5, jnp.complex64)),
         etprop.ArgumentError, ("mask", "complex64", "real (float, int or bool)")),
    Case("etrace_grad: mask of strings", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, mask=np.full(5, "a")),
         etprop.ArgumentError, ("mask", "<U1", "real (float, int or bool)")),

    # -- options out of range ----------------------------------------------------------------------
    Case("etrace_grad: chunk_size 0", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, chunk_size=0),
         etprop.ArgumentError, ("chunk_size", "got 0", ">= 1")),
    Case("etrace_grad(step_fn=): chunk_size does not divide the length",
         lambda: fresh().etrace_grad(XS, YS, step_fn=_step_fn, chunk_size=2),
         etprop.ArgumentError, ("chunk_size 2", "length 5", "divides")),
    Case("etrace_grad: window 0", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, window=0),
         etprop.ArgumentError, ("window", "got 0", "positive int")),
    Case("etrace_grad: closed_form_chunk -1", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, closed_form_chunk=-1),
         etprop.ArgumentError, ("closed_form_chunk", "got -1", "positive int")),
    Case("etrace_grad: unknown reduction", lambda: fresh().etrace_grad(MS(XS, BS), YS, mse, reduction="avg"),
         etprop.ArgumentError, ("reduction", "'avg'", "'mean'", "'sum'")),
    Case("etrace_grad: step_loss is not callable", lambda: fresh().etrace_grad(MS(XS, BS), YS, 3),
         etprop.ArgumentError, ("'step_loss'", "got 3", "step_loss(out, target) -> scalar")),
    Case("etrace_grad: step_loss returns a vector", lambda: fresh().etrace_grad(MS(XS, BS), YS, lambda o, y: o - y),
         etprop.ArgumentError, ("step_loss", "shape (4,)", "a scalar")),
    Case("compile: batch_size 0", compile_model(_RNN(), X, B, batch_size=0),
         etprop.ArgumentError, ("batch_size", "got 0", "positive int")),
    Case("compile: decay_or_rank 1.5", compile_model(_RNN(), X, B, algorithm=etprop.ES_D_RTRL, decay_or_rank=1.5),
         etprop.ArgumentError, ("decay_or_rank", "1.5", "[0, 1)")),
    Case("compile: e-prop kappa 2", compile_model(_RNN(), X, B, algorithm=etprop.EProp, kappa=2.0),
         etprop.ArgumentError, ("kappa", "2.0", "[0, 1)")),
    Case("compile: SnAp order 0", compile_model(_RNN(), X, B, algorithm=etprop.SnAp, n=0),
         etprop.ArgumentError, ("order n", "got 0", ">= 1")),
    Case("compile: unknown cross_shape", compile_model(_RNN(), X, B, cross_shape="ignore"),
         etprop.ArgumentError, ("cross_shape", "'ignore'", "'error' or 'warn'")),
    Case("compile: unknown learning_signal", compile_model(_RNN(), X, B, learning_signal="after"),
         etprop.ArgumentError, ("learning_signal", "'after'", "'pre'", "'post'")),
    Case("compile: learning_signal='post' on outputs that read the pre-step state",
         compile_model(_ReadsOldState(), X, B, learning_signal="post"),
         etprop.NotSupportedError, ("learning_signal='post'", "pre-step value of hidden state 'h'", "'pre'")),
    Case("etrace_grad: window=2 on a learner with learning_signal='post'",
         lambda: etprop.compile(_RNN(), etprop.D_RTRL, X, B, batch_size=2, learning_signal="post").etrace_grad(
             etprop.MultiStepData(XS, BS), YS, mse, window=2),
         etprop.ArgumentError, ("window=2", "learning_signal='post'", "learning_signal='pre'")),
    Case("compile: an option the learner does not take", compile_model(_RNN(), X, B, decay=0.5),
         etprop.ArgumentError, ("'decay'", "D_RTRL", "its options are")),

    # -- unknown names ---------------------------------------------------------------------------
    Case("compile: unknown algorithm name", compile_model(_RNN(), X, B, algorithm="d-rtlr"),
         etprop.ArgumentError, ("'d-rtlr'", "'d_rtrl'", "'es_d_rtrl'", "pp_prop=es_d_rtrl")),
    Case("RuleConfig: unknown trace", lambda: etprop.RuleConfig(trace="dense"),
         etprop.ArgumentError, ("trace='dense'", "'param'", "'io'")),
    Case("RuleConfig: a point that is not implemented", lambda: etprop.RuleConfig(trace="io", scope="model"),
         etprop.ArgumentError, ("('io', 'block', 'model', 'exact', 'none')", "implemented points", "('d_rtrl')")),

    # -- models the compiler cannot take --------------------------------------------------------------
    Case("compile: no ETP operator in update", compile_model(_NoOperator(), X, B, batch_size=2),
         etprop.CompilationError, ("_NoOperator.update", "no ETP operator", "etprop.matmul(x, w)")),
    Case("compile: while_loop over the hidden state", compile_model(_WhileLoop(), X, B, batch_size=2),
         etprop.NotSupportedError, ("_WhileLoop.update", "lax.while_loop", "lax.scan")),
    Case("compile: a ParamState written in update", compile_model(_WritesParam(), X, B, batch_size=2),
         etprop.NotSupportedError, ("ParamState 'w'", "written", "ShortTermState")),
    Case("compile: hidden states of different shapes depend on each other", compile_model(_CrossShape(), jnp.ones(2)),
         etprop.NotSupportedError, ("'h' -> 's'", "different shapes", "cross_shape='warn'")),
    Case("compile: example input without the batch axis", compile_model(_RNN(), X[0], B[0], batch_size=2),
         etprop.CompilationError, ("batch_size=2", "shape (3,)", "leading batch axis")),
    Case("compile: a spiking model without dt", compile_model(_LIFNet(), X, batch_size=2),
         etprop.ArgumentError, ("time step", "not set", "brainstate.environ.set(dt=")),

    # -- the compiled learner's inputs --------------------------------------------------------------
    Case("learner(x): wrong batch size", lambda: fresh()((jnp.ones((3, 3)), jnp.zeros((3, 4)))),
         etprop.OperandError, ("input 0", "(3, 3)", "(2, 3)")),
    Case("learner(x): integer input", lambda: fresh()((jnp.ones((2, 3), jnp.int32), B)),
         etprop.OperandError, ("input 0", "int32", "float32")),
    Case("learner(x): input in mV, compiled unitless", lambda: fresh()((X * u.mV, B)),
         etprop.OperandError, ("input 0", "unit mV", "no unit")),
    Case("learner(x): one input for a two-input model", lambda: fresh()(X),
         etprop.OperandError, ("structure", "PyTreeDef((*,))", "PyTreeDef((*, *))")),
    Case("learner.step: target without the batch axis", lambda: fresh().step((X, B), jnp.zeros(4), mse),
         etprop.ArgumentError, ("target", "(4,)", "batch_size=2")),
    Case("learner.set_params: wrong shape", lambda: fresh().set_params({"w": jnp.ones((4, 3))}),
         etprop.ArgumentError, ("'w'", "(4, 3)", "expected (3, 4)")),

    # -- etprop.nn layers ------------------------------------------------------------------------------
    Case("nn.Linear: negative size", lambda: enn.Linear(-3, 4),
         etprop.ArgumentError, ("'in_size'", "-3", "positive int")),
    Case("nn.Linear: mask of the wrong shape", lambda: enn.Linear(3, 4, w_mask=jnp.ones((4, 3))),
         etprop.ArgumentError, ("'w_mask'", "(4, 3)", "expected (3, 4)")),
    Case("nn.Linear: sign other than +-1", lambda: enn.Linear(3, 4, sign=jnp.array([1.0, 0.0, -1.0])),
         etprop.ArgumentError, ("'sign'", "+1", "-1")),
    Case("nn.GRUCell: unknown activation", lambda: enn.GRUCell(3, 4, activation="tanhh"),
         etprop.ArgumentError, ("activation", "'tanhh'", "'tanh'")),
    Case("nn.LIF: negative size", lambda: enn.LIF(-3),
         etprop.ArgumentError, ("in_size", "-3", "positive int")),
    Case("nn.LIF: unknown reset", lambda: enn.LIF(3, reset="hard"),
         etprop.ArgumentError, ("reset", "'hard'", "'subtract'", "'zero'")),
    Case("nn.LIF: V_reset without the unit of V_th", lambda: enn.LIF(3, V_th=1.0 * u.mV, V_reset=0.5),
         etprop.ArgumentError, ("V_reset=0.5", "no unit", "mV")),
    Case("nn.LIF: unitless input to a neuron in mV", _lif_update(enn.LIF(3, V_th=1.0 * u.mV), jnp.ones(3)),
         etprop.ArgumentError, ("R * x", "unit 1", "in mV")),
    Case("nn.LIF: dt without a unit, tau in ms", _lif_update(enn.LIF(3, tau=10.0 * u.ms), jnp.ones(3), dt=1.0),
         etprop.ArgumentError, ("dt / tau", "dt=1.0", "time units")),
    Case("nn.LeakyRateReadout: w_init of the wrong shape", lambda: enn.LeakyRateReadout(4, 3, w_init=jnp.ones((3, 4))),
         etprop.ArgumentError, ("w_init", "(3, 4)", "expected (4, 3)")),
    Case("nn.SpikingRecurrentLayer: unknown neuron", lambda: enn.SpikingRecurrentLayer(3, 5, "hh"),
         etprop.ArgumentError, ("neuron", "'hh'", "'lif'")),
    Case("nn.surrogate: alpha is an array", lambda: enn.surrogate.FastSigmoid(jnp.array(2.0)),
         etprop.ArgumentError, ("FastSigmoid.alpha", "Array(2.", "Python float")),
    Case("nn.Embedding: padding_idx out of range", lambda: enn.Embedding(4, 3, padding_idx=7),
         etprop.ArgumentError, ("'padding_idx'", "got 7", "[-4, 4)")),

    # -- tasks, the command line's settings, checkpoints ----------------------------------------------
    Case("get_task: unknown task", lambda: get_task("copy"),
         etprop.ArgumentError, ("'copy'", "copying", "adding")),
    Case("get_task: unknown parameter", lambda: get_task("copying", delays=3),
         etprop.ArgumentError, ("'delays'", "n_symbols", "delay")),
    Case("get_task: negative delay", lambda: get_task("copying", delay=-1),
         etprop.ArgumentError, ("delay", "-1", ">= 0")),
    Case("Task.batch: batch_size 0", lambda: get_task("copying").batch(jax.random.key(0), 0),
         etprop.ArgumentError, ("batch_size", "got 0", "positive int")),
    Case("Task.loss: outputs of the wrong shape",
         lambda: get_task("copying").loss(jnp.zeros((3, 2, 5)), get_task("copying").batch(jax.random.key(0), 2)),
         etprop.ArgumentError, ("outs", "(3, 2, 5)", "(20, 2, 4)")),
    Case("etprop train: --lr 0", lambda: TrainConfig(lr=0.0).validate(),
         etprop.ArgumentError, ("--lr", "0.0", "positive number")),
    Case("etprop train: --batch 0", lambda: TrainConfig(batch=0).validate(),
         etprop.ArgumentError, ("--batch", "got 0", "positive integer")),
    Case("etprop train: --decay 1.5", lambda: TrainConfig(algo="es_d_rtrl", decay=1.5).validate(),
         etprop.ArgumentError, ("--decay", "1.5", "(0, 1)")),
    Case("etprop train: unknown --algo", lambda: TrainConfig(algo="d-rtlr").validate(),
         etprop.ArgumentError, ("'d-rtlr'", "'d_rtrl'", "'bptt'")),
    Case("etprop train: --resume of a directory without a checkpoint", lambda: read_meta("runs/no-such-run"),
         CheckpointError, ("runs/no-such-run", "meta.json", "no checkpoint")),
    Case("etprop train: --process-id outside --num-processes",
         lambda: distributed.start("127.0.0.1:1234", 2, 2, None),
         etprop.ArgumentError, ("--process-id", "got 2", "[0, 2)")),
]


# -- the tests ----------------------------------------------------------------------------------------

_RAISED: dict = {}


def _raise(case: Case) -> BaseException:
    """The exception ``case.provoke()`` raises (warnings silenced); each case runs once per session."""
    if case.id in _RAISED:
        return _RAISED[case.id]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            case.provoke()
        except Exception as err:  # noqa: BLE001 -- what is raised is what the test checks
            _RAISED[case.id] = err
            return err
    raise AssertionError(f"{case.id}: no error raised")


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert all(issubclass(c.error, etprop.EtpropError) for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_raises_the_library_error_with_a_full_message(case):
    err = _raise(case)
    assert isinstance(err, etprop.EtpropError), f"a bare {type(err).__module__}.{type(err).__name__}: {err}"
    assert isinstance(err, case.error), f"{type(err).__name__}, expected {case.error.__name__}: {err}"
    missing = [f for f in case.fragments if f not in str(err)]
    assert not missing, f"message lacks {missing}: {err}"


def public_class(err: BaseException) -> type:
    """The most specific class of ``err`` that etprop exports (`etprop.errors`), e.g. `ArgumentError` for
    the `ArgumentError` that is also a `KeyError`."""
    return next(c for c in type(err).__mro__ if c.__module__ == "etprop.errors" and c.__name__ in errors.__all__)


def first_line(err: BaseException, limit: int = 220) -> str:
    line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def _cell(text: str) -> str:
    """A markdown table cell holding ``text`` verbatim, as code (``<`` and ``*`` stay literal)."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``"


def catalogue_table() -> str:
    """The catalogue as a markdown table: case | error | the first line of its message."""
    rows = ["| case | error | message |", "|---|---|---|"]
    for case in CASES:
        err = _raise(case)
        rows.append(f"| {case.id} | `{public_class(err).__name__}` | {_cell(first_line(err))} |")
    return "\n".join(rows) + "\n"


_TABLE = re.compile(r"<!-- catalogue: python tests/test_error_catalogue.py -->\n(.*?)<!-- end catalogue -->", re.DOTALL)


def test_docs_table_is_current():
    """docs/errors.md holds the table this file prints (rerun ``python tests/test_error_catalogue.py`` and paste
    its output between the page's catalogue markers when a case or a message changes)."""
    found = _TABLE.search(DOCS_PAGE.read_text(encoding="utf-8"))
    assert found, "docs/errors.md lacks the catalogue markers"
    assert found.group(1) == catalogue_table()


if __name__ == "__main__":
    sys.stdout.write(catalogue_table())
