"""The sequence drivers of the trace learners: `etrace_grad` (both calling conventions),
`etrace_evolve`, `train_online` (an optimiser update at every step), `sequence_fn` and the
jitted scans behind them, and the finite check that names what went NaN (`check_finite`; the
flags are reduced on device inside the scans and read once per call: `etprop.algorithms.finite`).

A mixin of `OnlineAlgorithm`: the drivers use the learner's compiled graph, its window function
(`run_window`) and its state handling; they scan windows or closed-form chunks over a sequence
and accumulate the online gradient. Compiled scans are cached per learner (`etprop.fncache`).
"""

from __future__ import annotations

from collections.abc import Callable

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms import finite
from etprop.algorithms import step_fn_fast as fast_path
from etprop.algorithms.online import OnlineUpdates
from etprop.algorithms.sequence import (LOSS_OUTPUTS, REDUCTIONS, check_chunk_size, check_mask, check_step_loss,
                                        check_targets, finish_step_fn_grad, sequence_length, step_fn_evolve,
                                        step_fn_grad)
from etprop.errors import ArgumentError, NumericalError
from etprop.fncache import split as split_fn
from etprop.input_data import as_args

__all__ = ["SequenceDrivers", "as_args"]


def _mantissa(x):
    return u.get_mantissa(x)


class SequenceDrivers(OnlineUpdates):
    """`etrace_grad`, `etrace_evolve`, `train_online`, `sequence_fn` (see `OnlineAlgorithm`)."""

    #: check inputs, parameters, hidden states, traces, outputs, losses and gradients for NaN/inf
    #: (`etprop.algorithms.finite`): the drivers raise `NumericalError` naming the first bad one and
    #: its step; ``learner(x)`` inside the user's jit/grad/vmap makes JAX raise it when the result
    #: is materialised. ``etprop.compile(..., check_finite=False)`` or ``learner.check_finite =
    #: False`` turns it off (nothing is traced; retrace your own jitted functions after changing it).
    check_finite = True
    #: how the last ``etrace_grad(..., step_fn=...)`` ran: ``'fast: ...'`` (etprop's driver with
    #: closed-form chunks) or ``'per-step: <why not>'`` (`etprop.algorithms.step_fn_fast`)
    step_fn_path = None

    def etrace_grad(self, *sequences, step_fn: Callable | None = None, mask=None, chunk_size: int | None = None,
                    weights=None, reduction: str | None = None, loss_output: str = "per_step",
                    has_aux: bool = False, return_value: bool = False, step_loss: Callable | None = None,
                    window: int = 1, closed_form_chunk: int | None = None, return_losses: bool = False):
        """Scan a sequence, advancing traces, and accumulate online gradients.

        Two calling conventions (PORTING.md tabulates their keywords, defaults and returns):

        * etprop's, ``etrace_grad(xs, ys, step_loss)``: etprop runs the model; fastest
          (closed-form chunks). Returns ``(grads, loss)`` (``+ losses (T,)`` with
          ``return_losses``), ``loss = sum_t mask_t mean_b step_loss`` (``reduction='sum'``, the
          default, or ``'mean'`` over the mask weight) and ``grads`` its online gradient
          keyed by dotted parameter name.
        * braintrace's, ``etrace_grad(*sequences, step_fn=f)``: ``f(*slices)`` runs the model
          by calling the learner once and returns the step's loss; every keyword keeps
          braintrace's meaning (`etprop.algorithms.sequence`): ``reduction='mean'``,
          ``chunk_size`` windows, ``weights``, ``loss_output``, ``has_aux``, ``return_value``;
          gradients keyed as ``model.states(brainstate.ParamState)`` keys them.

        Args (etprop's form):
          xs: inputs with time leading (an array, a tuple, or `MultiStepData`).
          ys: targets with time leading (any pytree), passed to ``step_loss`` per step.
          step_loss: ``step_loss(out, target) -> scalar`` for one sample.
          mask: optional ``(T,)`` weights of each step's loss.
          window: steps per window: exact reverse mode inside a window, traces across
            windows. ``1`` is the per-step online gradient; ``T`` is BPTT.
          chunk_size: braintrace's name for ``window`` (exact reverse mode over windows of
            that many steps).
          closed_form_chunk: with ``window=1``, compute the per-step gradients this many
            steps at a time in closed form (same result, matmul speed; memory grows with the
            chunk). Default: 16 (chunk sweep in benchmarks/RESULTS.md).
        """
        self._require_graph()
        if step_fn is not None:
            from_etprop = {"window": window != 1, "closed_form_chunk": closed_form_chunk is not None,
                           "return_losses": return_losses, "step_loss": step_loss is not None}
            return self._etrace_grad_step_fn(sequences, step_fn, mask, chunk_size, weights, reduction, loss_output,
                                             has_aux, return_value, [k for k, v in from_etprop.items() if v])
        from_braintrace = {"weights": weights is not None, "has_aux": has_aux, "return_value": return_value,
                           "loss_output": loss_output != "per_step"}
        if any(from_braintrace.values()):
            bad = [k for k, v in from_braintrace.items() if v]
            raise ArgumentError(f"{bad} belong to braintrace's convention etrace_grad(*sequences, step_fn=f); "
                                f"etprop's etrace_grad(xs, ys, step_loss) returns (grads, loss) "
                                f"(return_losses=True adds the per-step losses)")
        if len(sequences) > 3 or (step_loss is not None and len(sequences) > 2):
            raise ArgumentError(f"etrace_grad(xs, ys, step_loss) takes at most three positional arguments, got "
                                f"{len(sequences)}; for braintrace's convention pass step_fn=")
        xs, ys, loss_pos = (tuple(sequences) + (None, None, None))[:3]
        step_loss = step_loss if step_loss is not None else loss_pos
        if xs is None:
            raise ArgumentError("etrace_grad needs the inputs: etrace_grad(xs, ys, step_loss) or "
                                "etrace_grad(*sequences, step_fn=f)")
        if chunk_size is not None:
            if window != 1:
                raise ArgumentError("pass either window= or chunk_size= (braintrace's name for it), not both")
            window = check_chunk_size(chunk_size) or 1
        reduction = "sum" if reduction is None else reduction
        if reduction not in REDUCTIONS:
            raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        check_step_loss(step_loss, "etrace_grad(xs, ys, step_loss)")
        mask = None if mask is None else check_mask(mask, jax.tree.leaves(args)[0].shape[0])
        grads, losses = self._run_sequence(args, ys, step_loss, mask, window=window, chunk_size=closed_form_chunk,
                                           where="etrace_grad")
        if reduction == "mean":
            scale = 1.0 / jnp.maximum(jnp.sum(jnp.ones_like(losses) if mask is None else jnp.asarray(mask)), 1.0)
            grads = jax.tree.map(lambda g: g * scale, grads)
            losses = losses * scale
        total = jnp.sum(losses)
        return (grads, total, losses) if return_losses else (grads, total)

    def _etrace_grad_step_fn(self, sequences, step_fn, mask, chunk_size, weights, reduction, loss_output, has_aux,
                             return_value, etprop_only: list):
        """`etrace_grad` in braintrace's convention: the fast path where it applies, else the
        per-step driver (`etprop.algorithms.sequence`)."""
        if etprop_only:
            raise ArgumentError(f"etrace_grad(..., step_fn=...) is braintrace's convention; {etprop_only} belong to "
                                f"etprop's etrace_grad(xs, ys, step_loss): use chunk_size= for windows and "
                                f"return_value=True for the losses")
        reduction = "mean" if reduction is None else reduction
        fast = self._step_fn_fast(sequences, step_fn, mask, chunk_size, weights, reduction, loss_output,
                                  has_aux, return_value)
        if fast is not None:
            return fast
        sequences = self.put_inputs(tuple(sequences), 1)
        return step_fn_grad(self.model, self._jit_cache, self.check_finite, sequences, step_fn, mask=mask,
                            chunk_size=chunk_size, weights=weights, reduction=reduction, loss_output=loss_output,
                            has_aux=has_aux, return_value=return_value)

    def etrace_evolve(self, *sequences, step_fn: Callable | None = None, chunk_size: int | None = None,
                      return_outputs: bool = False):
        """Run sequences without a loss (warm-up): hidden states and traces advance exactly as in
        `etrace_grad`. braintrace's convention: ``step_fn=None`` calls the learner with the
        slices (``chunk_size`` windows allowed); returns None, or with ``return_outputs`` the
        stacked outputs (time leading; ``(T // chunk_size, chunk_size, ...)`` in windows)."""
        self._require_graph()
        return step_fn_evolve(self._evolve, self._jit_cache, self.check_finite, sequences, step_fn,
                              chunk_size=chunk_size, return_outputs=return_outputs)

    def _evolve(self, xs):
        """Outputs of the model over ``xs`` (time leading), traces and states advanced."""
        args = as_args(xs, multi=True)
        self._check_args(args, True)
        _, _, out = self._run_sequence(args, None, None, None, window=1, return_out=True, where="etrace_evolve")
        return out

    default_chunk = 16
    #: why per-step mode is the default although closed-form chunks exist (set at compile time)
    per_step_reason: str | None = None

    def _sequence_mode(self, window: int, chunk_size: int | None) -> tuple[str, int]:
        """``('chunk', K)``: per-step gradients ``K`` steps at a time in closed form (the default of
        learners that have it, unless `per_step_reason`; an explicit ``chunk_size`` always), or
        ``('window', window)``: exact reverse mode over windows (``window=1``: per step)."""
        if chunk_size and self._readout is not None:
            raise ArgumentError("closed_form_chunk computes per-step gradients with the pre-step learning signal; "
                                "a learner compiled with learning_signal='post' runs per step (leave it None)")
        if self._readout is not None and window is not None and window > 1:
            raise ArgumentError(f"window={window}: a learner compiled with learning_signal='post' reads the signal "
                                f"after each single step; windows take the pre-step signal (compile with "
                                f"learning_signal='pre' for windows, or leave window=None)")
        if window == 1 and self.default_chunk and (chunk_size or not self.per_step_reason):
            return "chunk", chunk_size or self.default_chunk
        return "window", window

    def sequence_fn(self, step_loss: Callable | None, *, window: int | None = None,
                    closed_form_chunk: int | None = None, return_out: bool = False) -> Callable:
        """The pure, jitted computation behind `etrace_grad`, for users who carry state themselves.

        Returns ``fn(params, hidden, others, traces, xs, ys, mask)`` with ``params`` a
        ``{name: array}`` dict (as `params`), ``hidden``/``others`` the model's state values
        (``self.graph.mf.values()[1:]``), ``traces`` the eligibility-trace pytree
        (``self.etrace.value``), ``xs`` the inputs with time leading and ``mask`` ``(T,)``.
        ``fn`` returns ``(grads, losses (T,), hidden', others', traces'[, outputs])``; it
        reads and writes no state, so it composes with ``jax.jit``, optimiser updates and
        checkpointing. ``window=None`` is the algorithm's default (per-step online
        gradients; the whole sequence for BPTT). It makes no finite check: read the results.
        """
        self._require_graph()
        if window is None:
            window = self.default_window
        mode, window = self._sequence_mode(window, closed_form_chunk)
        scan = self._compiled_scan(step_loss, window=window, return_out=return_out, mode=mode)

        n_res = 6 if return_out else 5  # a trailing finite-check summary is dropped (and DCE'd under jit)

        def fn(params, hidden, others, traces, xs, ys, mask):
            args = as_args(xs, multi=True)
            self._check_args(args, True)  # static shapes: also under the caller's jit
            T = jax.tree.leaves(args)[0].shape[0]
            check_targets(ys, T)
            mask = check_mask(mask, T)
            res = scan(params, hidden, others, traces, args, ys, mask, None)
            return (self._grads_to_dict(res[0], params),) + tuple(res[1:n_res])

        return fn

    def _run_sequence(self, args, ys, step_loss, mask, *, window, chunk_size=None, return_out=False,
                      where: str = "etrace_grad", modulator=None):
        T = jax.tree.leaves(args)[0].shape[0]
        for path, leaf in jax.tree_util.tree_flatten_with_path(ys)[0]:
            if np.shape(leaf)[:1] != (T,):
                raise ArgumentError(f"the targets ys{jax.tree_util.keystr(path)} have shape {np.shape(leaf)}, but "
                                    f"the inputs have {T} steps: give every target leaf a leading time axis of "
                                    f"length {T}")
        if not isinstance(window, int) or window < 1:
            raise ArgumentError(f"window must be a positive int, got {window!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ArgumentError(f"closed_form_chunk must be a positive int, got {chunk_size!r}")
        if chunk_size is not None and chunk_size > 1 and window > 1:
            raise ArgumentError("closed_form_chunk applies to per-step gradients (window=1); a window is already "
                                "computed by exact reverse mode")
        mode, window = self._sequence_mode(window, chunk_size)
        window = min(window, T)
        mask = jnp.ones((T,)) if mask is None else jnp.asarray(mask)
        if mask.shape != (T,):
            raise ArgumentError(f"mask must have shape ({T},), got {mask.shape}")
        mf = self.graph.mf
        params, hidden, others = mf.values()
        params = dict(zip(mf.param_names, params))
        check = self.check_finite
        fn = self._compiled_scan(step_loss, window=window, return_out=return_out, mode=mode)
        args, ys = self.put_inputs(args, 1), self.put_inputs(ys, 1)
        start = (params, hidden, others, self.etrace.value, args, ys, mask, modulator)
        res = fn(*start)
        acc, losses, hidden, others, traces = res[:5]
        mf.write(hidden, others)
        self.etrace.value = traces
        if check:
            self._raise_non_finite(where, res[-1], start, step_loss, window, mode, T)
        grads = self._grads_to_dict(acc, params)
        if return_out:
            return grads, losses, res[5]
        return grads, losses

    def _scan_items(self, n_args: int, traces) -> list:
        """The items of a driver's finite-check row (`_scan_row`), in the order they are named."""
        return ([("input", f"input {i}") for i in range(n_args)] + finite.state_items(self, traces)
                + [("output", ""), ("loss", "")] + [("grad", n) for n in self.graph.param_leaf_names])

    def _scan_row(self, args, p_flags, hidden, traces, out, losses, grads, check_traces: bool = True):
        """One window's finite-check row (`_scan_items`); ``check_traces=False`` leaves the traces'
        columns False (per-step rows: see `_compiled_scan`)."""
        parts = [t for _, t in finite.trace_parts(self, traces)]
        tr_flags = finite.flags(parts) if check_traces else jnp.zeros((len(parts),), bool)
        return jnp.concatenate([finite.flags(list(args)), p_flags, finite.flags(list(hidden)), tr_flags,
                                finite.flags([out, losses] + list(grads))])

    def _light_check(self, window: int) -> bool:
        """Whether a checked scan over windows of ``window`` steps checks the traces only at its end:
        per step (a check of the traces at every step would cost one more pass over them per step,
        1.24x a D-RTRL step); a bad call is then run again with every check to name the first bad item."""
        return bool(self.check_finite) and window == 1

    def _raise_non_finite(self, where, summary, start, step_loss, window, mode, T):
        """Raise `NumericalError` if ``summary`` (one row per window) has a bad item; the step
        of a window longer than one step is found by running the same sequence again step by
        step (the forward and the per-step gradients are the same; only a window's
        reverse-mode gradient is not, so it keeps the window's steps)."""
        items = self._scan_items(len(start[4]), start[3])
        win = min(window or T, T)
        if finite.traced(summary):  # inside the user's jit: JAX raises it when the result is read
            return finite.raise_host(where, items, summary, win)
        any_bad, first, row = finite.to_host(summary)
        if not bool(any_bad):
            return
        offset = int(start[2][-1]) if where == "step" else 0  # step(): the model's clock
        first_step = int(first) * win
        size = min(win, T - first_step)
        light = self._light_check(win)  # the traces were checked at the end only
        if light or size > 1:  # again step by step, with every check
            res = self._compiled_scan(step_loss, window=1, return_out=False, mode=mode, full_check=True)(*start)
            any1, step1, row1 = finite.to_host(res[-1])
            kind = items[int(np.argmax(row1))][0] if bool(any1) else None
            inside = bool(any1) and first_step <= int(step1) < first_step + size
            if (light and bool(any1)) or (inside and (mode == "chunk" or kind != "grad")):
                first_step, size, row = int(step1), 1, row1
        raise NumericalError(finite.message(where, items, row, finite.step_text(offset + first_step, size)))

    default_window = 1

    def _check_finite(self, where: str, args, grads, losses) -> None:
        """Raise `NumericalError` naming the first non-finite thing, never return NaN silently
        (from the final values: the learners with drivers of their own use it)."""
        if not self.check_finite:
            return
        leaves = jax.tree.leaves((grads, losses, args, self.params()))
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return  # inside a user's transformation: nothing concrete to check
        if bool(_all_finite(leaves)):  # one fused reduction, one host sync
            return
        bad = lambda tree: not all(bool(jnp.all(jnp.isfinite(_mantissa(x)))) for x in jax.tree.leaves(tree)
                                   if jnp.issubdtype(jnp.result_type(_mantissa(x)), jnp.inexact))
        mf = self.graph.mf
        if bad(args):
            raise NumericalError(f"{where}: the inputs contain NaN or inf")
        for name, v in self.params().items():
            if bad(v):
                raise NumericalError(f"{where}: parameter '{name}' is NaN or inf (a diverged update? lower the "
                                     f"learning rate or clip gradients)")
        for st in mf.hidden_states:
            if bad(st.value):
                raise NumericalError(f"{where}: hidden state '{mf.name(st)}' became NaN or inf; the dynamics "
                                     f"diverged (check time constants, input scale and weights)")
        if bad(losses):
            raise NumericalError(f"{where}: the loss is NaN or inf while inputs, parameters and hidden states "
                                 f"are finite; check the loss function (log of 0? division by 0?)")
        for name, g in grads.items():
            if bad(g):
                raise NumericalError(f"{where}: the gradient of '{name}' is NaN or inf while the forward pass is "
                                     f"finite; check surrogate gradients and weight transforms")

    def _step_fn_fast(self, sequences, step_fn, mask, chunk_size, weights, reduction, loss_output, has_aux,
                      return_value):
        """braintrace's ``etrace_grad(*sequences, step_fn=f)`` through etprop's own driver (closed-form
        chunks), when `etprop.algorithms.step_fn_fast.probe` finds ``f`` of the form ``loss(learner(x),
        slices)``; None (and `step_fn_path` says why) when it is not, or for windows or aux outputs."""
        if not callable(step_fn) or reduction not in REDUCTIONS or loss_output not in LOSS_OUTPUTS:
            return None  # the per-step path names the bad argument
        if check_chunk_size(chunk_size) is not None or has_aux:
            self.step_fn_path = "per-step: chunk_size windows or has_aux keep braintrace's own loop"
            return None
        T = sequence_length(sequences)
        mask = check_mask(mask, T)
        weights = self.model.states(brainstate.ParamState) if weights is None else weights
        fkey, captured, rebuild = split_fn(step_fn)
        # what the probe finds depends on the step function's code and static values only
        probe_key = ("step_fn_probe", fkey, tuple(id(st) for st in weights.values()))
        why = self._jit_cache.get(probe_key, False)
        if why is False:
            why = self._jit_cache[probe_key] = fast_path.probe(self, sequences, step_fn, weights)
        if why is not None:
            self.step_fn_path = f"per-step: {why}"
            return None
        self.step_fn_path = "fast: etprop's driver with closed-form chunks"
        key = ("step_fn_inputs", fkey)
        inputs = self._jit_cache.get(key)
        if inputs is None:
            def inputs_of(seqs, arrays):
                f = rebuild(arrays)
                return jax.vmap(lambda *s: as_args(fast_path.learner_inputs(self, f, s), multi=False))(*seqs)

            inputs = self._jit_cache[key] = jax.jit(inputs_of)
        args = inputs(tuple(sequences), captured)
        self._check_args(args, True)
        mf = self.graph.mf
        _, hidden0, others0 = mf.values()
        traces0 = self.etrace.value
        try:
            grads, losses = self._run_sequence(args, tuple(sequences), fast_path.step_loss_of(self, step_fn), mask,
                                               window=1, where="etrace_grad")
        except NumericalError:
            # something is NaN/inf: back to where the call started, and let the per-step path name it in
            # this convention's terms (which sequence, which step)
            mf.write(hidden0, others0)
            self.etrace.value = traces0
            return None
        names = {id(st): n for n, st in self.param_states().items()}
        total = {k: grads[names[id(st)]] for k, st in weights.items()}
        return finish_step_fn_grad(total, losses, None, mask, reduction, loss_output, has_aux, return_value)

    def _window_losses(self, step_loss, out, ys, mask):
        """``mask_t * mean_b step_loss(out_tb, y_tb)`` for each step of a window."""
        if step_loss is None:
            return jnp.zeros(mask.shape)
        batched = self.batch_size is not None
        per = jax.vmap(jax.vmap(step_loss)) if batched else jax.vmap(step_loss)
        vals = _mantissa(per(out, ys))
        if jnp.shape(vals) != jnp.shape(mask) + ((self.batch_size,) if batched else ()):  # static: at trace time
            raise ArgumentError(f"step_loss(out, target) must return a scalar for one sample at one step, got shape "
                                f"{jnp.shape(vals)[1 + batched:]}; reduce over the features inside it (e.g. "
                                f"jnp.sum((out - y) ** 2))")
        return mask * (jnp.mean(vals, axis=1) if batched else vals)

    def window_grads(self, p_leaves, p_tree, hidden, others, traces, a, y, mask, modulator, step_loss, mode):
        """One window of the drivers: ``((losses, out, hidden', others', traces'), grad leaves)``.

        The online gradient of ``sum_t mask_t mean_b step_loss`` over the window (``a``, ``y``,
        ``mask`` time leading), by reverse mode through the window function (`run_window`).
        Learners whose gradient is not a loss's (three-factor) override it; ``modulator`` (time
        leading, or None) is their per-step input.
        """
        names = self.graph.mf.param_names
        batch_level = isinstance(step_loss, fast_path.BatchLevel)

        def loss_of(pl):
            pd = dict(zip(names, jax.tree.unflatten(p_tree, pl)))
            out, h2, o2, tr2 = self.run_window(pd, hidden, others, traces, a, mode=mode)
            if batch_level:  # braintrace's convention reports the raw losses, the mask weighs the objective
                raw = _mantissa(jax.vmap(step_loss.fn)(out, y))
                return jnp.sum(mask * raw), (raw, out, h2, o2, tr2)
            ls = self._window_losses(step_loss, out, y, mask)
            return jnp.sum(ls), (ls, out, h2, o2, tr2)

        (_, aux), g = jax.value_and_grad(loss_of, has_aux=True)(list(p_leaves))
        return aux, g

    def _compiled_scan(self, step_loss, window: int | None = None, return_out: bool = False,
                       mode: str = "window", full_check: bool = False):
        """Jitted ``fn(params, hidden, others, traces, args, ys, mask, modulator)`` over ``T = n * window``
        steps (``window=None``: the algorithm's default, None meaning the whole sequence),
        returning ``(grad leaves, per-step losses, hidden', others', traces'[, outs])``, and with
        `check_finite` a last ``(any bad, first bad window, its row)`` (`_scan_items` names it). Per
        step (`_light_check`) the rows check the traces at the end of the sequence only, unless
        ``full_check`` (the rerun that names a bad call's first bad item)."""
        if window is None:
            window = self.default_window
        # keyed by what step_loss computes (its code and static closure values); the arrays it
        # captures are passed in, so a new closure of the same code reuses the compiled scan
        batch_level = isinstance(step_loss, fast_path.BatchLevel)
        loss_fn = step_loss.fn if batch_level else step_loss
        lkey, captured, rebuild = split_fn(loss_fn) if loss_fn is not None else (None, [], lambda a: None)
        if batch_level:
            rebuild = (lambda r: lambda a: fast_path.BatchLevel(r(a)))(rebuild)
        check = bool(self.check_finite)
        key = (lkey, batch_level, window, return_out, mode, check, full_check)
        fn = self._jit_cache.get(key)
        if fn is not None:
            return _with_arrays(fn, captured)

        def run(params, hidden, others, traces, args, ys, mask, mods, captured):
            loss = rebuild(captured)
            T = mask.shape[0]
            win = T if window is None else min(window, T)
            n, rest = divmod(T, win)
            light = self._light_check(win) and not full_check
            p_leaves, p_tree = jax.tree.flatten(self.param_tuple(params))
            p_flags = finite.flags(p_leaves) if check else None  # constant over the sequence
            # windows are sliced inside the loop, so the sequence is never copied
            take = lambda tree, start, size: jax.tree.map(
                lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, 0), tree)

            def one(carry, start, size):
                h, o, tr, acc = carry
                a, y, m, md = (take(v, start, size) for v in (args, ys, mask, mods))
                (ls, out, h2, o2, tr2), g = self.window_grads(p_leaves, p_tree, h, o, tr, a, y, m, md, loss, mode)
                h2, o2, tr2 = self.constrain_carry(h2, o2, tr2)  # placements hold across windows
                acc = [x + gi for x, gi in zip(acc, g)]
                # the running sum turns non-finite at the first non-finite gradient; checking it lets
                # XLA fuse the check into the add
                row = self._scan_row(a, p_flags, h2, tr2, out, ls, acc, not light) if check else None
                return (h2, o2, tr2, acc), (ls, out if return_out else None, row)

            carry = (hidden, others, traces, [jnp.zeros_like(l) for l in p_leaves])
            carry, (losses, outs, rows) = jax.lax.scan(lambda c, i: one(c, i * win, win), carry, jnp.arange(n))
            merge = lambda tree: jax.tree.map(lambda a: a.reshape((n * win,) + a.shape[2:]), tree)
            losses, outs = merge(losses), merge(outs)
            if rest:
                carry, (l2, o2, r2) = one(carry, n * win, rest)
                losses = jnp.concatenate([losses, l2])
                outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, o2)
                rows = None if r2 is None else jnp.concatenate([rows, r2[None]])
            h, o, tr, acc = carry
            if check and light:  # the end state's traces, once, in the last row
                lo = len(args) + len(p_leaves) + len(h)
                parts = finite.flags([t for _, t in finite.trace_parts(self, tr)])
                rows = rows.at[-1, lo:lo + parts.shape[0]].set(rows[-1, lo:lo + parts.shape[0]] | parts)
            res = (acc, losses, h, o, tr) + ((outs,) if return_out else ())
            return res + (finite.summarise(rows),) if check else res

        fn = self._jit_cache[key] = jax.jit(run)
        return _with_arrays(fn, captured)


def _with_arrays(fn, captured):
    """``fn(params, hidden, others, traces, args, ys, mask, modulator=None)`` with the loss's
    captured arrays passed in."""
    def call(params, hidden, others, traces, args, ys, mask, modulator=None):
        return fn(params, hidden, others, traces, args, ys, mask, modulator, captured)
    return call


@jax.jit
def _all_finite(leaves):
    ok = jnp.bool_(True)
    for x in leaves:
        x = _mantissa(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(x))
    return ok
