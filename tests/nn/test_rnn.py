"""etprop.nn rate RNN cells: equations, states, relation profiles, online gradients vs BPTT."""

import brainstate as bs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop.nn import (CFNCell, GRUCell, Linear, LRUCell, LSTMCell, MGUCell, MiniGRU, MiniLSTM, MinimalRNNCell,
                       URLSTMCell, VanillaRNNCell)

N_IN, N_HID, N_OUT = 3, 8, 2

CELLS = {
    "vanilla": lambda: VanillaRNNCell(N_IN, N_HID, key=0),
    "gru": lambda: GRUCell(N_IN, N_HID, key=0),
    "mgu": lambda: MGUCell(N_IN, N_HID, key=0),
    "lstm": lambda: LSTMCell(N_IN, N_HID, key=0),
    "minimal": lambda: MinimalRNNCell(N_IN, N_HID, key=0),
    "minigru": lambda: MiniGRU(N_IN, N_HID, key=0),
    "minilstm": lambda: MiniLSTM(N_IN, N_HID, key=0),
    "cfn": lambda: CFNCell(N_IN, N_HID, key=0),
    "urlstm": lambda: URLSTMCell(N_IN, N_HID, key=0),
    "lru": lambda: LRUCell(N_IN, N_HID, key=0, r_min=0.5),   # output size N_IN (skip D)
}
STATES = {"lstm": ("h", "c"), "urlstm": ("h", "c"), "lru": ("h_re", "h_im")}


class Net(bs.nn.Module):
    """cell -> Linear readout (an ETP matmul reaching no hidden state: not traced)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.readout = Linear(cell.num_out, N_OUT, key=7)

    def update(self, x):
        return self.readout(self.cell(x))


# -- equations -------------------------------------------------------------------------------------

def _sig(v):
    return 1.0 / (1.0 + jnp.exp(-v))


def _lin(layer, v):
    return v @ layer.weight.value + layer.bias.value


def _ref_step(name, c, x, s):
    """The documented equations, written with plain jnp from the cell's parameter values."""
    cat = lambda a, b: jnp.concatenate([a, b], -1)
    if name == "vanilla":
        return {"h": jnp.tanh(_lin(c.W, cat(x, s["h"])))}
    if name == "gru":
        h = s["h"]
        z, r = _sig(_lin(c.Wz, cat(x, h))), _sig(_lin(c.Wr, cat(x, h)))
        return {"h": (1 - z) * h + z * jnp.tanh(_lin(c.Wh, cat(x, r * h)))}
    if name == "mgu":
        h = s["h"]
        f = _sig(_lin(c.Wf, cat(x, h)))
        return {"h": (1 - f) * h + f * jnp.tanh(_lin(c.Wh, cat(x, f * h)))}
    if name == "lstm":
        xh = cat(x, s["h"])
        i, f, g, o = _sig(_lin(c.Wi, xh)), _sig(_lin(c.Wf, xh)), jnp.tanh(_lin(c.Wg, xh)), _sig(_lin(c.Wo, xh))
        cc = f * s["c"] + i * g
        return {"c": cc, "h": o * jnp.tanh(cc)}
    if name == "minimal":
        z = jnp.tanh(_lin(c.Wx, x))
        u = _sig(_lin(c.Wu, cat(z, s["h"])))
        return {"h": u * s["h"] + (1 - u) * z}
    if name == "minigru":
        z = _sig(_lin(c.Wz, x))
        return {"h": (1 - z) * s["h"] + z * _lin(c.Wh, x)}
    if name == "minilstm":
        xh = cat(x, s["h"])
        return {"h": _sig(_lin(c.Wf, xh)) * s["h"] + _sig(_lin(c.Wi, xh)) * _lin(c.Wx, x)}
    if name == "cfn":
        xh = cat(x, s["h"])
        return {"h": _sig(_lin(c.Wf, xh)) * jnp.tanh(s["h"]) + _sig(_lin(c.Wi, xh)) * jnp.tanh(_lin(c.Wh, x))}
    if name == "urlstm":
        xh = cat(x, s["h"])
        b = c.forget_bias.value
        f, r = _sig(xh @ c.Wf.weight.value + b), _sig(xh @ c.Wr.weight.value - b)
        g = 2 * r * f + (1 - 2 * r) * f ** 2
        cc = g * s["c"] + (1 - g) * jnp.tanh(xh @ c.Wu.weight.value)
        return {"c": cc, "h": _sig(xh @ c.Wo.weight.value) * jnp.tanh(cc)}
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(set(CELLS) - {"lru"}))
def test_cell_follows_its_equations(name):
    cell = CELLS[name]()
    names = STATES.get(name, ("h",))
    s = {n: jnp.zeros(N_HID) for n in names}
    xs = jax.random.normal(jax.random.key(0), (4, N_IN))
    for x in xs:
        out = cell(x)
        s = _ref_step(name, cell, x, s)
        np.testing.assert_allclose(out, s["h"], rtol=1e-5, atol=1e-6)
        for n in names:
            np.testing.assert_allclose(getattr(cell, n).value, s[n], rtol=1e-5, atol=1e-6)


def test_lru_equals_complex_diagonal_recurrence():
    cell = LRUCell(N_IN, N_HID, key=2)
    lam = jnp.exp(-jnp.exp(cell.nu_log.value) + 1j * jnp.exp(cell.theta_log.value))
    np.testing.assert_allclose(lam, cell.eigenvalues(), rtol=1e-6)
    assert float(jnp.max(jnp.abs(lam))) < 0.99 + 1e-6
    # gamma = sqrt(1 - |lambda|^2) at initialisation
    np.testing.assert_allclose(jnp.exp(cell.gamma_log.value), jnp.sqrt(1 - jnp.abs(lam) ** 2), rtol=1e-4)
    B = cell.B_re.value + 1j * cell.B_im.value
    C = cell.C_re.value + 1j * cell.C_im.value
    h = jnp.zeros(N_HID, jnp.complex64)
    for x in jax.random.normal(jax.random.key(0), (5, N_IN)):
        h = lam * h + jnp.exp(cell.gamma_log.value) * (x @ B)
        y = jnp.real(h @ C) + cell.D.value * x
        np.testing.assert_allclose(cell(x), y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(cell.h_re.value + 1j * cell.h_im.value, h, rtol=1e-4, atol=1e-5)
    no_skip = LRUCell(N_IN, N_HID, num_out=5, skip=False, key=2)
    assert no_skip.D is None and no_skip(jnp.ones(N_IN)).shape == (5,)
    with pytest.raises(etprop.ArgumentError, match="skip"):
        LRUCell(N_IN, N_HID, num_out=5)
    with pytest.raises(etprop.ArgumentError, match="r_min"):
        LRUCell(N_IN, N_HID, r_max=1.0)


# -- states ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CELLS))
def test_states_unbatched_batched_and_reset(name):
    cell = CELLS[name]()
    names = STATES.get(name, ("h",))
    states = cell.states(bs.HiddenState)
    assert sorted(p[-1] for p in states) == sorted(names)
    assert all(st.value.shape == (N_HID,) for st in states.values())       # works without init_state
    assert cell(jnp.ones(N_IN)).shape == (cell.num_out,)
    net = Net(cell)
    bs.nn.init_all_states(net, batch_size=3)
    for n in names:
        st = getattr(cell, n)
        assert isinstance(st, bs.HiddenState) and st.value.shape == (3, N_HID)
        np.testing.assert_array_equal(st.value, 0.0)
    assert net(jnp.ones((3, N_IN))).shape == (3, N_OUT)
    assert float(jnp.max(jnp.abs(getattr(cell, names[0]).value))) > 0
    cell.reset_state(batch_size=2)
    assert all(getattr(cell, n).value.shape == (2, N_HID) for n in names)
    np.testing.assert_array_equal(getattr(cell, names[0]).value, 0.0)
    cell.reset_state()
    assert getattr(cell, names[0]).value.shape == (N_HID,)


def test_bad_activation_raises():
    with pytest.raises(etprop.ArgumentError, match="activation"):
        GRUCell(2, 3, activation="nope")
    assert VanillaRNNCell(2, 3, activation=jax.nn.relu, key=0)(-jnp.ones(2) * 50).min() >= 0


# -- relation profiles (pinned) --------------------------------------------------------------------

_RO = {"readout.weight", "readout.bias"}


def _w(*layers):
    return {f"cell.{l}.{p}" for l in layers for p in ("weight", "bias")}


PROFILE = {
    # name: (hidden groups, traced parameter leaves, untraced parameter leaves)
    "vanilla": ([("cell.h",)], _w("W"), _RO),
    "gru": ([("cell.h",)], _w("Wz", "Wh"), _w("Wr") | _RO),
    "mgu": ([("cell.h",)], _w("Wf", "Wh"), _RO),
    "lstm": ([("cell.h", "cell.c")], _w("Wi", "Wf", "Wg", "Wo"), _RO),
    "minimal": ([("cell.h",)], _w("Wx", "Wu"), _RO),
    "minigru": ([("cell.h",)], _w("Wz", "Wh"), _RO),
    "minilstm": ([("cell.h",)], _w("Wf", "Wi", "Wx"), _RO),
    "cfn": ([("cell.h",)], _w("Wf", "Wi", "Wh"), _RO),
    "urlstm": ([("cell.h", "cell.c")], {f"cell.{l}.weight" for l in ("Wf", "Wr", "Wu", "Wo")} | {"cell.forget_bias"},
               _RO),
    "lru": ([("cell.h_re", "cell.h_im")],
            {"cell.nu_log", "cell.theta_log", "cell.gamma_log", "cell.B_re", "cell.B_im"},
            {"cell.C_re", "cell.C_im", "cell.D"} | _RO),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_relation_profile(name):
    groups, traced, untraced = PROFILE[name]
    d = etprop.compile(Net(CELLS[name]()), etprop.D_RTRL, jnp.ones(N_IN))
    g = d.graph
    assert [grp.names for grp in g.groups] == groups
    assert {r.leaf_name for r in g.relations} == traced
    assert set(g.untraced) == untraced
    assert set(g.param_leaf_names) == traced | untraced                   # every parameter accounted for
    assert all(d.relation_kind(r) == "param" for r in g.relations)        # every traced weight: per-parameter
    assert not g.notes
    rep = d.report()
    for leaf in untraced:
        assert f"{leaf} " in rep and "exact gradient through the current step" in rep
    if name == "gru":   # the reset gate reaches h only through Wh's input
        assert "another ETP operator" in g.untraced["cell.Wr.weight"]
    es = etprop.compile(Net(CELLS[name]()), etprop.ES_D_RTRL, jnp.ones(N_IN))
    assert {r.leaf_name for r in es.graph.relations} == traced
    assert all(es.relation_kind(r) == "io" for r in es.graph.relations)


# -- online gradients vs BPTT ----------------------------------------------------------------------

def _rel_err(a, b):
    return max(float(jnp.max(jnp.abs(a[k] - b[k])) / (jnp.max(jnp.abs(b[k])) + 1e-30)) for k in b)


def _cos(a, b):
    keys = sorted(b)
    va = jnp.concatenate([jnp.ravel(a[k]) for k in keys])
    vb = jnp.concatenate([jnp.ravel(b[k]) for k in keys])
    return float(va @ vb / (jnp.linalg.norm(va) * jnp.linalg.norm(vb)))


def _cell_only(g):
    return {k: v for k, v in g.items() if k.startswith("cell.")}


EXACT = {"minigru", "lru"}   # hidden Jacobian diagonal per unit: D-RTRL == BPTT
# Cosine to BPTT over the cell's parameters (the readout's exact gradient left out), measured
# in float64 with T=16 (one closed-form chunk), B=4, inputs N(0, 1.5^2) from key(1), ES-D-RTRL
# decay 0.9 (T=20 gave within 0.015 of these):
#   cell      D-RTRL    ES-D-RTRL
#   vanilla   0.98177   0.96400
#   gru       0.99804   0.98465
#   mgu       0.99095   0.96166
#   lstm      0.99389   0.94787
#   minimal   0.99653   0.95621
#   minigru   exact     0.97349
#   lru       exact     0.99585
#   minilstm  0.99399   0.97035
#   cfn       0.99936   0.98333
#   urlstm    0.99786   0.98662
# Floors a little below:
FLOOR = {
    "vanilla": (0.97, 0.95), "gru": (0.99, 0.97), "mgu": (0.98, 0.95), "lstm": (0.98, 0.93),
    "minimal": (0.99, 0.94), "minigru": (None, 0.96), "lru": (None, 0.99),
    "minilstm": (0.985, 0.96), "cfn": (0.99, 0.975), "urlstm": (0.99, 0.975),
}


def _grads(name, algo, xs, ys, B, **opts):
    net = Net(CELLS[name]())
    bs.nn.init_all_states(net, batch_size=B)
    learner = etprop.compile(net, algo, xs[0], batch_size=B, **opts)
    grads, loss = learner.etrace_grad(xs, ys, lambda o, y: jnp.sum((o - y) ** 2))
    return grads, learner


@pytest.mark.parametrize("name", sorted(CELLS))
def test_online_gradients_against_bptt(x64, name):
    T, B = 16, 4
    k1, k2 = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(k1, (T, B, N_IN)) * 1.5
    ys = jax.random.normal(k2, (T, B, N_OUT))
    g_bptt, _ = _grads(name, etprop.BPTT, xs, ys, B)
    g_d, learner = _grads(name, etprop.D_RTRL, xs, ys, B)
    g_es, _ = _grads(name, etprop.ES_D_RTRL, xs, ys, B, decay_or_rank=0.9)
    shapes = {n: tuple(a.shape) for n, a in zip(learner.graph.param_leaf_names, learner.graph.param_leaf_avals)}
    for algo, g in (("D-RTRL", g_d), ("ES-D-RTRL", g_es)):
        assert set(g) == set(shapes)
        for k, v in g.items():   # every weight learns, none silently untrained
            assert tuple(v.shape) == shapes[k], (algo, k)
            assert float(jnp.max(jnp.abs(v))) > 0, (algo, k)
    # the readout has no memory: its per-step gradient is BPTT's under either algorithm
    for k in _RO:
        np.testing.assert_allclose(g_d[k], g_bptt[k], rtol=1e-9)
    floor_d, floor_es = FLOOR[name]
    if name in EXACT:
        assert _rel_err(g_d, g_bptt) <= 1e-6, learner.report()
    else:
        assert _rel_err(g_d, g_bptt) > 1e-3          # a real approximation: the test is not vacuous
        assert _cos(_cell_only(g_d), _cell_only(g_bptt)) >= floor_d
    assert _cos(_cell_only(g_es), _cell_only(g_bptt)) >= floor_es
