"""A spiking network written the braintrace/brainpy.state way, ported by the import alone.

``nn.LIF`` with brainpy.state's signature (braintrace.nn forwards it to brainpy.state.LIF;
etprop.nn.LIF builds brainpy.state's model for that signature), driven through `DeltaProj` by the library's `nn.Linear` (in mV), a plain readout,
the step function setting the step's time as braintrace's docs write it. With one state per
neuron braintrace's D-RTRL is exact, so both libraries agree on the traced weight (float64).
"""

import warnings

import brainstate
import braintools
import brainunit as u
import jax
import jax.numpy as jnp

import brainpy.state as bps
import braintrace as real_braintrace
import etprop as braintrace  # the port
from tests.conftest import rel_err

B, T = 3, 16
DT = 1.0 * u.ms


class SNN(brainstate.nn.Module):
    def __init__(self, lib):
        super().__init__()
        with warnings.catch_warnings():  # braintrace.nn.LIF: "deprecated, use brainpy.state.LIF"
            warnings.simplefilter("ignore", DeprecationWarning)
            self.neu = lib.nn.LIF(10, tau=10 * u.ms, V_th=1.0 * u.mV, spk_fun=braintools.surrogate.ReluGrad())
        # braintrace's Linear does not take a unit-carrying weight, so the unit goes on after it
        self.inp = lib.nn.Linear(6, 10, w_init=jax.random.normal(jax.random.key(0), (6, 10)))
        self.proj = bps.DeltaProj(comm=lambda x: self.inp(x) * u.mV, post=self.neu)
        self.w_out = brainstate.ParamState(jax.random.normal(jax.random.key(1), (10, 2)) * 0.5)

    def update(self, x):
        self.proj(x)
        return self.neu() @ self.w_out.value


def _grads(lib):
    xs = (jax.random.uniform(jax.random.key(2), (T, B, 6)) < 0.3).astype(jnp.float64)
    ys = jax.random.normal(jax.random.key(3), (T, B, 2))
    with brainstate.environ.context(dt=DT):
        brainstate.random.seed(0)
        model = SNN(lib)
        with brainstate.environ.context(i=0, t=0.0 * u.ms):
            learner = lib.compile(model, lib.D_RTRL, xs[0], batch_size=B)

        def step_fn(x, y, i):
            with brainstate.environ.context(i=i, t=i * DT):
                return jnp.mean(jnp.sum((learner(x) - y) ** 2, -1))

        grads = learner.etrace_grad(xs, ys, jnp.arange(T), step_fn=step_fn)
    return {".".join(map(str, k)): v for k, v in grads.items()}


def test_spiking_port_matches_braintrace_on_the_traced_weight(precision64):
    ours, theirs = _grads(braintrace), _grads(real_braintrace)
    with brainstate.environ.context(dt=DT):
        assert isinstance(SNN(braintrace).neu, bps.Dynamics) and isinstance(SNN(real_braintrace).neu, bps.LIF)
    # braintrace's Linear keeps {'weight', 'bias'} in one ParamState; etprop's, two (PORTING.md)
    assert set(ours) == {"inp.weight", "inp.bias", "w_out"} and set(theirs) == {"inp.weight", "w_out"}
    assert float(jnp.max(jnp.abs(ours["inp.weight"]))) > 0
    assert rel_err(ours["inp.weight"], theirs["inp.weight"]["weight"]) <= 1e-6
    assert rel_err(ours["inp.bias"], theirs["inp.weight"]["bias"]) <= 1e-6
    assert float(jnp.max(jnp.abs(ours["w_out"]))) > 0 == float(jnp.max(jnp.abs(theirs["w_out"])))
