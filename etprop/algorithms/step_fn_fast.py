"""braintrace's calling convention on etprop's fast path.

In ``etrace_grad(*sequences, step_fn=f)`` the user's ``f(*slices)`` calls the learner once and
returns the step's loss. Run literally, each step is one window of the learner under
`brainstate.transform.grad`: no closed-form chunks. Most step functions have the shape

    out = learner(x(slices));  return loss(out, slices)

and then the same gradient comes from etprop's own driver, ``etrace_grad(xs, ys, step_loss)``
with closed-form chunks: the learner's inputs ``xs`` are ``x(slices)`` for every step, and the
step loss is ``f`` itself with the learner's call standing for the output the driver computed.
Both pieces come from running ``f``: the learner, while a capture (`capturing`) is active,
records its input and returns the capture's output instead of running the model (`intercept`).

`probe` decides, by running ``f`` once on the first slices with a stand-in output: it takes the
fast path only when ``f`` calls the learner exactly once with one step's input, reads and writes
no other state (a firing-rate regulariser reading the model's spikes after the call, or a
readout outside the learner, keeps the per-step path, which is exact for them), and the
gradients asked for are the learner's parameters. Otherwise the per-step path runs and
`probe`'s reason is what ``learner.report()`` says.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable

import brainstate
import jax
import jax.extend
import jax.numpy as jnp

from etprop.graph import executor
from etprop.input_data import MultiStepData

__all__ = ["NOT_CAPTURED", "intercept", "capturing", "BatchLevel", "probe", "step_loss_of", "learner_inputs"]

#: what `intercept` returns when no capture is active for the learner
NOT_CAPTURED = object()
_CAPTURE: contextvars.ContextVar = contextvars.ContextVar("etprop_step_fn_capture", default=None)


@dataclasses.dataclass
class _Capture:
    learner: object
    out: object
    top: object = None  # the probe's trace state: a call under another one is inside the user's jit
    nested: bool = False
    inputs: list = dataclasses.field(default_factory=list)


def intercept(learner, inputs):
    """Called first by ``learner(inputs)``: under a capture of this learner, record ``inputs`` and
    return the capture's output; else `NOT_CAPTURED` (the learner runs the model)."""
    cap = _CAPTURE.get()
    if cap is None or cap.learner is not learner:
        return NOT_CAPTURED
    if cap.top is not None and jax.extend.core.get_opaque_trace_state() != cap.top:
        # inside the user's own jit (or another transformation): a stand-in would be cached in its
        # trace, so the learner runs for real there and the step function keeps the per-step path
        cap.nested = True
        return NOT_CAPTURED
    cap.inputs.append(inputs)
    return cap.out


@contextlib.contextmanager
def capturing(learner, out, top=None):
    """Within, ``learner(x)`` records ``x`` and returns ``out`` (with ``top``, a trace state: only
    when called under it, see `intercept`)."""
    cap = _Capture(learner, out, top)
    token = _CAPTURE.set(cap)
    try:
        yield cap
    finally:
        _CAPTURE.reset(token)


@dataclasses.dataclass(frozen=True)
class BatchLevel:
    """A step loss of the whole batch's output, ``fn(out, ys) -> scalar`` (the step function's
    own reduction over the batch), instead of one sample's."""

    fn: Callable


def _stand_in(learner):
    """Zeros shaped as the learner's output for one step (with the batch axis)."""
    g = learner.graph
    lead = () if learner.batch_size is None else (learner.batch_size,)
    return g.unflatten_out([jnp.zeros(lead + tuple(a.shape), a.dtype) for a in executor.step_out_avals(g)])


def probe(learner, sequences: tuple, step_fn: Callable, weights: dict) -> str | None:
    """None when ``step_fn`` can take the fast path, else why not (see the module docstring)."""
    slices = jax.tree.map(lambda a: a[0], sequences)
    top = jax.extend.core.get_opaque_trace_state()
    with brainstate.StateTraceStack() as trace, capturing(learner, _stand_in(learner), top) as cap:
        try:
            step_fn(*slices)
        except Exception as err:  # noqa: BLE001 -- the per-step path raises the user's real error
            failed = type(err).__name__
        else:
            failed = None
    touched = list(trace.states)
    if any(trace.been_writen):
        trace.recovery_original_values()  # the probe leaves the model as it found it
    if cap.nested:
        return "step_fn calls the learner inside its own jit (or another transformation)"
    if failed is not None:
        return f"step_fn did not run with a stand-in for the learner's output ({failed})"
    if touched:
        paths = {id(st): ".".join(map(str, k)) if isinstance(k, tuple) else str(k)
                 for k, st in learner.model.states().items()}
        names = [paths.get(id(st), type(st).__name__) for st in touched]
        return (f"step_fn reads or writes {', '.join(repr(n) for n in names)} besides calling the learner (a "
                f"firing-rate term on the model's state, a readout outside the learner, ...)")
    if len(cap.inputs) != 1:
        return f"step_fn calls the learner {len(cap.inputs)} times per step (the fast path needs exactly one)"
    if isinstance(cap.inputs[0], MultiStepData):
        return "step_fn passes the learner a window (MultiStepData)"
    own = {id(st) for st in learner.param_states().values()}
    if any(id(st) not in own for st in weights.values()):
        return "weights holds states that are not the learner's parameters"
    return None


def learner_inputs(learner, step_fn: Callable, slices: tuple):
    """What ``step_fn(*slices)`` passes to the learner (traced: no model runs)."""
    with capturing(learner, _stand_in(learner)) as cap:
        step_fn(*slices)
    return cap.inputs[0]


def step_loss_of(learner, step_fn: Callable) -> BatchLevel:
    """``step_fn`` as a batch-level step loss of the learner's output and the step's slices."""

    def loss(out, slices):
        with capturing(learner, out):
            return step_fn(*slices)

    return BatchLevel(loss)
