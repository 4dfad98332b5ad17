"""`UORO`: unbiased online recurrent optimisation (Tallec & Ollivier 2017).

Per sample, the influence ``M = dh/dtheta`` (``N x |theta|``, see `etprop.algorithms.rtrl`)
is replaced by a rank-one estimate ``h~ theta~^T`` with ``E[h~ theta~^T] = M``. Each
step draws random signs ``nu`` (N,) and, with ``J = dF/dh`` and ``I = dF/dtheta``::

    a   = J h~                                    (one JVP)
    b   = nu^T I                                  (one VJP, |theta|)
    rho0 = sqrt((|theta~| + eps) / (|a| + eps)),  rho1 = sqrt((|b| + eps) / (|nu| + eps))
    h~'     = rho0 a + rho1 nu
    theta~' = theta~ / rho0 + b / rho1

``E[h~' theta~'^T] = J h~ theta~^T + E[nu nu^T] I = J M + I`` because the cross terms
have zero mean (``rho1`` is even in ``nu``), so the estimate stays unbiased; ``rho0`` and
``rho1`` balance the two factors' norms to reduce its variance. The gradient's history
term is ``(delta . h~) theta~``. Memory ``O(N + |theta|)`` per sample.

The random key is part of the carried state (raw key data, one key per batch sample),
split at every step: runs are reproducible from the seed, `reset` restarts the stream,
and under `jax.jit` each step draws fresh signs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.rtrl import InfluenceAlgorithm
from etprop.errors import ArgumentError

__all__ = ["UORO"]


def _key_data(key) -> jax.Array:
    """Raw ``uint32`` data of a seed (int), a typed key or a raw key array."""
    if isinstance(key, bool):
        raise ArgumentError(f"UORO key must be an int seed or a jax.random key, got {key!r}")
    if isinstance(key, (int, np.integer)):
        return jax.random.key_data(jax.random.key(int(key)))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ArgumentError(f"UORO needs one key, got a key array of shape {key.shape}")
        return jax.random.key_data(key)
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == jnp.uint32 and key.ndim == 1:
        return jnp.asarray(key)
    raise ArgumentError(f"UORO key must be an int seed or a jax.random key (jax.random.key(0)), got {key!r}")


class UORO(InfluenceAlgorithm):
    """Unbiased rank-one estimate of the RTRL gradient, with matrix-free JVP/VJP only.

    Args:
      model: the brainstate model.
      key: an int seed or a ``jax.random.key``; required (the estimate is random). With
        ``batch_size`` each sample gets its own stream (``fold_in(key, sample)``).
      eps: the ``epsilon`` of the norm ratios ``rho0``, ``rho1`` (default 1e-7).

    The gradient is unbiased over the random signs but noisy; its variance grows with
    the sequence length. Parameters that do not reach the hidden state get their exact
    instantaneous gradient, as with every learner.
    """

    name = "UORO"

    def __init__(self, model, key=None, *, eps: float = 1e-7):
        super().__init__(model)
        if key is None:
            raise ArgumentError("UORO needs a random key: UORO(model, key=0) or key=jax.random.key(0); "
                                "the estimate is random and the key makes runs reproducible")
        self._key0 = _key_data(key)
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
            raise ArgumentError(f"eps must be a positive float, got {eps!r}")
        self.eps = float(eps)

    def init_influence(self, key=None):
        lay = self.layout
        kd = self._key0 if key is None else _key_data(key)
        return {"h": jnp.zeros((lay.N,), lay.dtype), "theta": jnp.zeros((lay.n_theta,), lay.dtype), "key": kd}

    def _batch(self, tree):
        # one independent sign stream per sample: the batch mean then averages B estimates
        if self.batch_size is None:
            return tree
        out = jax.tree.map(lambda a: jnp.broadcast_to(a, (self.batch_size,) + a.shape), tree)
        key = jax.random.wrap_key_data(tree["key"])
        out["key"] = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, i)))(
            jnp.arange(self.batch_size))
        return out

    def traces_for_key(self, key):
        """The initial carried state (batched like ``learner.etrace.value``) for ``key``.

        Pure and traceable, so estimates for many keys can be drawn with `jax.vmap`."""
        self._require_graph()
        return self._batch(self.init_influence(key))

    def advance_influence(self, step, tr):
        key, sub = jax.random.split(jax.random.wrap_key_data(tr["key"]))
        dtype = self.layout.dtype
        nu = jax.random.rademacher(sub, (self.layout.N,), dtype)
        a = step.jvp_h(tr["h"][None])[0]  # J h~
        b = step.vjp_theta(nu[None])[0]  # nu^T dF/dtheta
        eps = jnp.asarray(self.eps, dtype)
        norm = lambda v: jnp.sqrt(jnp.sum(v * v))
        rho0 = jnp.sqrt((norm(tr["theta"]) + eps) / (norm(a) + eps))
        rho1 = jnp.sqrt((norm(b) + eps) / (norm(nu) + eps))
        return {"h": rho0 * a + rho1 * nu, "theta": tr["theta"] / rho0 + b / rho1,
                "key": jax.random.key_data(key)}

    def influence_grad(self, tr, delta):
        return jnp.dot(delta, tr["h"]) * tr["theta"]

    def describe_leaf(self, leaf):
        return "rank-one influence estimate (UORO): its share of theta~, with the shared h~ (N)"

    def memory_lines(self):
        lay = self.layout
        return super().memory_lines() + [f"UORO: h~ ({lay.N}) + theta~ ({lay.n_theta}) + a key per sample"]
