"""etprop.nn takes braintrace's constructor keywords and names, meaning the same thing."""

import brainstate
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop


@pytest.mark.parametrize("name", ["VanillaRNNCell", "GRUCell", "MGUCell", "LSTMCell", "MinimalRNNCell", "MiniGRU"])
def test_cells_take_in_size_out_size_and_state_init(name):
    cls = getattr(etprop.nn, name)
    a = cls(in_size=3, out_size=5, key=0)
    b = cls(3, 5, key=0)
    assert (a.num_in, a.num_out) == (b.num_in, b.num_out) == (3, 5)
    for (pa, sa), (pb, sb) in zip(a.states(brainstate.ParamState).items(), b.states(brainstate.ParamState).items()):
        assert pa == pb
        np.testing.assert_array_equal(sa.value, sb.value)
    c = cls(3, 5, state_init=jnp.full((5,), 0.25), key=0)
    np.testing.assert_allclose(c.h.value, 0.25)
    brainstate.nn.init_all_states(c, batch_size=2)
    assert c.h.value.shape == (2, 5) and np.allclose(c.h.value, 0.25)
    with pytest.raises(etprop.ArgumentError, match="not both"):
        cls(3, 5, in_size=3)


def test_layer_keywords():
    g = etprop.nn.GroupedLinear(2, in_features=3, out_features=4, key=0)
    assert g.weight.value.shape == (2, 3, 4)
    lora = etprop.nn.LoRA(in_features=6, out_features=4, lora_rank=2, key=0)
    assert lora.B.value.shape == (6, 2) and lora.A.value.shape == (2, 4)
    emb = etprop.nn.Embedding(10, embedding_size=3, key=0)
    assert emb.weight.value.shape == (10, 3)
    lru = etprop.nn.LRUCell(d_model=3, d_hidden=5, key=0)
    assert (lru.num_in, lru.state_size, lru.num_out) == (3, 5, 3)
    mini = etprop.nn.MinimalRNNCell(3, 4, phi="relu", key=0)
    assert mini.activation is jax.nn.relu or mini.activation(jnp.array(-1.0)) == 0.0


def test_valina_alias_is_reachable_but_not_public():
    assert etprop.nn.ValinaRNNCell is etprop.nn.VanillaRNNCell
    assert "ValinaRNNCell" not in etprop.nn.__all__
    with pytest.raises(AttributeError, match="no attribute 'NoSuchCell'"):
        etprop.nn.NoSuchCell


def test_signed_w_linear_keeps_signs_and_learns_online(x64):
    sign = jnp.array([[1.0], [-1.0], [1.0]])
    layer = etprop.nn.SignedWLinear(3, 2, w_sign=sign, key=1)
    w = layer.weight.value
    x = jnp.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(layer(x), x @ (jnp.abs(w) * sign))

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = etprop.nn.SignedWLinear(3, 2, w_sign=sign, key=1)
            self.h = brainstate.HiddenState(jnp.zeros(2))

        def update(self, x):
            self.h.value = 0.8 * self.h.value + jnp.tanh(self.inp(x))
            return self.h.value

    learner = etprop.compile(Net(), etprop.D_RTRL, x)
    assert [r.leaf_name for r in learner.graph.relations] == ["inp.weight"]
    with pytest.raises(etprop.ArgumentError, match="does not broadcast"):
        etprop.nn.SignedWLinear(3, 2, w_sign=jnp.ones((4, 2)))


def test_scaled_ws_linear_standardises_and_traces_every_parameter(x64):
    layer = etprop.nn.ScaledWSLinear(5, 3, key=2)
    w = layer.weight.value
    w_hat = (w - w.mean(0)) / jnp.sqrt(jnp.maximum(w.var(0) * 5, 1e-4))
    x = jax.random.normal(jax.random.key(0), (4, 5))
    np.testing.assert_allclose(layer(x), x @ w_hat, rtol=1e-12, atol=1e-12)

    class Net(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = etprop.nn.ScaledWSLinear(5, 3, key=2)
            self.h = brainstate.HiddenState(jnp.zeros(3))

        def update(self, x):
            self.h.value = 0.5 * self.h.value + jnp.tanh(self.inp(x))
            return self.h.value

    from tests.conftest import bptt_reference, rel_err
    xs = jax.random.normal(jax.random.key(1), (8, 5))
    ys = jax.random.normal(jax.random.key(2), (8, 3))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    learner = etprop.compile(Net(), etprop.D_RTRL, xs[0])
    assert {r.leaf_name for r in learner.graph.relations} == {"inp.weight", "inp.gain", "inp.bias"}
    grads, _ = learner.etrace_grad(xs, ys, mse)
    ref, _ = bptt_reference(Net(), xs, ys, mse)
    assert rel_err(grads, ref) <= 1e-6  # one state per unit: exact


# -- braintrace's layer keywords: param_type, Embedding's options, r_init, LoRA's base_module ---------
#
# Where braintrace computes the same thing the layers are compared with its own (float64); where
# braintrace refuses an option (Embedding's padding_idx, max_norm, freeze) with brainstate.nn.Embedding,
# the class braintrace's derives from and whose semantics those options have.

import braintools  # noqa: E402
import brainunit as u  # noqa: E402
import braintrace as real_braintrace  # noqa: E402

from tests.conftest import bptt_reference, rel_err  # noqa: E402


class MyParam(brainstate.ParamState):
    """A user's ParamState subclass (to select parameters by class)."""


def _layers(param_type):
    """Every etprop layer braintrace gives a param_type=, with the number of arrays it holds."""
    from jax.experimental import sparse as jsparse
    sparse = jsparse.BCOO.fromdense(jnp.eye(3, 4))
    nn = etprop.nn
    return [(nn.Linear(3, 4, param_type=param_type, key=0), 2),
            (nn.SparseLinear(sparse, param_type=param_type, key=0), 2),
            (nn.GroupedLinear(2, 3, 4, param_type=param_type, key=0), 2),
            (nn.LoRA(3, 4, rank=2, bias=True, param_type=param_type, key=0), 3),
            (nn.Embedding(5, 4, param_type=param_type, key=0), 1),
            (nn.Conv1d(2, 3, 3, param_type=param_type, key=0), 2),
            (nn.SignedWLinear(3, 4, param_type=param_type, key=0), 1),
            (nn.ScaledWSLinear(3, 4, param_type=param_type, key=0), 3)]


def test_param_type_holds_every_array_of_every_layer():
    for (layer, n), (plain, _) in zip(_layers(MyParam), _layers(None)):
        ours = layer.states(brainstate.ParamState)
        assert len(ours) == n and all(type(s) is MyParam for s in ours.values()), type(layer).__name__
        assert {k: type(s) for k, s in plain.states(brainstate.ParamState).items()} == \
            {k: brainstate.ParamState for k in ours}
        for s, p in zip(ours.values(), plain.states(brainstate.ParamState).values()):
            np.testing.assert_array_equal(s.value, p.value)  # the class changes nothing else
    for layer, _ in _layers(brainstate.FakeState):  # frozen: nothing trainable is left
        assert not layer.states(brainstate.ParamState), type(layer).__name__
        assert isinstance(layer.A if isinstance(layer, etprop.nn.LoRA) else layer.weight, brainstate.FakeState)


def test_linear_param_type_matches_braintrace(x64, precision64):
    theirs = real_braintrace.nn.Linear(3, 4, param_type=MyParam)
    w, b = theirs.weight.value["weight"], theirs.weight.value["bias"] + 0.3
    theirs.weight.value = {"weight": w, "bias": b}
    ours = etprop.nn.Linear(3, 4, w_init=w, b_init=b, param_type=MyParam)
    assert type(theirs.weight) is MyParam and type(ours.weight) is MyParam and type(ours.bias) is MyParam
    x = jax.random.normal(jax.random.key(0), (5, 3))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-12)
    loss = lambda layer: (lambda: jnp.sum(jnp.sin(layer(x))))
    g_t = brainstate.transform.grad(loss(theirs), grad_states=theirs.states(MyParam))()
    g_o = brainstate.transform.grad(loss(ours), grad_states=ours.states(MyParam))()
    (g_t,), g_o = g_t.values(), dict(g_o)
    np.testing.assert_allclose(g_o[("weight",)], g_t["weight"], rtol=1e-12)
    np.testing.assert_allclose(g_o[("bias",)], g_t["bias"], rtol=1e-12)


def test_param_type_errors():
    with pytest.raises(etprop.ArgumentError, match="'param_type' must be a state class.*got 3"):
        etprop.nn.Linear(3, 4, param_type=3)
    with pytest.raises(etprop.ArgumentError, match="HiddenState is a short-term state"):
        etprop.nn.Conv1d(2, 3, 3, param_type=brainstate.HiddenState)
    with pytest.raises(etprop.ArgumentError, match="returned int for 'weight'"):
        etprop.nn.GroupedLinear(2, 3, 4, param_type=lambda v: 1)


# -- Embedding: padding_idx, max_norm, norm_type, freeze --------------------------------------------

def _table():
    """Rows of different norms: some above any max_norm below, some (rows 1 and 3) under it."""
    scale = jnp.array([2.0, 0.1, 2.0, 0.05, 1.0, 2.0])[:, None]
    return scale * jax.random.normal(jax.random.key(7), (6, 4))


def _grad_of(layer, idx, c):
    """d sum(c * layer(idx)^2) / d table, through brainstate's grad of the table's state."""
    f = lambda: jnp.sum(c * layer(idx) ** 2)
    return brainstate.transform.grad(f, grad_states={"w": layer.weight})()["w"]


def test_braintrace_refuses_what_etprop_embedding_supports():
    with pytest.raises(NotImplementedError, match="padding_idx"):
        real_braintrace.nn.Embedding(6, 4, padding_idx=1)
    layer = etprop.nn.Embedding(6, 4, _table(), 1, 2.0, 1.0, False, True)  # braintrace's positional order
    assert (layer.padding_idx, layer.max_norm, layer.norm_type, layer.freeze) == (1, 2.0, 1.0, True)


def test_embedding_padding_row_starts_at_zero_and_gets_no_gradient(x64):
    w = _table()
    idx = jnp.array([0, 2, 3, 2, 5])
    c = jax.random.normal(jax.random.key(8), (5, 4))
    for p in (2, -4):  # a negative index counts from the end (torch): -4 is row 2
        ours = etprop.nn.Embedding(6, 4, w_init=w, padding_idx=p)
        assert ours.padding_idx == 2
        np.testing.assert_array_equal(ours.weight.value[2], 0.0)
        rest = jnp.array([0, 1, 3, 4, 5])
        np.testing.assert_array_equal(ours.weight.value[rest], w[rest])
        ours.weight.value = w  # a pad that is not zero: still looked up as stored, still no gradient
        np.testing.assert_array_equal(ours(idx), w[idx])
        g = _grad_of(ours, idx, c)
        np.testing.assert_array_equal(g[2], 0.0)
        np.testing.assert_allclose(g[3], 2 * c[2] * w[3], rtol=1e-12)
        theirs = brainstate.nn.Embedding(6, 4, embedding_init=w, padding_idx=2)
        theirs.weight.value = w
        np.testing.assert_allclose(g, _grad_of(theirs, idx, c), rtol=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_embedding_max_norm_bounds_looked_up_rows(x64, norm_type):
    w = _table()
    m = 1.5
    idx = jnp.array([0, 1, 3, 3, 4])
    ours = etprop.nn.Embedding(6, 4, w_init=w, max_norm=m, norm_type=norm_type)
    y = ours(idx)
    norms = jnp.linalg.norm(w, ord=norm_type, axis=-1)
    out = jnp.linalg.norm(y, ord=norm_type, axis=-1)
    assert bool(jnp.all(out <= m)) and bool(jnp.any(norms[idx] > m)) and bool(jnp.any(norms[idx] <= m))
    want = jnp.where((norms > m)[:, None], w * (m / (norms + 1e-7))[:, None], w)[idx]  # torch's rule
    np.testing.assert_allclose(y, want, rtol=1e-12)
    np.testing.assert_array_equal(ours.weight.value, w)  # the stored table is not rewritten
    # the scale is not differentiated: d y / d W_v is the identity, as in a plain lookup
    c = jax.random.normal(jax.random.key(9), (5, 4))
    g = brainstate.transform.grad(lambda: jnp.sum(c * ours(idx)), grad_states={"w": ours.weight})()["w"]
    np.testing.assert_allclose(g, jnp.zeros_like(w).at[idx].add(c), rtol=1e-12)
    # brainstate's Embedding: the same rows (its eps is 1e-8, torch's and etprop's 1e-7)
    theirs = brainstate.nn.Embedding(6, 4, embedding_init=w, max_norm=m, norm_type=norm_type)
    np.testing.assert_allclose(y, theirs(idx), rtol=1e-6)
    np.testing.assert_allclose(_grad_of(ours, idx, c),
                               _grad_of(brainstate.nn.Embedding(6, 4, embedding_init=w, max_norm=m,
                                                                norm_type=norm_type), idx, c), rtol=1e-6)


def test_embedding_max_norm_leaves_the_pad_alone(x64):
    w = _table().at[1].set(10.0)
    ours = etprop.nn.Embedding(6, 4, w_init=w, padding_idx=1, max_norm=1.0)
    ours.weight.value = w
    y = ours(jnp.array([1, 0]))
    np.testing.assert_array_equal(y[0], w[1])
    assert float(jnp.linalg.norm(y[1])) <= 1.0


def test_frozen_embedding_has_no_parameter():
    w = _table()
    layer = etprop.nn.Embedding(6, 4, w_init=w, freeze=True)
    assert not layer.states(brainstate.ParamState) and type(layer.weight) is brainstate.LongTermState
    np.testing.assert_array_equal(layer(jnp.array([4, 0])), w[jnp.array([4, 0])])
    fake = etprop.nn.Embedding(6, 4, w_init=w, freeze=True, param_type=brainstate.FakeState)
    assert isinstance(fake.weight, brainstate.FakeState) and not fake.states(brainstate.ParamState)
    with pytest.raises(etprop.ArgumentError, match="freeze=True with param_type=MyParam"):
        etprop.nn.Embedding(6, 4, freeze=True, param_type=MyParam)


class _Tokens(brainstate.nn.Module):
    """h' = 0.7 h + tanh(emb(i) + frozen(i)): a padded, renormalised table and a frozen one."""

    def __init__(self):
        super().__init__()
        self.emb = etprop.nn.Embedding(6, 4, w_init=_table(), padding_idx=0, max_norm=2.0)
        self.emb.weight.value = _table()  # a pad that is not zero: its value is used, its gradient is zero
        self.frozen = etprop.nn.Embedding(6, 4, w_init=_table() * 0.5, freeze=True)

    def init_state(self, batch_size=None, **kwargs):
        self.h = brainstate.HiddenState(jnp.zeros(((batch_size,) if batch_size else ()) + (4,)))

    def update(self, i):
        self.h.value = 0.7 * self.h.value + jnp.tanh(self.emb(i) + self.frozen(i))
        return self.h.value


def test_embedding_options_learn_online_exactly(x64):
    T, B = 8, 3
    xs = jax.random.randint(jax.random.key(10), (T, B), 0, 6)
    ys = jax.random.normal(jax.random.key(11), (T, B, 4))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    model = _Tokens()
    brainstate.nn.init_all_states(model, batch_size=B)
    learner = etprop.compile(model, etprop.D_RTRL, xs[0], batch_size=B)
    assert [(r.leaf_name, learner.relation_kind(r)) for r in learner.graph.relations] == [("emb.weight", "param")]
    grads, _ = learner.etrace_grad(xs, ys, mse)
    ref_model = _Tokens()
    brainstate.nn.init_all_states(ref_model, batch_size=B)
    ref, _ = bptt_reference(ref_model, xs, ys, mse)
    assert set(grads) == set(ref) == {"emb.weight"}
    assert rel_err(grads, ref) <= 1e-6  # one state per unit: D-RTRL equals BPTT
    assert bool(jnp.any(xs == 0)) and float(jnp.max(jnp.abs(grads["emb.weight"][0]))) == 0.0  # the pad
    assert float(jnp.min(jnp.max(jnp.abs(grads["emb.weight"][1:]), axis=-1))) > 0


def test_embedding_option_errors():
    with pytest.raises(etprop.ArgumentError, match=r"'padding_idx' must be an int in \[-6, 6\).*got 6"):
        etprop.nn.Embedding(6, 4, padding_idx=6)
    with pytest.raises(etprop.ArgumentError, match="'max_norm' must be a positive number.*got 0"):
        etprop.nn.Embedding(6, 4, max_norm=0)
    with pytest.raises(etprop.ArgumentError, match="'norm_type' must be a positive number.*got -1"):
        etprop.nn.Embedding(6, 4, max_norm=1.0, norm_type=-1)
    with pytest.raises(etprop.ArgumentError, match="'freeze' must be True or False"):
        etprop.nn.Embedding(6, 4, freeze="yes")
    with pytest.raises(etprop.NotSupportedError, match="scale_grad_by_freq=True"):
        etprop.nn.Embedding(6, 4, scale_grad_by_freq=True)
    assert etprop.nn.Embedding(6, 4, scale_grad_by_freq=False, key=0).scale_grad_by_freq is False


# -- LeakyRateReadout(r_init=) ------------------------------------------------------------------------

def test_leaky_rate_readout_r_init(x64):
    with brainstate.environ.context(dt=1.0 * u.ms):
        for r_init, want in [(None, 0.0), (0.25, 0.25), (jnp.array([0.5, -1.0]), jnp.array([0.5, -1.0])),
                             (braintools.init.Constant(0.75), 0.75), (lambda s: jnp.full(s, -0.5), -0.5)]:
            ours = etprop.nn.LeakyRateReadout(3, 2, tau=5.0 * u.ms, r_init=r_init, seed=0)
            np.testing.assert_array_equal(ours.r.value, jnp.broadcast_to(want, (2,)))
            ours.init_state(batch_size=4)
            np.testing.assert_array_equal(ours.r.value, jnp.broadcast_to(want, (4, 2)))
            ours.r.value = ours.r.value + 1.0
            ours.reset_state(batch_size=4)
            np.testing.assert_array_equal(ours.r.value, jnp.broadcast_to(want, (4, 2)))
        # a random initialiser draws every batch row (braintools' rule): rows differ
        rnd = etprop.nn.LeakyRateReadout(3, 2, r_init=braintools.init.Normal(0.0, 1.0), seed=0)
        rnd.init_state(batch_size=3)
        assert rnd.r.value.shape == (3, 2) and float(jnp.max(jnp.abs(rnd.r.value[0] - rnd.r.value[1]))) > 0


def test_leaky_rate_readout_r_init_matches_braintrace(x64, precision64):
    """braintrace's readout integrates r' = d r + x W, etprop's r' = d r + (1 - d) x W: with
    W_etprop = W / (1 - d) the two agree step by step, from the same r_init."""
    with brainstate.environ.context(dt=1.0 * u.ms):
        r0 = jnp.array([0.3, -0.7])
        theirs = real_braintrace.nn.LeakyRateReadout(3, 2, tau=5.0 * u.ms, r_init=r0)
        d = float(np.exp(-1.0 / 5.0))
        ours = etprop.nn.LeakyRateReadout(3, 2, tau=5.0 * u.ms, r_init=r0, w_init=theirs.W.value / (1 - d))
        theirs.init_state(batch_size=2)
        ours.init_state(batch_size=2)
        np.testing.assert_array_equal(ours.r.value, theirs.r.value)
        for x in jax.random.normal(jax.random.key(12), (4, 2, 3)):
            np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-12)


def test_leaky_rate_readout_r_init_errors():
    with brainstate.environ.context(dt=1.0):
        with pytest.raises(etprop.ArgumentError, match=r"r_init has shape \(3,\).*shape \(2,\)"):
            etprop.nn.LeakyRateReadout(3, 2, r_init=jnp.ones(3))
        with pytest.raises(etprop.ArgumentError, match=r"r_init failed for shape \(2,\)"):
            etprop.nn.LeakyRateReadout(3, 2, r_init=jax.nn.initializers.zeros)  # f(key, shape): not f(shape)


# -- LoRA(base_module=) ---------------------------------------------------------------------------------

def test_lora_base_module_matches_braintrace(x64, precision64):
    base_t = real_braintrace.nn.Linear(3, 4, b_init=braintools.init.Normal(0.0, 1.0))
    theirs = real_braintrace.nn.LoRA(3, 2, 4, base_module=base_t)
    p, q = base_t.weight.value, theirs.weight.value
    base = etprop.nn.Linear(3, 4, w_init=p["weight"], b_init=p["bias"])
    ours = etprop.nn.LoRA(in_features=3, lora_rank=2, out_features=4, alpha=1 / 2, b_init=q["lora_a"],
                          a_init=q["lora_b"], base_module=base)
    x = jax.random.normal(jax.random.key(13), (5, 3))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-12)
    alone = etprop.nn.LoRA(3, 4, rank=2, alpha=1 / 2, b_init=q["lora_a"], a_init=q["lora_b"])
    np.testing.assert_allclose(ours(x), base(x) + alone(x), rtol=1e-12)
    # the gradient reaches both paths, as braintrace's does
    f = lambda layer: (lambda: jnp.sum(jnp.sin(layer(x))))
    g_o = brainstate.transform.grad(f(ours), grad_states=ours.states(brainstate.ParamState))()
    g_t = brainstate.transform.grad(f(theirs), grad_states=theirs.states(brainstate.ParamState))()
    g_t = {k[:-1] if k[-1] == "weight" else k: v for k, v in g_t.items()}  # braintrace: dicts in '.weight'
    np.testing.assert_allclose(g_o[("B",)], g_t[()]["lora_a"], rtol=1e-12)
    np.testing.assert_allclose(g_o[("A",)], g_t[()]["lora_b"], rtol=1e-12)
    np.testing.assert_allclose(g_o[("base_module", "weight")], g_t[("base_module",)]["weight"], rtol=1e-12)
    np.testing.assert_allclose(g_o[("base_module", "bias")], g_t[("base_module",)]["bias"], rtol=1e-12)
    assert all(float(jnp.max(jnp.abs(v))) > 0 for v in g_o.values())


class _Adapted(brainstate.nn.Module):
    """h' = 0.8 h + tanh(lora(x) + base(x) + frozen(x)), read out by a second adapter around a
    frozen base: frozen layers (LongTermState, FakeState) are constants of the step."""

    def __init__(self):
        super().__init__()
        self.inp = etprop.nn.LoRA(3, 4, rank=2, base_module=etprop.nn.Linear(3, 4, key=3), key=4)
        self.frozen = etprop.nn.Linear(3, 4, param_type=brainstate.LongTermState, key=7)
        frozen = etprop.nn.Linear(4, 2, param_type=brainstate.FakeState, key=5)
        self.out = etprop.nn.LoRA(4, 2, rank=1, base_module=frozen, key=6)

    def init_state(self, batch_size=None, **kwargs):
        self.h = brainstate.HiddenState(jnp.zeros(((batch_size,) if batch_size else ()) + (4,)))

    def update(self, x):
        self.h.value = 0.8 * self.h.value + jnp.tanh(self.inp(x) + self.frozen(x))
        return self.out(self.h.value)


def test_lora_base_module_and_frozen_layers_learn_online(x64):
    T, B = 6, 2
    xs = jax.random.normal(jax.random.key(14), (T, B, 3))
    ys = jax.random.normal(jax.random.key(15), (T, B, 2))
    mse = lambda o, y: jnp.sum((o - y) ** 2)
    model = _Adapted()
    brainstate.nn.init_all_states(model, batch_size=B)
    learner = etprop.compile(model, etprop.D_RTRL, xs[0], batch_size=B)
    kinds = {r.leaf_name: learner.relation_kind(r) for r in learner.graph.relations}
    assert kinds == {"inp.A": "param", "inp.B": "io", "inp.base_module.weight": "param",
                     "inp.base_module.bias": "param"}
    grads, _ = learner.etrace_grad(xs, ys, mse)
    ref_model = _Adapted()
    brainstate.nn.init_all_states(ref_model, batch_size=B)
    ref, _ = bptt_reference(ref_model, xs, ys, mse)
    assert set(grads) == set(ref) == set(kinds) | {"out.A", "out.B"}  # the frozen layers: no gradient
    exact = [k for k in ref if k != "inp.B"]  # per-parameter traces and the readout: exact
    assert rel_err({k: grads[k] for k in exact}, {k: ref[k] for k in exact}) <= 1e-6
    assert float(jnp.max(jnp.abs(grads["inp.B"]))) > 0  # the factorised trace: learns, approximately


def test_lora_base_module_and_kernel_init_errors():
    with pytest.raises(etprop.ArgumentError, match="'base_module' must be callable.*got int"):
        etprop.nn.LoRA(3, 4, rank=2, base_module=3)
    wrong = etprop.nn.LoRA(3, 4, rank=2, base_module=etprop.nn.Linear(3, 5, key=0), key=0)
    with pytest.raises(etprop.ArgumentError, match=r"base_module returned shape \(5,\).*expected \(4,\)"):
        wrong(jnp.ones(3))
    lora = etprop.nn.LoRA(3, 4, rank=2, kernel_init=jax.nn.initializers.constant(0.5), key=0)
    np.testing.assert_array_equal(lora.B.value, 0.5)
    np.testing.assert_array_equal(lora.A.value, 0.5)
    with pytest.raises(etprop.ArgumentError, match="kernel_init=.*not both"):
        etprop.nn.LoRA(3, 4, rank=2, kernel_init=jax.nn.initializers.zeros, a_init=jax.nn.initializers.zeros)
