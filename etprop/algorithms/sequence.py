r"""braintrace's sequence drivers: ``etrace_grad(*sequences, step_fn=...)`` and ``etrace_evolve``.

In this calling convention the user's step function runs the model itself, by calling the
learner once per invocation, and returns that step's loss. Every keyword keeps braintrace's
meaning, default and return shape (PORTING.md tabulates both conventions):

=================  ===========================================================================
keyword            meaning
=================  ===========================================================================
``*sequences``     pytrees with one leading length ``T``, sliced in lockstep and passed to
                   ``step_fn`` positionally (no distinguished targets)
``mask``           ``(T,)`` weights of the step losses (the model runs at every step)
``chunk_size``     ``None``/``1``: step by step, ``step_fn`` gets ``seq[t]`` and returns a
                   scalar; ``k >= 2``: windows, ``step_fn`` gets ``seq[t:t+k]`` (wrap model
                   inputs in `MultiStepData`: exact reverse mode inside the window) and
                   returns a ``(k,)`` vector; ``T % k == 0``
``weights``        the ``{key: ParamState}`` to differentiate; default
                   ``model.states(brainstate.ParamState)``, so gradients are keyed by state
                   path as braintools optimisers and optax expect
``reduction``      ``'mean'`` (default): divide by ``max(sum_t mask_t, 1)``; ``'sum'``
``loss_output``    with ``return_value``: ``'per_step'`` raw losses ``(T,)``, ``'masked'``
                   ``mask * losses``, ``'scalar'`` the reduced objective
``has_aux``        ``step_fn`` returns ``(loss, aux)``; aux comes back stacked over steps
``return_value``   also return the losses
=================  ===========================================================================

Returns, as `brainstate.transform.grad`: ``grads``, ``(grads, value)``, ``(grads, aux)`` or
``(grads, value, aux)``. The objective is ``sum_t mask_t loss_t``, its gradient the learner's
online one; ``reduction`` divides once at the end.

The compiled driver is cached by what ``step_fn`` computes (`etprop.fncache`), so a fresh
``lambda`` per call does not recompile.

Finite checks (``check``, the learner's `check_finite`): at every step the driver flags NaN/inf
in each sequence's slice, in what the learner called inside ``step_fn`` computed (it adds its
flags to the driver's `etprop.algorithms.finite.collecting` instead of reporting them), in the
loss and in each gradient; the scan keeps the first bad step on device and the driver reads it
once per call, raising `etprop.NumericalError` naming what and the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

from etprop.algorithms import finite
from etprop.errors import ArgumentError
from etprop.fncache import split as split_fn
from etprop.input_data import MultiStepData, SingleStepData

__all__ = ["REDUCTIONS", "LOSS_OUTPUTS", "check_chunk_size", "check_mask", "check_step_loss", "check_targets",
           "sequence_length", "to_windows", "step_fn_grad", "finish_step_fn_grad", "step_fn_evolve"]

REDUCTIONS = ("mean", "sum")
LOSS_OUTPUTS = ("per_step", "masked", "scalar")


def check_chunk_size(chunk_size) -> int | None:
    """``None`` (step by step) or the window length ``k >= 2``; ``1`` is step by step."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise ArgumentError(f"chunk_size must be None or a Python int (it fixes the window length when the "
                            f"driver is compiled), got {chunk_size!r}")
    if chunk_size < 1:
        raise ArgumentError(f"chunk_size must be >= 1, got {chunk_size}")
    return None if chunk_size == 1 else int(chunk_size)


def sequence_length(sequences: tuple) -> int:
    """The common leading length ``T`` of every leaf of ``sequences`` (checked)."""
    if not sequences:
        raise ArgumentError("etrace_grad(*sequences, step_fn=...) needs at least one sequence (time leading)")
    for i, s in enumerate(sequences):
        if isinstance(s, (SingleStepData, MultiStepData)):
            raise ArgumentError(f"sequence {i} is a {type(s).__name__}; pass the arrays themselves and wrap the "
                                f"model's inputs inside step_fn (e.g. learner(MultiStepData(x)))")
    lengths = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(sequences)[0]:
        shape = np.shape(leaf)
        lengths.setdefault(shape[0] if shape else None, []).append(jax.tree_util.keystr(path))
    if None in lengths:
        raise ArgumentError(f"every sequence leaf needs a leading time axis; {lengths[None][0]} is a scalar")
    if len(lengths) != 1:
        desc = "; ".join(f"{n} at {paths[0]}" for n, paths in sorted(lengths.items()))
        raise ArgumentError(f"all sequences need one leading time length, got {desc}")
    T = next(iter(lengths))
    if T == 0:
        raise ArgumentError("the sequences have length 0: there is nothing to drive")
    return T


def to_windows(tree, n: int, k: int):
    """Leading ``T = n k`` of every leaf reshaped to ``(n, k)``."""
    return jax.tree.map(lambda a: jnp.reshape(a, (n, k) + tuple(np.shape(a)[1:])), tree)


def check_mask(mask, T: int) -> jax.Array:
    """``mask`` as a ``(T,)`` array of real weights (ones if None); `ArgumentError` naming its shape or dtype."""
    if mask is None:
        return jnp.ones((T,))
    try:
        dtype = jnp.result_type(u.get_mantissa(mask))
    except TypeError:
        dtype = None
        try:
            got = f"dtype {np.asarray(mask).dtype}"
        except Exception:  # noqa: BLE001 -- anything numpy cannot read is not a mask either
            got = f"a {type(mask).__name__}"
    if isinstance(mask, u.Quantity) and not mask.is_unitless:
        raise ArgumentError(f"mask must be unitless (one weight per step), got a quantity in {mask.unit}")
    if dtype is None or not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
                             or dtype == jnp.bool_):
        got = f"dtype {dtype}" if dtype is not None else got
        raise ArgumentError(f"mask must be a real (float, int or bool) array of shape ({T},), one weight per step; "
                            f"got {got}")
    mask = jnp.asarray(u.get_mantissa(mask))
    if mask.shape != (T,):
        raise ArgumentError(f"mask must have shape ({T},) (one weight per step), got {mask.shape}")
    return mask


def check_step_loss(step_loss, where: str, required: bool = False) -> None:
    """``step_loss`` is callable (or None where not ``required``); `ArgumentError` naming it."""
    if step_loss is None and not required:
        return
    if not callable(step_loss):
        raise ArgumentError(f"{where}: 'step_loss' must be a function step_loss(out, target) -> scalar for one "
                            f"sample, got {step_loss!r}")


def check_targets(ys, T: int) -> None:
    """Every leaf of the targets ``ys`` leads with the ``T`` steps of the inputs (`ArgumentError` naming it)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(ys)[0]:
        if np.shape(leaf)[:1] != (T,):
            raise ArgumentError(f"the targets ys{jax.tree_util.keystr(path)} have shape {np.shape(leaf)}, but the "
                                f"inputs have {T} steps: give every target leaf a leading time axis of length {T}")


def _weights_key(weights) -> tuple:
    try:
        return tuple((k, id(st)) for k, st in weights.items())
    except AttributeError:
        raise ArgumentError(f"weights must be a dict of brainstate.ParamState (e.g. "
                            f"model.states(brainstate.ParamState)), got {type(weights).__name__}") from None


def step_fn_grad(model, cache, check: bool, sequences: tuple, step_fn: Callable, *, mask=None, chunk_size=None,
                 weights=None, reduction: str = "mean", loss_output: str = "per_step", has_aux: bool = False,
                 return_value: bool = False):
    """braintrace's ``etrace_grad``; see the module docstring. ``cache`` holds the compiled
    drivers (keyed here); ``check``: report NaN/inf by name and step (`NumericalError`)."""
    if not callable(step_fn):
        raise ArgumentError(f"step_fn must be callable, got {step_fn!r}")
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if loss_output not in LOSS_OUTPUTS:
        raise ArgumentError(f"loss_output must be one of {LOSS_OUTPUTS}, got {loss_output!r}")
    k = check_chunk_size(chunk_size)
    T = sequence_length(sequences)
    if k is not None and T % k:
        raise ArgumentError(f"the sequence length {T} is not a multiple of chunk_size {k}; trim the sequence to "
                            f"{T - T % k} steps or pick a chunk_size that divides {T}")
    mask = check_mask(mask, T)
    if weights is None:
        weights = model.states(brainstate.ParamState)
    fkey, captured, rebuild = split_fn(step_fn)
    key = ("braintrace_grad", fkey, k, bool(has_aux), _weights_key(weights), bool(check))
    entry = cache.get(key)
    if entry is None:
        items = [] if check else None  # the checked items, in order, once the driver is traced
        entry = cache[key] = (brainstate.transform.jit(_grad_driver(rebuild, weights, k, has_aux, items)), items)
    fn, items = entry
    if k is not None:
        xs = (to_windows(sequences, T // k, k), mask.reshape(T // k, k))
    else:
        xs = (sequences, mask)
    with finite.as_numerical_error("etrace_grad") if check else contextlib.nullcontext():
        total, (losses, aux), summary = fn(xs, captured)
        if check:
            finite.raise_host("etrace_grad", items, summary, k or 1)
    return finish_step_fn_grad(total, losses, aux, mask, reduction, loss_output, has_aux, return_value)


def finish_step_fn_grad(total, losses, aux, mask, reduction: str, loss_output: str, has_aux: bool,
                        return_value: bool):
    """braintrace's returns from the summed gradients ``total`` and the per-step ``losses``:
    ``reduction``, ``loss_output``, ``has_aux`` and ``return_value`` as in the module docstring."""
    T = mask.shape[0]
    if reduction == "mean":
        denom = jnp.maximum(jnp.sum(mask), 1.0)
        total = jax.tree.map(lambda g: g / denom, total)
    if not return_value:
        return (total, aux) if has_aux else total
    losses = jnp.reshape(losses, (T,))
    if loss_output == "per_step":
        value = losses
    elif loss_output == "masked":
        value = losses * mask
    else:
        value = jnp.sum(losses * mask)
        if reduction == "mean":
            value = value / jnp.maximum(jnp.sum(mask), 1.0)
    return (total, value, aux) if has_aux else (total, value)


def _name(path) -> str:
    return ".".join(map(str, path)) if isinstance(path, tuple) else str(path)


def _seq_items(slices) -> list:
    return [("input", f"sequence {i}") for i in range(len(slices))]


def _grad_driver(rebuild, weights, k, has_aux, items):
    """The jitted scan; with ``items`` (a list, filled when traced) each step's finite-check
    row is kept and the scan also returns `finite.summarise` of them."""
    check = items is not None

    def run(xs, captured):
        f = rebuild(captured)

        def objective(slices, w):
            with finite.collecting() if check else contextlib.nullcontext() as col:
                result = f(*slices)
            loss, aux = result if has_aux else (result, None)
            want = (k,) if k is not None else ()
            if jnp.shape(loss) != want:
                if k is not None:
                    raise ArgumentError(f"with chunk_size={k}, step_fn must return a ({k},) vector of per-step "
                                        f"losses, got shape {jnp.shape(loss)}")
                raise ArgumentError(f"step_fn must return a scalar loss (reduce over batch and features inside "
                                    f"it), got shape {jnp.shape(loss)}")
            if not check:
                return jnp.sum(w * loss), (loss, aux, None)
            items[:] = (_seq_items(slices) + [("param", _name(p)) for p in weights] + col.items + [("loss", "")]
                        + [("grad", _name(p)) for p in weights])
            row = jnp.concatenate([finite.flags(list(slices)), p_flags, col.vector(), finite.flags([loss])])
            return jnp.sum(w * loss), (loss, aux, row)

        grad_fn = brainstate.transform.grad(objective, weights, has_aux=True)

        def body(carry, xs_t):
            slices, w = xs_t
            grads, (loss, aux, row) = grad_fn(slices, w)
            carry = jax.tree.map(jnp.add, carry, grads)
            if check:  # the running sum is non-finite from the first non-finite step on; checking it
                # (not the step's gradient) lets XLA fuse the check into the add
                row = jnp.concatenate([row, finite.flags([carry[p] for p in weights])])
            return carry, (loss, aux, row)

        values = {key: st.value for key, st in weights.items()}
        p_flags = finite.flags(list(values.values())) if check else None  # fixed over the sequence
        init = jax.tree.map(jnp.zeros_like, values)
        total, (losses, aux, rows) = brainstate.transform.scan(body, init, xs)
        return total, (losses, aux), (finite.summarise(rows) if check else None)

    return run


def step_fn_evolve(evolve, cache, check: bool, sequences: tuple, step_fn: Callable | None, *, chunk_size=None,
                   return_outputs: bool = False):
    """braintrace's ``etrace_evolve``: drive the model and the traces, no gradient. ``step_fn``
    None runs ``evolve(inputs) -> outputs`` (the learner's own sequence driver: the traces advance
    the same step by step or in windows); returns None, or the stacked outputs (leading
    ``T // chunk_size`` in window mode)."""
    k = check_chunk_size(chunk_size)
    T = sequence_length(sequences)
    if k is not None and T % k:
        raise ArgumentError(f"the sequence length {T} is not a multiple of chunk_size {k}; trim the sequence to "
                            f"{T - T % k} steps or pick a chunk_size that divides {T}")
    if step_fn is None:
        # traces advance the same step by step or in windows: the fast sequence driver serves both
        args = sequences if len(sequences) > 1 else sequences[0]
        out = evolve(args)
        if not return_outputs:
            return None
        return out if k is None else to_windows(out, T // k, k)
    fkey, captured, rebuild = split_fn(step_fn)
    key = ("braintrace_evolve", fkey, k, bool(return_outputs), bool(check))
    entry = cache.get(key)
    if entry is None:
        items = [] if check else None

        def run(xs, captured):
            f = rebuild(captured)

            def body(*slices):
                with finite.collecting() if check else contextlib.nullcontext() as col:
                    out = f(*slices)
                row = None
                if check:
                    items[:] = _seq_items(slices) + col.items
                    row = jnp.concatenate([finite.flags(list(slices)), col.vector()])
                return out if return_outputs else None, row

            outs, rows = brainstate.transform.for_loop(body, *xs)
            return outs, (finite.summarise(rows) if check else None)

        entry = cache[key] = (brainstate.transform.jit(run), items)
    fn, items = entry
    xs = to_windows(sequences, T // k, k) if k is not None else sequences
    with finite.as_numerical_error("etrace_evolve") if check else contextlib.nullcontext():
        outs, summary = fn(xs, captured)
        if check:
            finite.raise_host("etrace_evolve", items, summary, k or 1)
    return outs
