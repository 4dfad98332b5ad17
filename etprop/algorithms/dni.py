"""DNI: Decoupled Neural Interfaces, synthetic gradients at window exits (Jaderberg et al. 2017).

Windows ``[a_k, b_k)`` run by exact reverse mode with ``h^{a_k}`` fixed; traces carry the traced
(ETP) parameters' credit across windows. An untraced parameter that feeds a hidden state
(``graph.truncated``: a plain input projection or bias) has no trace, so what its use in window
``k`` contributes to losses after ``b_k`` is lost. A learned affine map per hidden group
estimates the strictly future cotangent ``g_k = M(h^{b_k}) ~ dL_{>= b_k}/dh^{b_k}``, and the
window's backward pass pushes ``g_k`` through the window's reverse mode a second time, for the
untraced parameters only: the traced ones get that credit from their trace in later windows
(adding it would count it twice), and the learning signal ``delta = dL/dh^{a_k}`` the traces
contract with comes from the first pass alone. With the exact ``g_k`` the untraced parameters'
window gradients telescope to BPTT; with ``M = 0`` (the initial synthesiser) DNI is exactly the
truncated window rule. `train_synthetic_gradient` fits ``M`` (only ``M``) to the detached
bootstrapped target ``dL_window/dh^{a_k} + (dh^{b_k}/dh^{a_k})^T M(h^{b_k})``.

The synthesiser's values enter the compiled drivers as arguments (``traces['synth']``), never
as constants captured at trace time, so refitting ``M`` never recompiles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp

from etprop.algorithms.base import unflatten_out_seq
from etprop.input_data import as_args
from etprop.algorithms.etrace import D_RTRL
from etprop.algorithms.sequence import to_windows
from etprop.algorithms.vjp import online_custom_vjp, sum_terms
from etprop.errors import ArgumentError, NotSupportedError
from etprop.fncache import split as split_fn
from etprop.input_data import MultiStepData

__all__ = ["SyntheticGradient", "DNI", "train_synthetic_gradient"]

_SYNTH = "synth"  # the key under which the synthesiser's values travel with the traces


def _affine(w, b, slab, shape):
    """``slab @ w + b`` over the trailing ``shape`` axes of ``slab`` (leading batch axes kept)."""
    lead = slab.shape[:slab.ndim - len(shape)]
    flat = jnp.reshape(slab, lead + (-1,))
    return jnp.reshape(flat @ w.astype(flat.dtype) + b.astype(flat.dtype), slab.shape)


class SyntheticGradient(brainstate.nn.Module):
    """One affine synthesiser per hidden group: ``M_g(h) = h W_g + b_g`` on the group's
    flattened ``(*positions, states)`` slab, predicting the future cotangent ``dL/dh``.

    Args:
      group_shapes: ``{group index: (*positions, states)}``, as `DNI.group_signal_shapes`.
      hidden_width: braintrace's; the synthesiser is affine (braintrace's too), so it only warns.
      scale: standard deviation of ``W``'s initial draw; the default ``0.0`` makes ``M = 0``, so
        an untrained synthesiser leaves DNI exactly the truncated window rule.
      seed: seed of that draw.

    The parameters are `brainstate.ParamState` in the default float dtype, outside the model
    (no ETP operator, no trace); ``states_dict()`` keys them for an optimiser.
    """

    def __init__(self, group_shapes: dict, hidden_width: int | None = None, scale: float = 0.0, seed: int = 0):
        super().__init__()
        if hidden_width is not None:
            warnings.warn("etprop.SyntheticGradient is affine; hidden_width is ignored", stacklevel=2)
        self.group_shapes = _check_group_shapes(group_shapes)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise ArgumentError(f"SyntheticGradient: scale must be a float >= 0, got {scale!r}")
        dtype = brainstate.environ.dftype()
        keys = jax.random.split(jax.random.key(int(seed)), len(self.group_shapes))
        self.weights, self.biases = {}, {}
        for key, (gid, shape) in zip(keys, sorted(self.group_shapes.items())):
            n = math.prod(shape)
            self.weights[gid] = brainstate.ParamState(float(scale) * jax.random.normal(key, (n, n), dtype))
            self.biases[gid] = brainstate.ParamState(jnp.zeros((n,), dtype))

    def param_values(self) -> dict:
        """``{'w': {group: W}, 'b': {group: b}}``: the values `apply` takes."""
        return {"w": {g: st.value for g, st in self.weights.items()},
                "b": {g: st.value for g, st in self.biases.items()}}

    def states_dict(self) -> dict:
        """``{('synth_w', group): ParamState, ('synth_b', group): ParamState}`` for an optimiser."""
        out = {("synth_w", g): st for g, st in self.weights.items()}
        out.update({("synth_b", g): st for g, st in self.biases.items()})
        return out

    def apply(self, param_values: dict, group_hiddens: dict) -> dict:
        """``{group: M_g(h_g)}`` for ``group_hiddens = {group: (..., *positions, states)}``
        (leading batch axes allowed); the estimate has the hidden value's dtype."""
        out = {}
        for gid, h in group_hiddens.items():
            shape = self.group_shapes.get(gid)
            h = u.get_mantissa(h)
            if shape is None or tuple(h.shape[h.ndim - len(shape):]) != shape:
                raise ArgumentError(f"SyntheticGradient.apply: group {gid} has a value of shape {tuple(h.shape)}; "
                                    f"this synthesiser is for {self.group_shapes} (group -> (*positions, "
                                    f"states), after any batch axes)")
            out[gid] = _affine(param_values["w"][gid], param_values["b"][gid], h, shape).astype(h.dtype)
        return out


def _check_group_shapes(group_shapes) -> dict:
    ok = lambda g, s: (isinstance(g, int) and not isinstance(g, bool) and isinstance(s, (tuple, list)) and s
                       and all(isinstance(n, int) and n >= 1 for n in s))
    if not isinstance(group_shapes, dict) or not group_shapes or not all(ok(*kv) for kv in group_shapes.items()):
        raise ArgumentError(f"SyntheticGradient: group_shapes must map int group indices to non-empty tuples of "
                            f"positive ints (*positions, states), as learner.group_signal_shapes(); got "
                            f"{group_shapes!r}")
    return {g: tuple(s) for g, s in group_shapes.items()}


class DNI(D_RTRL):
    """DNI: D-RTRL in windows, plus a learned synthetic gradient of the future at each window exit
    for the untraced parameters (Jaderberg et al. 2017; see the module doc).

    Args:
      model: the brainstate model.
      synthesizer: a `SyntheticGradient` for this model's hidden groups; may be attached
        later with `attach_synthesizer` (after compiling,
        ``SyntheticGradient(learner.group_signal_shapes())``). Running a window without one
        raises rather than silently computing the truncated rule.

    Every driver works (``learner(MultiStepData(x))`` under `brainstate.transform.grad`, both
    ``etrace_grad`` conventions, ``step``, ``etrace_evolve``, ``sequence_fn``), always in windows
    (``window=1`` injects at every step; no closed-form chunks) whose length divides ``T``.
    ``sequence_fn``'s ``fn`` reads the synthesiser when called; to jit it yourself pass
    ``traces={**traces, 'synth': synth.param_values()}``. No ``train_online``.
    """

    name = "DNI"
    default_chunk = 0  # window=1 runs the window function (injection at every step)

    def __init__(self, model, synthesizer: SyntheticGradient | None = None):
        super().__init__(model)
        self.synthesizer = None
        if synthesizer is not None:
            self.attach_synthesizer(synthesizer)

    # -- the synthesiser ---------------------------------------------------------------------

    def compile_graph(self, *example_inputs, batch_size=None):
        super().compile_graph(*example_inputs, batch_size=batch_size)
        self._untraced = [i for i in range(len(self.graph.param_leaf_names)) if i not in self.graph.traced_leaves]
        if self.synthesizer is not None:
            self._check_synth(self.synthesizer)
        return self

    def group_signal_shapes(self) -> dict:
        """``{group index: (*positions, states)}``: the shapes a `SyntheticGradient` needs."""
        self._require_graph()
        return {grp.index: tuple(grp.shape) + (grp.num_states,) for grp in self.graph.groups}

    def attach_synthesizer(self, synthesizer: SyntheticGradient) -> None:
        """Attach (or replace) the synthesiser; checked against the groups once compiled."""
        if not isinstance(synthesizer, SyntheticGradient):
            raise ArgumentError(f"DNI: synthesizer must be an etprop.SyntheticGradient, got "
                                f"{type(synthesizer).__name__}")
        if self.graph is not None:
            self._check_synth(synthesizer)
        self.synthesizer = synthesizer

    def _check_synth(self, synth: SyntheticGradient) -> None:
        want = self.group_signal_shapes()
        got = {g: tuple(synth.weights[g].value.shape) + tuple(synth.biases[g].value.shape)
               for g in synth.group_shapes}
        need = {g: (math.prod(s),) * 3 for g, s in want.items()}
        if synth.group_shapes != want or got != need:
            raise ArgumentError(f"DNI: the synthesizer was built for hidden groups {synth.group_shapes} (group -> "
                                f"(*positions, states)), but this model's are {want}. Build it with "
                                f"etprop.SyntheticGradient(learner.group_signal_shapes())")

    def _synth_values(self) -> dict:
        if self.synthesizer is None:
            raise ArgumentError("DNI: no synthesizer is attached, so the window would silently run the plain "
                                "truncated rule. Pass DNI(model, synthesizer=...) or call learner."
                                "attach_synthesizer(etprop.SyntheticGradient(learner.group_signal_shapes()))")
        self._check_synth(self.synthesizer)
        return self.synthesizer.param_values()

    def _slabs(self, h_leaves) -> dict:
        """``{group: (..., *positions, states)}``: each group's states stacked on a last axis."""
        return {grp.index: jnp.stack([h_leaves[m] for m in grp.members], -1) for grp in self.graph.groups}

    def _estimate(self, values, h_leaves) -> list:
        """``M(h)`` split back into one detached cotangent per hidden leaf."""
        want = self.group_signal_shapes()
        est = [None] * len(h_leaves)
        for gid, slab in self._slabs(h_leaves).items():
            m = _affine(values["w"][gid], values["b"][gid], slab, want[gid])
            for k, leaf in enumerate(self.graph.groups[gid].members):
                est[leaf] = jax.lax.stop_gradient(m[..., k].astype(h_leaves[leaf].dtype))
        return est

    # -- the window ----------------------------------------------------------------------------

    def _exit_fn(self, h, p, o, a):
        """The window's outputs (time leading) and exit hidden state; no traces."""
        def body(carry, a_leaves):
            outs, hn, on, _ = self.graph.run(list(p) + list(carry[0]) + list(carry[1]) + list(a_leaves))
            return (list(hn), list(on)), outs

        def sample(h1, o1, a1):
            (h2, _), outs = jax.lax.scan(body, (list(h1), list(o1)), a1)
            return outs, h2

        if self.batch_size is None:
            return sample(h, o, a)
        return jax.vmap(sample, in_axes=(0, self.other_axes(), 1), out_axes=(1, 0))(h, o, a)

    def _add_history(self, grads, tr, delta, rec):
        """The traced parameters' history term ``delta . e^{a_k}``, as the base window adds it."""
        g, (shared, per) = self.graph, rec
        count = tr["count"][0] if self.batch_size is not None else tr["count"]
        for i, rel in enumerate(g.relations):
            ops = [s if p is None else p for s, p in zip(shared[rel.eqn_index], per[rel.eqn_index])]
            d = [delta[m] for m in g.groups[rel.group].members]
            hist = self.relation_history(i, tr["rel"][i], d, ops, count)
            grads[rel.leaf] = grads[rel.leaf] + hist.astype(grads[rel.leaf].dtype)
        return grads

    def _make_window(self):
        oax, batched = self.other_axes(), self.batch_size is not None

        def fwd_impl(p, h, o, tr_sv, a):
            tr, sv = tr_sv
            if batched:
                f = jax.vmap(lambda hh, oo, tt, aa: self._sample_window_fwd(p, hh, oo, tt, aa),
                             in_axes=(0, oax, 0, 1), out_axes=(1, 0, oax, 0, (None, 0)))
                outs, h2, o2, tr2, rec = f(h, o, tr, a)
            else:
                outs, h2, o2, tr2, rec = self._sample_window_fwd(p, h, o, tr, a)
            return outs, h2, o2, (tr2, sv), (rec, self._estimate(sv, h2))

        def window_bwd(res, cts):
            p, h, o, (tr, _), a, (rec, est) = res
            _, pull = jax.vjp(lambda hh, pl: self._exit_fn(hh, pl, o, a), list(h), self.backward_params(list(p)))
            delta, grads = pull((cts[0], [jnp.zeros_like(e) for e in est]))
            grads = list(grads)
            if self._untraced:  # pass 2: the future estimate, for the untraced parameters only
                zero = [c if c.dtype == jax.dtypes.float0 else jnp.zeros_like(c) for c in cts[0]]
                future = pull((zero, est))[1]
                for i in self._untraced:
                    grads[i] = grads[i] + future[i]
            return self._add_history(grads, tr, delta, rec)

        return online_custom_vjp(fwd_impl, window_bwd)

    # -- the synthesiser's values through every driver -------------------------------------------

    def run_window(self, params, hidden, others, traces, args_seq, *, mode: str = "window"):
        if mode != "window":
            raise NotSupportedError(f"DNI runs windows only (mode={mode!r})")
        given = _SYNTH in traces
        sv = traces[_SYNTH] if given else self._synth_values()
        traces = {k: v for k, v in traces.items() if k != _SYNTH}
        p_leaves, h_leaves, o_leaves = self._split(params, hidden, others)
        outs, h2, o2, (tr2, _) = self._window_fn(p_leaves, h_leaves, o_leaves, (traces, sv),
                                                 jax.tree.leaves(args_seq))
        hidden2, others2 = jax.tree.unflatten(jax.tree.structure((hidden, others)), list(h2) + list(o2))
        return unflatten_out_seq(self.graph, outs), hidden2, others2, ({**tr2, _SYNTH: sv} if given else tr2)

    def _compiled_scan(self, step_loss, window=None, return_out=False, mode="window", full_check=False):
        scan = super()._compiled_scan(step_loss, window=window, return_out=return_out, mode=mode,
                                      full_check=full_check)

        def run(params, hidden, others, traces, *rest):
            if _SYNTH not in traces:
                traces = {**traces, _SYNTH: self._synth_values()}
            res = scan(params, hidden, others, traces, *rest)
            return res[:4] + ({k: v for k, v in res[4].items() if k != _SYNTH},) + res[5:]

        return run

    def _run_sequence(self, args, ys, step_loss, mask, *, window, **kw):
        T = jax.tree.leaves(args)[0].shape[0]
        if isinstance(window, int) and 1 <= window < T and T % window:
            raise ArgumentError(f"DNI: the sequence length {T} is not a multiple of window={window}, so the last "
                                f"window would be {T % window} step(s) long; the synthesiser is fit to windows of "
                                f"one length. Trim the sequence to {T - T % window} steps or pick a window that "
                                f"divides {T}")
        return super()._run_sequence(args, ys, step_loss, mask, window=window, **kw)

    def train_online(self, *args, **kwargs):
        raise NotSupportedError("DNI.train_online: per-step parameter updates are not supported; take an "
                                "optimiser step per etrace_grad(..., window=k) call instead")

    def report(self) -> str:
        names = [n for n in self.graph.param_leaf_names if n in self.graph.truncated]
        return (super().report() + "\nDNI: a synthetic gradient M(h) at every window exit reaches the untraced "
                f"parameters ({', '.join(names) or 'none'}); traced ones keep their trace")

    # -- fitting the synthesiser (train_synthetic_gradient) --------------------------------------

    def _entry_target(self, p, h, o, a, sv, loss, k):
        """``d(loss of the window + M(h^exit) . h^exit) / dh^entry`` with ``M`` detached."""
        def objective(hh):
            outs, h_exit = self._exit_fn(hh, p, o, a)
            out = unflatten_out_seq(self.graph, outs)
            val = jnp.asarray(u.get_mantissa(loss(jax.tree.map(lambda v: v[0], out) if k == 1 else out)))
            if val.shape != ():
                raise ArgumentError(f"train_synthetic_gradient: loss_fn must return a scalar, got shape {val.shape}")
            est = self._estimate(sv, h_exit)
            return val + sum_terms([jnp.vdot(e, x) for e, x in zip(est, h_exit)])

        return jax.grad(objective)(list(h))

    def _fit_window(self, synth, win, loss, k, optimizer, lr):
        mf = self.graph.mf
        params, hidden, others = mf.values()
        p, h, o = self._split(dict(zip(mf.param_names, params)), hidden, others)
        target = self._entry_target(p, h, o, list(win), synth.param_values(), loss, k)
        self(MultiStepData(*win))  # advance the hidden states and traces through the window
        return _regress(synth, self._slabs(h), self._slabs(target), optimizer, lr)

    def _fit_epoch(self, loss_fn, k, optimizer):
        fkey, captured, rebuild = split_fn(loss_fn)
        key = ("dni_fit", fkey, k, id(self.synthesizer), id(optimizer))
        fn = self._jit_cache.get(key)
        if fn is None:
            synth = self.synthesizer

            def epoch(windows, lr, captured):
                loss = rebuild(captured)
                fit = lambda *w: self._fit_window(synth, w, loss, k, optimizer, lr)
                errs = brainstate.transform.for_loop(fit, *windows)
                final = self._slabs(jax.tree.leaves(self.graph.mf.values()[1]))  # h^T: nothing follows, target 0
                last = _regress(synth, final, jax.tree.map(jnp.zeros_like, final), optimizer, lr)
                return (jnp.sum(errs) + last) / (errs.shape[0] + 1)

            fn = self._jit_cache[key] = (brainstate.transform.jit(epoch), synth, optimizer)
        return lambda windows, lr: fn[0](windows, lr, captured)


def _regress(synth, slabs, targets, optimizer, lr):
    """One step on ``sum_g mean((M_g(h_g) - target_g)^2)``; returns the error before it."""
    def objective(values):
        pred = synth.apply(values, slabs)
        return sum_terms([jnp.mean((pred[g] - targets[g]) ** 2) for g in sorted(slabs)])

    err, grads = jax.value_and_grad(objective)(synth.param_values())
    flat = {("synth_w", g): grads["w"][g] for g in grads["w"]}
    flat.update({("synth_b", g): grads["b"][g] for g in grads["b"]})
    if optimizer is None:
        for key, st in synth.states_dict().items():
            st.value = (st.value - lr * flat[key]).astype(st.value.dtype)
    else:
        optimizer.update(flat)
    return err


def _sum_squares(out):
    return sum_terms([jnp.sum(jnp.square(u.get_mantissa(v))) for v in jax.tree.leaves(out)])


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ArgumentError(f"train_synthetic_gradient: {name} must be an int >= 1, got {v!r}")
    return v


def train_synthetic_gradient(learner: DNI, inputs, *, chunk_size: int = 1, loss_fn: Callable | None = None,
                             optimizer=None, lr: float = 1e-2, epochs: int = 1, reset: bool = True,
                             batch_size: int | None = None) -> list:
    """Fit ``learner``'s synthesiser (only it moves): per window, one step regressing
    ``M(h^{entry})`` on the detached target ``dL_window/dh^{entry} + (dh^{exit}/dh^{entry})^T
    M(h^{exit})``; at the end ``M(h^T)`` on 0. Returns each epoch's mean squared error.

    ``inputs``: time leading (an array, a tuple or `MultiStepData`), ``T`` a multiple of
    ``chunk_size``, the window the learner will be trained with; ``loss_fn(window outputs) ->
    scalar`` (one step's outputs for ``chunk_size=1``) the objective it will descend (default:
    sum of squares); ``optimizer`` a braintools optimiser registered on
    ``learner.synthesizer.states_dict()`` (default: SGD with step ``lr``); ``reset``:
    `learner.reset()` before each epoch; ``batch_size``: the learner's own (checked).
    """
    if not isinstance(learner, DNI):
        raise ArgumentError(f"train_synthetic_gradient needs an etprop.DNI learner, got {type(learner).__name__}")
    learner._require_graph()
    learner._synth_values()
    k, epochs = _positive_int("chunk_size", chunk_size), _positive_int("epochs", epochs)
    if batch_size is not None and batch_size != learner.batch_size:
        raise ArgumentError(f"train_synthetic_gradient: batch_size={batch_size!r}, but the learner is compiled for "
                            f"batch_size={learner.batch_size}; leave it out or recompile")
    if loss_fn is not None and not callable(loss_fn):
        raise ArgumentError(f"train_synthetic_gradient: loss_fn must be callable, got {loss_fn!r}")
    args = as_args(inputs, multi=True)
    learner._check_args(args, True)
    T = jax.tree.leaves(args)[0].shape[0]
    if T % k:
        raise ArgumentError(f"train_synthetic_gradient: the sequence length {T} is not a multiple of chunk_size={k}, "
                            f"so the last window would be {T % k} step(s) long and fit a shorter future than the "
                            f"learner will see. Trim the sequence to {T - T % k} steps or pick a chunk_size that "
                            f"divides {T}")
    epoch = learner._fit_epoch(loss_fn or _sum_squares, k, optimizer)
    windows = to_windows(args, T // k, k)
    history = []
    for _ in range(epochs):
        if reset:
            learner.reset()
        history.append(float(epoch(windows, jnp.asarray(lr, brainstate.environ.dftype()))))
    return history
