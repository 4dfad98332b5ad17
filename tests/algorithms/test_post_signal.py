"""``learning_signal='post'``: the per-step signal at the post-step state, through the readout only
(braintrace's convention; `etprop.graph.readout`)."""

import jax
import jax.numpy as jnp
import pytest

import etprop
from tests.algorithms.models import ElementwiseRNN, LIFExpSyn, mse, spike
from tests.algorithms.test_sparse_online import SparseInLIF, _grads
from tests.conftest import plain_rel_err, seq_data

POST = {"learning_signal": "post"}


@pytest.mark.parametrize("make, n_in", [(lambda: ElementwiseRNN(3, 6, 2), 3), (lambda: SparseInLIF(8, 6, 2), 8)],
                         ids=["elementwise_rnn", "sparse_in_lif"])
@pytest.mark.parametrize("B", [3])
def test_post_equals_pre_and_bptt_where_no_state_feeds_an_operator(x64, make, n_in, B):
    xs, ys = seq_data(n_in, 2, T=10, B=B, scale=1.5)
    g_post, l_post, learner = _grads(make, etprop.D_RTRL, xs, ys, B, compile=POST)
    g_pre, l_pre, _ = _grads(make, etprop.D_RTRL, xs, ys, B)
    g_bptt, _, _ = _grads(make, etprop.BPTT, xs, ys, B)
    assert l_post == pytest.approx(l_pre, rel=1e-12)
    assert plain_rel_err(g_post, g_pre) <= 1e-10
    assert plain_rel_err(g_post, g_bptt) <= 1e-6
    assert "learning_signal='post'" in learner.report()


class _CutRecurrence(SparseInLIF):
    """`SparseInLIF` with the recurrent spikes' gradient stopped: its pre-step signal lacks the last
    step's recurrent path, which is what the post-step signal drops."""

    def update(self, x):
        s_old = jax.lax.stop_gradient(spike(self.v.value - 1.0))
        inp = (etprop.sparse_matmul(x, self.w_in.value, sparse_mat=self.S_in)
               + etprop.sparse_matmul(s_old, self.w_rec.value, sparse_mat=self.S_rec))
        self.g.value = 0.8 * self.g.value + inp
        self.v.value = 0.9 * (self.v.value - spike(self.v.value - 1.0)) + self.g.value
        return jnp.tanh(self.v.value) @ self.w_out.value


@pytest.mark.parametrize("B", [None, 2])
def test_post_drops_exactly_the_last_steps_recurrent_path(x64, B):
    """Recurrent sparse weights: post != pre, and post on the model equals pre on the same model with
    the gradient of the recurrent input stopped (``delta_post . (D e + pullback(Df))``)."""
    xs, ys = seq_data(8, 2, T=12, B=B, scale=1.5)
    g_post, _, _ = _grads(lambda: SparseInLIF(8, 6, 2, recurrent=True), etprop.D_RTRL, xs, ys, B, compile=POST)
    g_pre, _, _ = _grads(lambda: SparseInLIF(8, 6, 2, recurrent=True), etprop.D_RTRL, xs, ys, B)
    g_cut, _, _ = _grads(lambda: _CutRecurrence(8, 6, 2, recurrent=True), etprop.D_RTRL, xs, ys, B)
    assert plain_rel_err(g_post, g_cut) <= 1e-10
    assert plain_rel_err(g_post, g_pre) > 1e-4  # the path it drops is real


def test_step_by_step_equals_the_sequence(x64):
    xs, ys = seq_data(8, 2, T=6, B=None, scale=1.5)
    g_seq, _, _ = _grads(lambda: SparseInLIF(8, 6, 2, recurrent=True), etprop.ES_D_RTRL, xs, ys, None,
                         compile=dict(POST, decay_or_rank=0.9))
    learner = etprop.compile(SparseInLIF(8, 6, 2, recurrent=True), etprop.ES_D_RTRL, xs[0], decay_or_rank=0.9,
                             **POST)
    total = None
    for t in range(6):
        _, g, _ = learner.step(etprop.SingleStepData(xs[t]), ys[t], mse)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    assert plain_rel_err(total, g_seq) < 1e-12


def test_bad_uses_are_named():
    x = jnp.ones(4)
    with pytest.raises(etprop.ArgumentError, match="learning_signal must be 'pre'"):
        etprop.compile(LIFExpSyn(4, 6, 2), etprop.D_RTRL, x, learning_signal="after")
    with pytest.raises(etprop.NotSupportedError, match=r"pre-step value of hidden state '.*v'"):
        etprop.compile(LIFExpSyn(4, 6, 2), etprop.D_RTRL, x, **POST)  # reads this step's spikes out
    with pytest.raises(etprop.ArgumentError, match="per-relation traces"):
        etprop.compile(ElementwiseRNN(3, 6, 2), etprop.BPTT, jnp.ones(3), **POST)
    learner = etprop.compile(ElementwiseRNN(3, 6, 2), etprop.D_RTRL, jnp.ones(3), **POST)
    xs, ys = seq_data(3, 2, T=4, B=None)
    with pytest.raises(etprop.ArgumentError, match="closed_form_chunk"):
        learner.etrace_grad(xs, ys, mse, closed_form_chunk=2)
    with pytest.raises(etprop.ArgumentError, match="window=2: .*learning_signal='post'"):
        learner.etrace_grad(xs, ys, mse, window=2)
    with pytest.raises(etprop.ArgumentError, match="a window of 2 steps"):  # braintrace's chunk_size windows
        learner.etrace_grad(xs, ys, step_fn=lambda x, y: mse(learner(etprop.MultiStepData(x)), y), chunk_size=2)
