"""Networks written the brainpy.state way (units, projections, braintools initialisers).

Each is an ordinary brainstate module: an input layer through `etprop.matmul` (or an
`etprop.nn` layer) as the ``comm`` of a brainpy.state projection, a synapse, a neuron, and
a readout. Nothing here knows about the learners; the tests compile them.
"""

import brainstate
import braintools
import brainunit as u
import jax.numpy as jnp

import brainpy.state as bps

import etprop

DT = 1.0 * u.ms


class Comm(brainstate.nn.Module):
    """``x @ W`` through `etprop.matmul`, ``W`` a braintools initialiser's quantity."""

    def __init__(self, n_in, n_out, unit, scale=1.0, op=None):
        super().__init__()
        self.op = etprop.matmul if op is None else op  # another library's ETP matmul, for comparisons
        self.in_size, self.out_size = (n_in,), (n_out,)  # what a projection's delay buffer reads
        self.weight = brainstate.ParamState(braintools.init.KaimingNormal(scale=scale, unit=unit)((n_in, n_out)))

    def update(self, x):
        return self.op(x, self.weight.value)


class Readout(brainstate.nn.Module):
    """A memoryless readout with a plain op: ``z @ W_out + b`` (exact per-step gradient)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = brainstate.ParamState(braintools.init.KaimingNormal()((n_in, n_out)))
        self.bias = brainstate.ParamState(jnp.zeros(n_out))

    def update(self, z):
        return z @ self.weight.value + self.bias.value


NEURONS = {
    # name: (factory(n), input scale that makes it fire at a few percent per step)
    "LIF": lambda n: bps.LIF(n, tau=10 * u.ms, V_th=1.0 * u.mV),
    "LIFRef": lambda n: bps.LIFRef(n, tau=10 * u.ms, tau_ref=2.0 * u.ms, V_th=1.0 * u.mV),
    "ALIF": lambda n: bps.ALIF(n, tau=10 * u.ms, tau_a=50 * u.ms, beta=0.3 * u.mV, V_th=1.0 * u.mV),
    "IF": lambda n: bps.IF(n, tau=10 * u.ms, V_th=1.0 * u.mV),
    "ExpIF": lambda n: bps.ExpIF(n, tau=10 * u.ms),
    "AdExIF": lambda n: bps.AdExIF(n, tau=10 * u.ms, a=0.01 * u.siemens, b=0.05 * u.mA),
    "Izhikevich": lambda n: bps.Izhikevich(n),
    "Gif": lambda n: bps.Gif(n),
    "HH": lambda n: bps.HH(n),
}

SYNAPSES = {
    # name: factory(n, unit of g: the unit of the input layer's weight)
    "Expon": lambda n, un: bps.Expon(n, tau=5 * u.ms, g_initializer=braintools.init.Constant(0. * un)),
    "Alpha": lambda n, un: bps.Alpha(n, tau=5 * u.ms, g_initializer=braintools.init.Constant(0. * un)),
    "DualExpon": lambda n, un: bps.DualExpon(n, tau_decay=5 * u.ms, tau_rise=1 * u.ms,
                                             g_initializer=braintools.init.Constant(0. * un)),
    "AMPA": lambda n, un: bps.AMPA(n, g_initializer=braintools.init.Constant(0. * un)),
    "GABAa": lambda n, un: bps.GABAa(n, g_initializer=braintools.init.Constant(0. * un)),
}


class FeedForward(brainstate.nn.Module):
    """Poisson input -> etprop.matmul -> synapse -> neuron -> readout.

    ``proj``: ``'align_post'`` (``AlignPostProj`` with the synapse and ``out``),
    ``'delta'`` (``DeltaProj``: the input jumps the membrane, no synapse) or ``'current'``
    (``CurrentProj``: ``out`` of the matmul itself). ``readout``: ``'plain'`` (a matmul of
    the spikes) or ``'leaky'`` (`brainpy.state.LeakyRateReadout`).
    """

    def __init__(self, neuron, n_in=8, n_hid=12, n_out=3, *, syn="Expon", out="CUBA", proj="align_post",
                 readout="plain", delay=None, pre=None, w_scale=1.0, out_unit=None, op=None):
        super().__init__()
        # presynaptic dynamics applied to the input spikes before the projection: 'AMPA'/'GABAa'
        # (kinetic synapses, the open fraction, unitless), 'STP'/'STD' (released resources)
        self.pre = {None: lambda: None,
                    "AMPA": lambda: bps.AMPA(n_in, g_initializer=braintools.init.Constant(0.)),
                    "GABAa": lambda: bps.GABAa(n_in, g_initializer=braintools.init.Constant(0.)),
                    "STP": lambda: bps.STP(n_in, U=0.3, tau_f=20 * u.ms, tau_d=50 * u.ms),
                    "STD": lambda: bps.STD(n_in, tau=50 * u.ms, U=0.3)}[pre]()
        self.neu = NEURONS[neuron](n_hid) if isinstance(neuron, str) else neuron
        out_mod = {"CUBA": lambda: bps.CUBA(), "COBA": lambda: bps.COBA(E=5. * u.mV)}[out]() if out else None
        if proj == "align_post":
            w_unit = u.mS if out_unit is None else out_unit
            self.proj = bps.AlignPostProj(comm=Comm(n_in, n_hid, w_unit, w_scale, op), syn=SYNAPSES[syn](n_hid, w_unit),
                                          out=out_mod, post=self.neu, delay=delay)
        elif proj == "delta":
            w_unit = u.mV if out_unit is None else out_unit
            self.proj = bps.DeltaProj(comm=Comm(n_in, n_hid, w_unit, w_scale, op), post=self.neu)
        elif proj == "current":
            w_unit = u.mS if out_unit is None else out_unit
            self.proj = bps.CurrentProj(comm=Comm(n_in, n_hid, w_unit, w_scale, op), out=out_mod, post=self.neu)
        else:
            raise ValueError(proj)
        if readout == "plain":
            self.readout = Readout(n_hid, n_out)
        else:
            self.readout = bps.LeakyRateReadout(n_hid, n_out, tau=5 * u.ms)

    def update(self, x):
        self.proj(x if self.pre is None else self.pre(x))
        z = self.neu()
        return self.readout(z)


class Recurrent(brainstate.nn.Module):
    """A recurrent spiking layer: input and recurrent `AlignPostProj` (each with its own
    exponential synapse) onto one population; the recurrent input is the previous step's
    spikes. Three states per neuron (two conductances and V), a dense recurrent weight."""

    def __init__(self, neuron, n_in=8, n_hid=12, n_out=3, w_scale=3.0, rec_scale=1.0, op=None):
        super().__init__()
        self.neu = NEURONS[neuron](n_hid)
        self.proj = bps.AlignPostProj(comm=Comm(n_in, n_hid, u.mS, w_scale, op), syn=SYNAPSES["Expon"](n_hid, u.mS),
                                      out=bps.CUBA(), post=self.neu)
        self.rec = bps.AlignPostProj(comm=Comm(n_hid, n_hid, u.mS, rec_scale, op), syn=SYNAPSES["Expon"](n_hid, u.mS),
                                     out=bps.CUBA(), post=self.neu)
        self.readout = Readout(n_hid, n_out)

    def update(self, x):
        z_prev = self.neu.get_spike()
        self.proj(x)
        self.rec(z_prev)
        return self.readout(self.neu())


def mse(out, target):
    """Squared error of one sample."""
    return jnp.sum((out - target) ** 2)
