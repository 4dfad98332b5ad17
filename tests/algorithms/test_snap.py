"""SnAp-n: sparsity patterns, compressed storage, SnAp-1 = D-RTRL = BPTT on diagonal models,
and SnAp at saturation = RTRL (float64)."""

import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop.algorithms.snap import greedy_coloring, snap_pattern
from tests.algorithms.influence_models import RingRNN, VanillaRNN, cos, data, grads_of, rel_err
from tests.algorithms.models import ALIF, DenseGRU, ElementwiseRNN, LIFExpSyn

DIAGONAL = {
    "elementwise_rnn": (lambda: ElementwiseRNN(3, 5, 2), 3),
    "lif_exp_synapse": (lambda: LIFExpSyn(4, 5, 2), 4),
    "alif": (lambda: ALIF(4, 5, 2), 4),
}


@pytest.mark.parametrize("name,B", [("lif_exp_synapse", 2),
                                    pytest.param("elementwise_rnn", None, marks=pytest.mark.slow),
                                    pytest.param("alif", 2, marks=pytest.mark.slow)])
def test_snap1_equals_bptt_on_diagonal_models(x64, name, B):
    """Where the hidden Jacobian is per-unit block-diagonal SnAp-1 is exact (as D-RTRL,
    whose equality to BPTT test_exactness checks)."""
    make, n_in = DIAGONAL[name]
    xs, ys = data(n_in, 2, T=10, B=B, scale=1.5)
    g, _, learner = grads_of(make, etprop.SnAp, xs, ys, B, n=1)
    g_b, _, _ = grads_of(make, etprop.BPTT, xs, ys, B)
    assert rel_err(g, g_b) <= 1e-6
    # stored compressed: S entries (the states of one position) per parameter element
    S = len(learner.graph.groups[0].members)
    assert learner.etrace.value.shape[-1] == S
    assert "SnAp-1" in learner.report() and "entries kept" in learner.report()


@pytest.mark.parametrize("make,n_in,n,mode", [
    (lambda: DenseGRU(3, 4, 2), 3, 2, "jvp"),          # dense recurrence saturates at n = 2
    (lambda: RingRNN(2, 5, 2), 2, 3, "compressed"),    # ring of 5, reach 1 per step: n = 3
    pytest.param(lambda: DenseGRU(3, 4, 2), 3, 2, "compressed", marks=pytest.mark.slow),
])
def test_saturated_snap_equals_rtrl(x64, make, n_in, n, mode):
    xs, ys = data(n_in, 2, T=8, B=2, scale=1.5)
    g_r, _, _ = grads_of(make, etprop.RTRL, xs, ys, 2)
    g, _, learner = grads_of(make, etprop.SnAp, xs, ys, 2, n=n, mode=mode)
    assert learner.saturation == n  # and SnAp-(n-1) would be a real approximation
    assert rel_err(g, g_r) <= 1e-6, learner.report()
    assert "equals RTRL" in learner.report()


def test_ring_patterns_grow_with_n(x64):
    """Ring recurrence (unit j reads j-1, j, j+1): SnAp-n keeps 2n-1 units per parameter
    element until all H are kept; the gradient approaches RTRL's as n grows."""
    H, n_in = 7, 2
    make = lambda: RingRNN(n_in, H, 2)
    xs, ys = data(n_in, 2, T=10, B=None, scale=1.5)
    g_r, _, _ = grads_of(make, etprop.RTRL, xs, ys)
    cosines, grads, learners = [], {}, {}
    for n in (1, 2, 3):
        g, _, learner = grads_of(make, etprop.SnAp, xs, ys, n=n)
        grads[n], learners[n] = g, learner
        kept = learner.kept_entries()
        per = min(2 * n - 1, H)
        assert kept["w_in"] == per * n_in * H
        assert kept["w_hh"] == per * 3 * H  # only the 3H unmasked recurrent weights influence h
        assert learner.etrace.value.shape == (n_in * H + H * H, per)
        cosines.append(cos(g, g_r))
    assert learner.saturation == 4  # 2 * 4 - 1 >= 7
    assert cosines[0] < cosines[1] < cosines[2] < 1 - 1e-9
    assert cosines[0] > 0.5  # SnAp-1 still points the right way
    # the coloured compressed Jacobian gives the same SnAp-2 as the dense-tangent JVPs ('auto' here)
    g_c, _, a = grads_of(make, etprop.SnAp, xs, ys, n=2, mode="compressed")
    assert "JVPs on dense tangents" in learners[2].report() and "compressed J from" in a.report()
    assert rel_err(g_c, grads[2]) <= 1e-10


def test_snap1_vanilla_rnn_keeps_only_k_equals_j(x64):
    H = 4
    learner = etprop.compile(VanillaRNN(2, H, 1), etprop.SnAp, jnp.ones(2), n=1)
    assert learner.kept_entries() == {"w_in": 2 * H, "w_hh": H * H, "b": H}
    names = learner.graph.param_leaf_names
    (a, b), = [(a, b) for leaf, a, b in learner.layout.leaf_slices() if names[leaf] == "w_hh"]
    K = np.asarray(learner._K)[a:b, 0].reshape(H, H)  # the one kept unit of each W_hh[i, j]
    np.testing.assert_array_equal(K, np.tile(np.arange(H), (H, 1)))
    assert learner.saturation == 2  # dense recurrence: SnAp-2 is already full RTRL


def test_pattern_and_coloring_helpers():
    rng = np.random.default_rng(0)
    A = rng.random((12, 12)) < 0.25
    conflict = (A.T.astype(int) @ A.astype(int)) > 0
    c = greedy_coloring(conflict)
    for i in range(12):
        for j in range(12):
            if i != j and conflict[i, j]:
                assert c[i] != c[j]
    J = np.eye(5, k=1, dtype=bool)  # a chain: unit i+1 -> i
    I = np.zeros((5, 1), bool)
    I[4, 0] = True
    for n in range(1, 7):
        assert snap_pattern(J, I, n)[:, 0].sum() == min(n, 5)


def test_bad_arguments():
    model = VanillaRNN(2, 3, 1)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(etprop.ArgumentError, match="order n"):
            etprop.SnAp(model, n=bad)
    with pytest.raises(etprop.ArgumentError, match="mode"):
        etprop.SnAp(model, n=1, mode="dense")
    with pytest.raises(etprop.ArgumentError, match="probe_points"):
        etprop.SnAp(model, n=1, probe_points=-1)
