"""`etprop.compile`: model + algorithm -> a compiled learner in one call."""

from __future__ import annotations

import inspect

import brainstate
import jax.numpy as jnp
import numpy as np

from etprop.algorithms.base import OnlineAlgorithm
from etprop.algorithms.etrace import TraceLearner
from etprop.algorithms.placement import make_placement
from etprop.algorithms.rules import RuleConfig, resolve
from etprop.errors import ArgumentError

__all__ = ["compile"]


def _check_arguments(cls, options, batch_size, seed, verbose, check_finite, cross_shape, vmap) -> None:
    """`compile`'s arguments checked (``options`` loses braintrace's ``vjp_method``)."""
    # braintrace's vjp_method chooses whether windows (chunk_size >= 2) are allowed; etprop's
    # learners always allow them, so both values mean the same here
    vjp_method = options.pop("vjp_method", None)
    if vjp_method not in (None, "single-step", "multi-step"):
        raise ArgumentError(f"vjp_method must be 'single-step' or 'multi-step' (braintrace's), got {vjp_method!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise ArgumentError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if verbose not in (0, 1, 2):
        raise ArgumentError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if not isinstance(check_finite, (bool, np.bool_)):
        raise ArgumentError(f"check_finite must be True or False, got {check_finite!r}")
    if cross_shape not in ("error", "warn"):
        raise ArgumentError(f"cross_shape must be 'error' or 'warn', got {cross_shape!r}")
    _check_options(cls, options)
    if vmap and batch_size is None:
        raise ArgumentError("vmap=True needs batch_size= (the size of the example inputs' leading axis)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ArgumentError(f"seed must be an int or None, got {seed!r}")


def compile(model, algorithm, *example_inputs, batch_size: int | None = None, seed: int | None = None,
            verbose: int = 0, vmap: bool = False, cross_shape: str = "error", check_finite: bool = True,
            trace_dtype=None, mesh=None, batch_axis: str | None = None, trace_axis: str | None = None,
            learning_signal: str = "pre", **options) -> OnlineAlgorithm:
    """Build the learner ``algorithm`` for ``model`` and compile it on ``example_inputs``.

    Args:
      model: brainstate module whose ``update(*inputs)`` advances one step.
      algorithm: a learner class (``etprop.D_RTRL``, ``etprop.ES_D_RTRL``, ...), a rule name
        (case-insensitive: ``'d_rtrl'``, ``'es_d_rtrl'``, braintrace's ``'pp_prop'``,
        ``'esd_rtrl'``, ``'e_prop'``, ``'ostl_recurrent'``, ...; see
        `etprop.algorithms.rules.rule_names`) or an `etprop.RuleConfig`.
      *example_inputs: inputs of one step (leading batch axis if ``batch_size``).
      batch_size: batch size of the model's states and inputs, or None. As in braintrace,
        the model's states are initialised for it (``brainstate.nn.init_all_states``) when
        they are missing or lack that batch axis; states already of that batch size are kept.
      seed: braintrace's: the model's states are (re)initialised inside
        ``brainstate.random.seed_context(seed)``; a learner that draws random numbers
        (UORO's ``key``, e-prop's ``seed``) gets it too unless given.
      verbose: ``0`` silent, ``1`` or ``2`` print `learner.report()` after compiling.
      vjp_method: braintrace's ``'single-step'`` / ``'multi-step'``; accepted and not needed
        (every etprop learner takes windows).
      vmap: braintrace's vmapped mode (an unbatched model mapped over the batch). etprop always
        traces one sample and maps over the batch itself, so this is the ``batch_size`` mode;
        it needs ``batch_size``.
      cross_shape: ``"error"`` (default) or ``"warn"``: what to do when hidden states of
        different shapes depend on each other outside an ETP operator (see
        `OnlineAlgorithm.cross_shape`).
      check_finite: check inputs, parameters, hidden states, traces, outputs, losses and
        gradients for NaN/inf (default). etprop's drivers raise `etprop.NumericalError` naming
        the first bad one and its step; ``learner(x)`` called inside your own ``jit``/``grad``/
        ``vmap`` makes JAX raise it (a runtime error whose message ends
        ``etprop.NumericalError: ...``) when the result is materialised. ``False`` traces no
        check at all; ``learner.check_finite`` changes it later.
      trace_dtype: store eligibility traces in this dtype between steps (``jnp.bfloat16`` or
        ``jnp.float16`` halve trace memory against float32); every trace update and gradient is
        still computed in the model's dtype. None (default): the model's dtype. For the learners
        on per-relation traces (D-RTRL, ES-D-RTRL, hybrid, e-prop, OSTL, three-factor).
      mesh: a `jax.sharding.Mesh` to train data-parallel on (`etprop.algorithms.placement`):
        hidden states, traces and inputs split on ``batch_axis`` (default the mesh's first axis;
        ``batch_size`` must divide over it), parameters replicated, gradients reduced by XLA's
        collectives. ``trace_axis``: another mesh axis that also splits D-RTRL's per-parameter
        traces along each weight's output axis (for traces too big for one device).
      learning_signal: ``'pre'`` (default): each step's gradient is ``dL^t/dh^{t-1}`` through the
        whole step (so the last step's path through ETP inputs, e.g. recurrent weights, and
        every parameter's current-step term are exact) times the trace before the step.
        ``'post'``: ``dL^t/dh^t`` through the readout only times the trace after the step
        (braintrace's convention): no backward pass through the step, so cheaper where the step
        is expensive (large sparse recurrent layers); equal to ``'pre'`` where no hidden state
        feeds an ETP operator's input, and it drops the last step's recurrent path where one
        does. Per-step mode only; needs the outputs to be a function of the new hidden state
        (`etprop.graph.readout`). For the learners on per-relation traces.
      **options: algorithm options, e.g. ``decay_or_rank=0.9``.

    Example::

        learner = etprop.compile(model, "d_rtrl", x0, batch_size=16)
    """
    cls, _ = resolve(algorithm)  # validates the name or class first, with the list of valid ones
    _check_arguments(cls, options, batch_size, seed, verbose, check_finite, cross_shape, vmap)
    if seed is not None:
        with brainstate.random.seed_context(int(seed)):
            _ensure_states(model, batch_size, force=True)
        for key in _SEEDED.get(cls.__name__, ()):
            options.setdefault(key, int(seed))
    else:
        _ensure_states(model, batch_size)
    if isinstance(algorithm, (str, RuleConfig)):
        config = RuleConfig.of(algorithm) if isinstance(algorithm, str) else algorithm
        learner = config.build(model, **options)
    else:
        learner = cls(model, **options)
    learner.cross_shape = cross_shape
    learner.check_finite = bool(check_finite)
    learner.trace_dtype = _check_trace_dtype(trace_dtype, learner)
    learner.learning_signal = _check_learning_signal(learning_signal, learner)
    placement = make_placement(mesh, batch_axis, trace_axis, batch_size)
    if placement is not None:  # several processes: each may give its slice of the batch
        example_inputs = placement.global_example(example_inputs)
    learner.compile_graph(*example_inputs, batch_size=batch_size)
    if placement is not None:
        learner.place(placement)
    if verbose:
        print(learner.report())
    return learner


_TRACE_DTYPES = ("bfloat16", "float16", "float32", "float64")


def _check_trace_dtype(trace_dtype, learner):
    """``trace_dtype`` as a numpy dtype (or None); an `ArgumentError` naming the valid ones."""
    if trace_dtype is None:
        return None
    try:
        dt = jnp.dtype(trace_dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in _TRACE_DTYPES:
        raise ArgumentError(f"trace_dtype must be one of {list(_TRACE_DTYPES)} (e.g. jnp.bfloat16) or None, got "
                            f"{trace_dtype!r}")
    if not isinstance(learner, TraceLearner):
        raise ArgumentError(f"trace_dtype applies to the learners on per-relation traces (D-RTRL, ES-D-RTRL, "
                            f"hybrid, e-prop, OSTL, three-factor); {type(learner).__name__} carries no such traces")
    return dt


def _check_learning_signal(signal, learner) -> str:
    if signal not in ("pre", "post"):
        raise ArgumentError(f"learning_signal must be 'pre' (default: dL/dh before the step) or 'post' (dL/dh after "
                            f"it, through the readout only), got {signal!r}")
    if signal == "post" and not getattr(learner, "takes_post_signal", False):
        raise ArgumentError(f"learning_signal='post' applies to the learners on per-relation traces (D-RTRL, "
                            f"ES-D-RTRL, hybrid, e-prop, OSTL); {type(learner).__name__} carries no such traces")
    return signal


def _check_options(cls, options: dict) -> None:
    """An option the learner's constructor does not take is an `ArgumentError` listing the ones it takes
    (not the constructor's ``TypeError``)."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, model
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ArgumentError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; its options are "
                            f"{accepted or 'none'} (etprop.compile's own: batch_size, seed, verbose, vmap, "
                            f"cross_shape, check_finite, trace_dtype, mesh, batch_axis, trace_axis, learning_signal, "
                            f"vjp_method)")


# learners that draw random numbers: the option that takes compile's seed
_SEEDED = {"UORO": ("key",), "EProp": ("seed",)}


def _ensure_states(model, batch_size, force: bool = False) -> None:
    """Initialise the model's states for ``batch_size`` where they are missing or unbatched
    (braintrace's ``compile`` initialises them; its users' cells hold no batched state until
    then). Hidden states that already lead with ``batch_size`` are left as they are."""
    if not hasattr(model, "states"):
        return  # not a brainstate module: compile_graph says so
    init = brainstate.nn.init_all_states
    hidden = [st.value for st in model.states(brainstate.HiddenState).values()]
    if not hidden or force:
        init(model) if batch_size is None else init(model, batch_size=batch_size)
        return
    if batch_size is None:
        return
    if any(np.shape(v)[:1] != (batch_size,) for v in hidden):
        init(model, batch_size=batch_size)
