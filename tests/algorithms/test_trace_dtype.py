"""Eligibility traces stored in a narrower dtype (``etprop.compile(..., trace_dtype=jnp.bfloat16)``).

Traces are stored narrow between steps and every update and gradient is computed in the
model's dtype: memory halves against float32, the gradient stays within rounding of it.
"""

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop.errors import ArgumentError
from tests.algorithms.models import ElementwiseRNN

B, T, I, H, O = 4, 40, 5, 8, 3  # T > 16: traces stored between closed-form chunks


def _model():
    m = ElementwiseRNN(I, H, O)
    for st in m.states(brainstate.HiddenState).values():
        st.value = jnp.zeros((B,) + st.value.shape)
    return m


def _cos(a, b):
    fa = jnp.concatenate([x.ravel() for x in jax.tree.leaves(a)]).astype(jnp.float32)
    fb = jnp.concatenate([x.ravel() for x in jax.tree.leaves(b)]).astype(jnp.float32)
    return float(jnp.vdot(fa, fb) / (jnp.linalg.norm(fa) * jnp.linalg.norm(fb)))


def _grads(algo, trace_dtype, closed_form_chunk=None):
    xs = jax.random.normal(jax.random.key(1), (T, B, I))
    ys = jax.random.normal(jax.random.key(2), (T, B, O))
    learner = etprop.compile(_model(), algo, xs[0], batch_size=B, trace_dtype=trace_dtype)
    g, _ = learner.etrace_grad(xs, ys, lambda o, y: jnp.sum((o - y) ** 2), closed_form_chunk=closed_form_chunk)
    return learner, g


@pytest.mark.parametrize("algo", ["d_rtrl", "es_d_rtrl"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("chunk", [1, None], ids=["per-step", "chunks"])
def test_narrow_traces_halve_memory_and_keep_the_gradient(algo, dtype, chunk):
    wide, g_wide = _grads(algo, None, chunk)
    narrow, g_narrow = _grads(algo, dtype, chunk)
    stored = [a for a in jax.tree.leaves(narrow.etrace.value["rel"])]
    assert stored and all(a.dtype == jnp.dtype(dtype) for a in stored)
    bytes_of = lambda lr: sum(a.nbytes for a in jax.tree.leaves(lr.etrace.value["rel"]))
    assert bytes_of(narrow) * 2 == bytes_of(wide)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g_narrow))  # computed in the model's dtype
    assert _cos(g_narrow, g_wide) > 0.999
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(g_narrow), jax.tree.leaves(g_wide)))
    rel = narrow.graph.relations[0]
    assert narrow.trace_bytes(rel) * 2 == wide.trace_bytes(rel)  # the report's memory is the stored one


def test_trace_dtype_is_checked():
    x = jnp.zeros((B, I))
    with pytest.raises(ArgumentError, match="trace_dtype must be one of"):
        etprop.compile(_model(), "d_rtrl", x, batch_size=B, trace_dtype=jnp.int8)
    with pytest.raises(ArgumentError, match="RTRL carries no such traces"):
        etprop.compile(_model(), "rtrl", x, batch_size=B, trace_dtype=jnp.bfloat16)
