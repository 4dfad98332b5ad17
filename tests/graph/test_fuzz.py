"""Random small models against the compiler's contract.

hypothesis builds a model of one or two layers of hidden groups (1-3 states per position,
element-wise couplings between them, optional spikes with a surrogate and a reset, optional
units), fed through ETP operators or plain ops, with element-wise, dense or no recurrence, and
a plain readout. On each, either the compiler refuses with the library's own error, or:

* RTRL equals BPTT on every parameter;
* D-RTRL equals BPTT on every parameter `learner.approximations()` does not list (the report's
  "exact"), and
* no parameter's online gradient is zero where BPTT's is not (nothing is zero by construction).

In CI a derandomised profile of 25 examples; `test_fuzz_long` (slow) runs 300.
"""

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import etprop
from etprop.errors import EtpropError
from etprop.nn.surrogate import FastSigmoid
from tests.conftest import bptt_reference, rel_err

N_IN, N_OUT, T, B = 3, 2, 6, 2
ACTS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "identity": lambda v: v, "softplus": jax.nn.softplus}


@st.composite
def model_specs(draw):
    n_layers = draw(st.integers(1, 2))
    layers = []
    for _ in range(n_layers):
        layers.append(dict(
            H=draw(st.integers(2, 3)),
            S=draw(st.integers(1, 3)),
            op=draw(st.sampled_from(["etp", "etp", "plain"])),  # ETP operator or plain matmul into the layer
            rec=draw(st.sampled_from(["none", "elementwise", "dense"])),
            act=draw(st.sampled_from(sorted(ACTS))),
            spikes=draw(st.booleans()),
            decays=draw(st.lists(st.floats(0.3, 0.95), min_size=3, max_size=3)),
        ))
    return dict(layers=layers, units=draw(st.booleans()), readout_all=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


class Fuzzed(brainstate.nn.Module):
    """The model a spec describes; see the module docstring."""

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        key = jax.random.key(spec["seed"])
        n_prev = N_IN
        for li, L in enumerate(spec["layers"]):
            key, k1, k2 = jax.random.split(key, 3)
            w = jax.random.normal(k1, (n_prev, L["H"])) * 1.2
            unit = u.mV if (spec["units"] and li == 0) else None
            setattr(self, f"w{li}", brainstate.ParamState(w * unit if unit is not None else w))
            if L["rec"] == "elementwise":
                setattr(self, f"r{li}", brainstate.ParamState(jax.random.uniform(k2, (L["H"],), minval=-0.5,
                                                                                 maxval=0.5)))
            elif L["rec"] == "dense":
                setattr(self, f"r{li}", brainstate.ParamState(jax.random.normal(k2, (L["H"], L["H"])) * 0.4))
            zero = jnp.zeros((B, L["H"]))  # the states batched from the start
            for k in range(L["S"]):
                setattr(self, f"h{li}_{k}", brainstate.HiddenState(zero * unit if (k == 0 and unit is not None)
                                                                   else zero))
            n_prev = L["H"]
        n_read = sum(L["H"] * (L["S"] if spec["readout_all"] else 1) for L in spec["layers"])
        self.w_out = brainstate.ParamState(jax.random.normal(key, (n_read, N_OUT)) * 0.5)

    def _layer(self, li, inp):
        L = self.spec["layers"][li]
        sts = [getattr(self, f"h{li}_{k}") for k in range(L["S"])]
        w = getattr(self, f"w{li}").value
        drive = etprop.matmul(inp, w) if L["op"] == "etp" else inp @ w
        unit = u.get_unit(drive)
        d = u.get_mantissa(drive) if not unit.is_unitless else drive
        s0 = sts[0].value
        s0m = u.get_mantissa(s0) if not unit.is_unitless else s0
        if L["rec"] == "elementwise":
            d = d + etprop.element_wise(getattr(self, f"r{li}").value) * s0m
        elif L["rec"] == "dense":
            d = d + etprop.matmul(s0m, getattr(self, f"r{li}").value)
        new0 = L["decays"][0] * s0m + ACTS[L["act"]](d)
        out = new0
        if L["spikes"]:
            spk = FastSigmoid(5.0)(new0 - 0.5)
            new0 = new0 - spk * 0.5  # a soft reset through the spike (its surrogate gradient too)
            out = spk
        sts[0].value = new0 * unit if not unit.is_unitless else new0
        prev = new0
        for k in range(1, L["S"]):  # element-wise chain inside the group: s_k <- c s_k + f(s_{k-1})
            sts[k].value = L["decays"][k] * sts[k].value + 0.5 * jnp.tanh(prev)
            prev = sts[k].value
        reads = [out] + ([sts[k].value for k in range(1, L["S"])] if self.spec["readout_all"] else [])
        return out, reads

    def update(self, x):
        inp, reads = x, []
        for li in range(len(self.spec["layers"])):
            inp, r = self._layer(li, inp)
            reads += r
        return jnp.concatenate(reads, axis=-1) @ self.w_out.value


def _mse(out, y):
    return jnp.sum((out - y) ** 2)


def _check(spec):
    key = jax.random.key(spec["seed"] + 1)
    xs = jax.random.normal(key, (T, B, N_IN))
    ys = jax.random.normal(jax.random.fold_in(key, 1), (T, B, N_OUT))

    def build():
        return Fuzzed(spec)

    ref, _ = bptt_reference(build(), xs, ys, _mse)
    try:
        rtrl = etprop.compile(build(), etprop.RTRL, xs[0], batch_size=B)
        d_rtrl = etprop.compile(build(), etprop.D_RTRL, xs[0], batch_size=B)
    except EtpropError:
        return "refused"
    g_rtrl, _ = rtrl.etrace_grad(xs, ys, _mse)
    g_d, _ = d_rtrl.etrace_grad(xs, ys, _mse)
    assert set(g_rtrl) == set(ref) == set(g_d)
    assert rtrl.approximations() == {}
    for k in ref:
        assert rel_err(g_rtrl[k], ref[k]) <= 1e-8, (k, spec, rtrl.report())
    gaps = d_rtrl.approximations()
    for k in ref:
        nonzero = float(jnp.max(jnp.abs(u.get_mantissa(ref[k])))) > 1e-12
        if nonzero:  # nothing is zero by construction
            assert float(jnp.max(jnp.abs(u.get_mantissa(g_d[k])))) > 0, (k, spec, d_rtrl.report())
        if k not in gaps:  # the report calls it exact
            assert rel_err(g_d[k], ref[k]) <= 1e-8, (k, spec, d_rtrl.report())
    return "exact" if not gaps else "approximate"


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


# 10 derandomized examples in the quick suite (about 45 s on CI); the slow profile below runs 300
@settings(max_examples=6, **_SETTINGS)
@given(model_specs())
def test_fuzzed_models_keep_the_compilers_contract(precision64, spec):
    _check(spec)


@pytest.mark.slow
@settings(max_examples=300, **dict(_SETTINGS, derandomize=False))
@given(model_specs())
def test_fuzz_long(precision64, spec):
    _check(spec)


def test_the_fuzzed_family_holds_exact_and_approximate_models(precision64):
    """The generator reaches both sides of the contract (the checks above are not vacuous)."""
    one = dict(layers=[dict(H=3, S=2, op="etp", rec="elementwise", act="tanh", spikes=True,
                            decays=[0.9, 0.8, 0.7])], units=True, readout_all=True, seed=3)
    two = dict(layers=[dict(H=3, S=1, op="etp", rec="none", act="tanh", spikes=False, decays=[0.9, 0.8, 0.7]),
                       dict(H=2, S=1, op="etp", rec="none", act="sigmoid", spikes=False, decays=[0.8, 0.8, 0.8])],
               units=False, readout_all=False, seed=4)
    assert _check(one) == "exact"
    assert _check(two) == "approximate"  # layer 1's weight: layer 2 keeps its memory
