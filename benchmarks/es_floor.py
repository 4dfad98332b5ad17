"""ES-D-RTRL's floor on the dense suites (issue 14, item 4): its essential per-step work written by
hand on plain arrays, with nothing a library adds.

Per step: the model's forward step; the learning signal's VJP through the readout
(``delta = dL^t/dh^t``); per traced weight the factorised trace update (``ex`` the normalised
input average, ``ef`` the output-side recursion with the step's diagonal ``D`` and ``Df``) and
the one gradient product ``ex^T (delta * ef)`` (plus the bias's ``sum_b delta * ef``); the
readout's direct gradient. The weights' gradients are accumulated over the sequence, as the
learners do. Not included (so this is a lower bound of what etprop computes): the gradient of
untraced weights (the GRU's reset gate), finite checks, the pre-step signal's VJP through the
step.

``lif`` (``LIFNet``, one layer): ``vv = dm v + x W + b``, ``s = spike(vv - 1)``, ``v' = vv - s``:
``D = dm (1 - s'(vv))``, ``Df = 1 - s'(vv)``. ``gru`` (``GRUNet``): ``D = 1 - z`` (gates' inputs
cut), ``Df_z = (c - h) z (1 - z)``, ``Df_h = z (1 - c^2)`` for the candidate's weight on
``[x, r h]``; the reset gate reaches ``h'`` only through the candidate's input, so it has no
trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.models import spike

__all__ = ["es_floor_fn"]

ALPHA = 0.9  # the suites' ES-D-RTRL decay


def _lif_step(p, v, ex, ef, x, y, corr, step_loss, dm):
    (w, b), w_out = p["layer"], p["w_out"]
    y_in = x @ w + b
    vv = dm * v + y_in
    sg = jax.jvp(spike, (vv - 1.0,), (jnp.ones_like(vv),))[1]  # the surrogate's slope
    v2 = vv - spike(vv - 1.0)
    ex = ALPHA * ex + (1.0 - ALPHA) * x
    ef = dm * (1.0 - sg) * ef + (1.0 - sg)
    loss, (d_v, d_wout) = jax.value_and_grad(
        lambda h, wo: jnp.mean(jax.vmap(step_loss)(jnp.tanh(h) @ wo, y)), argnums=(0, 1))(v2, w_out)
    c = d_v * ef
    return v2, ex, ef, loss, {"w": (ex / corr).T @ c, "b": jnp.sum(c, 0), "w_out": d_wout}


def _gru_step(p, h, ex, ef, x, y, corr, step_loss):
    (wz, bz), (wr, br), (wh, bh), w_out = p["wz"], p["wr"], p["wh"], p["w_out"]
    xh = jnp.concatenate([x, h], -1)
    z = jax.nn.sigmoid(xh @ wz + bz)
    r = jax.nn.sigmoid(xh @ wr + br)
    xrh = jnp.concatenate([x, r * h], -1)
    c = jnp.tanh(xrh @ wh + bh)
    h2 = (1.0 - z) * h + z * c
    (ex_z, ex_h), (ef_z, ef_h) = ex, ef
    ex_z = ALPHA * ex_z + (1.0 - ALPHA) * xh
    ex_h = ALPHA * ex_h + (1.0 - ALPHA) * xrh
    ef_z = (1.0 - z) * ef_z + (c - h) * z * (1.0 - z)
    ef_h = (1.0 - z) * ef_h + z * (1.0 - c * c)
    loss, (d_h, d_wout) = jax.value_and_grad(
        lambda hh, wo: jnp.mean(jax.vmap(step_loss)(hh @ wo, y)), argnums=(0, 1))(h2, w_out)
    cz, ch = d_h * ef_z, d_h * ef_h
    g = {"wz": (ex_z / corr).T @ cz, "bz": jnp.sum(cz, 0), "wh": (ex_h / corr).T @ ch, "bh": jnp.sum(ch, 0), "w_out": d_wout}
    return h2, (ex_z, ex_h), (ef_z, ef_h), loss, g


def es_floor_fn(wl, hidden, batch, xs, ys):
    """``(jitted f, args)``: the hand-written ES-D-RTRL floor of workload ``wl`` (``lif`` with one
    layer, or ``gru``) over the sequence; ``f`` returns the accumulated gradients."""
    model = wl.model(None, hidden, batch)
    if wl.kind == "lif" and wl.n_layers == 1:
        (layer,) = model.layers
        p = {"layer": (layer.value["weight"], layer.value["bias"]), "w_out": model.w_out.value}
        h0 = (jnp.zeros((batch, hidden)), jnp.zeros_like(xs[0]), jnp.zeros((batch, hidden)))
        step = lambda p, h, ex, ef, x, y, corr: _lif_step(p, h, ex, ef, x, y, corr, wl.step_loss, model.dm)
    elif wl.kind == "gru":
        p = {k: (getattr(model, k).value["weight"], getattr(model, k).value["bias"]) for k in ("wz", "wr", "wh")}
        p["w_out"] = model.w_out.value
        n_xh = xs.shape[-1] + hidden
        h0 = (jnp.zeros((batch, hidden)), (jnp.zeros((batch, n_xh)),) * 2, (jnp.zeros((batch, hidden)),) * 2)
        step = lambda p, h, ex, ef, x, y, corr: _gru_step(p, h, ex, ef, x, y, corr, wl.step_loss)
    else:
        raise ValueError(f"no ES-D-RTRL floor for workload {wl.name!r}")

    @jax.jit
    def floor(xs, ys):
        def body(carry, xy):
            h, ex, ef, acc, n = carry
            corr = 1.0 - ALPHA ** (n + 1.0)  # the input average's zero-start correction (as etprop's)
            h, ex, ef, loss, g = step(p, h, ex, ef, *xy, corr)
            acc = jax.tree.map(jnp.add, acc, g)
            return (h, ex, ef, acc, n + 1.0), loss

        g0 = jax.eval_shape(lambda: step(p, *h0, xs[0], ys[0], 1.0)[4])
        acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), g0)
        (_, _, _, acc, _), losses = jax.lax.scan(body, h0 + (acc0, jnp.float32(0.0)), (xs, ys))
        return acc, jnp.sum(losses)

    return floor, (xs, ys)
