"""`RuleConfig`: every learning rule as a point in one small space of choices.

An online gradient is ``sum_t L^t . e^t``: a learning signal ``L`` times an eligibility
trace ``e`` of ``dh/dtheta``. The rules differ along five axes:

``trace`` -- how ``e`` is stored per weight:
    ``'param'`` one trace per parameter element and state (``S |W|``);
    ``'io'`` factorised into an input and an output trace (``I + S O``);
    ``'hybrid'`` per weight the smaller of the two;
    ``'full'`` the whole influence matrix ``dh/dtheta`` (``n |theta|``, RTRL);
    ``'sparse'`` the influence restricted to a sparsity pattern (SnAp);
    ``'rank_one'`` an unbiased rank-one estimate of it (UORO);
    ``'none'`` no trace: the whole history is kept (BPTT).
``recursion`` -- which part of ``dh^t/dh^{t-1}`` the trace recursion keeps:
    ``'none'`` (no recursion), ``'diagonal'`` (each state's own diagonal), ``'block'``
    (the per-position ``S x S`` block) or ``'full'`` (the whole Jacobian).
``scope`` -- whose Jacobian: ``'group'`` the units' own dynamics with the operator inputs
    cut; ``'model'`` the model's full one-step Jacobian (recurrent-weight paths included).
``signal`` -- the learning signal: ``'exact'`` (``dL^t/dh`` through the readout),
    ``'random_feedback'`` (the error through a fixed random matrix), ``'modulator'`` (a
    third factor given per call), ``'bootstrapped'`` (``'exact'`` plus a learned synthetic
    gradient of the future at each window exit for the untraced parameters: DNI).
``filter`` -- ``'none'`` or ``'lowpass'`` (``ebar^t = kappa ebar^{t-1} + e^t``).

Only some points are implemented; `RuleConfig` raises `ArgumentError` listing them.
``RuleConfig.of('eprop')`` gives a named point, ``config.build(model, **options)`` the learner
(``build()`` without a model gives the class and its fixed options), ``etprop.rule(...)``
does both from a name or a config.
"""

from __future__ import annotations

import dataclasses
import importlib

from etprop.algorithms.base import OnlineAlgorithm
from etprop.errors import ArgumentError, NotSupportedError

__all__ = ["RuleConfig", "rule", "canonical_name", "rule_names", "resolve"]

AXES = {
    "trace": ("param", "io", "hybrid", "full", "sparse", "rank_one", "none"),
    "recursion": ("none", "diagonal", "block", "full"),
    "scope": ("group", "model"),
    "signal": ("exact", "random_feedback", "modulator", "bootstrapped"),
    "filter": ("none", "lowpass"),
}

# point -> (module, class name, fixed constructor options)
_IMPL = {
    ("param", "block", "group", "exact", "none"): ("etrace", "D_RTRL", {}),
    ("io", "block", "group", "exact", "none"): ("etrace", "ES_D_RTRL", {}),
    ("hybrid", "block", "group", "exact", "none"): ("etrace", "HybridDimVjpAlgorithm", {}),
    ("param", "block", "group", "exact", "lowpass"): ("eprop", "EProp", {"feedback": "symmetric"}),
    ("param", "block", "group", "random_feedback", "none"): ("eprop", "EProp", {"feedback": "random"}),
    ("param", "block", "group", "random_feedback", "lowpass"): ("eprop", "EProp", {"feedback": "random"}),
    ("param", "block", "model", "exact", "none"): ("ostl", "OSTLRecurrent", {}),
    ("io", "diagonal", "group", "exact", "none"): ("ostl", "OSTLFeedforward", {}),
    ("param", "block", "group", "modulator", "none"): ("three_factor", "ThreeFactor", {}),
    ("param", "block", "group", "bootstrapped", "none"): ("dni", "DNI", {}),
    ("full", "full", "model", "exact", "none"): ("rtrl", "RTRL", {}),
    ("sparse", "full", "model", "exact", "none"): ("snap", "SnAp", {}),
    ("rank_one", "full", "model", "exact", "none"): ("uoro", "UORO", {}),
    ("none", "full", "model", "exact", "none"): ("bptt", "BPTT", {}),
}

_NAMED = {
    "d_rtrl": ("param", "block", "group", "exact", "none"),
    "es_d_rtrl": ("io", "block", "group", "exact", "none"),
    "hybrid": ("hybrid", "block", "group", "exact", "none"),
    "eprop": ("param", "block", "group", "random_feedback", "none"),
    "ostl_recurrent": ("param", "block", "model", "exact", "none"),
    "ostl_feedforward": ("io", "diagonal", "group", "exact", "none"),
    "three_factor": ("param", "block", "group", "modulator", "none"),
    "dni": ("param", "block", "group", "bootstrapped", "none"),
    "rtrl": ("full", "full", "model", "exact", "none"),
    "snap": ("sparse", "full", "model", "exact", "none"),
    "uoro": ("rank_one", "full", "model", "exact", "none"),
    "bptt": ("none", "full", "model", "exact", "none"),
}
# the one table of rule names: braintrace's names and etprop's (the command line's) are aliases of
# the canonical ones above; compile(), RuleConfig.of, rule() and `etprop train --algo` read it
_ALIASES = {"pp_prop": "es_d_rtrl", "esd_rtrl": "es_d_rtrl", "e_prop": "eprop", "drtrl": "d_rtrl",
            "ostl": "ostl_recurrent", "ostl_ff": "ostl_feedforward", "param_dim_vjp": "d_rtrl",
            "io_dim_vjp": "es_d_rtrl", "hybrid_dim_vjp": "hybrid"}
# names a port may use that etprop does not implement, with what to do instead
_UNSUPPORTED: dict = {}


def canonical_name(name) -> str:
    """The canonical rule name of ``name`` (case-insensitive, '-' and '_' alike, aliases
    resolved). Unknown names raise `ArgumentError` listing every valid one."""
    if not isinstance(name, str):
        raise ArgumentError(f"a rule name must be a str, got {name!r}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key in _UNSUPPORTED:
        raise NotSupportedError(f"rule {name!r}: {_UNSUPPORTED[key]}")
    if key not in _NAMED:
        raise ArgumentError(f"unknown rule name {name!r}; known: {sorted(_NAMED)}, "
                            f"aliases: {', '.join(f'{a}={c}' for a, c in sorted(_ALIASES.items()))}")
    return key


def rule_names(aliases: bool = True) -> tuple:
    """Every rule name: the canonical ones, and (by default) their aliases."""
    return tuple(sorted(_NAMED)) + (tuple(sorted(_ALIASES)) if aliases else ())


def _legal() -> str:
    names = {v: k for k, v in _NAMED.items()}
    rows = []
    for point in _IMPL:
        tag = f" ('{names[point]}')" if point in names else ""
        rows.append("(" + ", ".join(repr(x) for x in point) + ")" + tag)
    return "; ".join(rows)


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """A learning rule as ``(trace, recursion, scope, signal, filter)``; see the module doc.

    Example: ``RuleConfig.of('eprop').build(model, seed=3)`` or
    ``RuleConfig(trace='param', recursion='block', scope='group', signal='exact',
    filter='lowpass').build(model, kappa=0.8)``.
    """

    trace: str = "param"
    recursion: str = "block"
    scope: str = "group"
    signal: str = "exact"
    filter: str = "none"

    def __post_init__(self):
        for axis, legal in AXES.items():
            v = getattr(self, axis)
            if v not in legal:
                raise ArgumentError(f"RuleConfig: {axis}={v!r} is not one of {list(legal)}")
        if self.point not in _IMPL:
            raise ArgumentError(f"RuleConfig{self.point} is not an implemented rule; the implemented points "
                                f"(trace, recursion, scope, signal, filter) are: {_legal()}")

    @property
    def point(self) -> tuple:
        return (self.trace, self.recursion, self.scope, self.signal, self.filter)

    @classmethod
    def of(cls, name: str) -> "RuleConfig":
        """The named point: one of `names()` (case-insensitive; '-' and '_' alike)."""
        if not isinstance(name, str):
            raise ArgumentError(f"RuleConfig.of takes a rule name (str), got {name!r}")
        return cls(*_NAMED[canonical_name(name)])

    @staticmethod
    def names() -> tuple:
        return tuple(sorted(_NAMED))

    @property
    def rule_name(self) -> str | None:
        """The name of this point, if it has one."""
        return next((k for k, v in _NAMED.items() if v == self.point), None)

    def algorithm(self):
        """``(class, fixed options)``. Imported lazily: a rule whose module is missing gives a
        clear error here, not an import failure of etprop."""
        module, cls_name, fixed = _IMPL[self.point]
        try:
            mod = importlib.import_module(f"etprop.algorithms.{module}")
            cls = getattr(mod, cls_name)
        except (ImportError, AttributeError) as e:
            raise NotSupportedError(f"rule {self.rule_name or self.point} needs etprop.{cls_name} "
                                    f"(etprop/algorithms/{module}.py), which this installation lacks: {e}") from e
        return cls, dict(fixed)

    def build(self, model=None, *example_inputs, batch_size: int | None = None, **options):
        """Without ``model``: the algorithm class. With it: ``cls(model, **fixed, **options)``,
        compiled on ``example_inputs`` if given (like `etprop.compile`)."""
        cls, fixed = self.algorithm()
        if model is None:
            if example_inputs or options or batch_size is not None:
                raise ArgumentError("RuleConfig.build: pass a model to use example inputs or options")
            return cls
        clash = set(fixed) & set(options)
        if clash:
            raise ArgumentError(f"RuleConfig.build: {sorted(clash)} is fixed by the rule {self.point} "
                                f"({fixed}); choose another RuleConfig instead")
        if self.filter == "lowpass" and "kappa" not in options:
            raise ArgumentError("RuleConfig(filter='lowpass').build needs kappa=<float in (0, 1)>")
        if self.filter == "lowpass" and not options["kappa"]:
            raise ArgumentError("RuleConfig(filter='lowpass'): kappa must be > 0 (kappa=0 is filter='none')")
        learner = cls(model, **fixed, **options)
        if example_inputs:
            learner.compile_graph(*example_inputs, batch_size=batch_size)
        return learner


def rule(config, model=None, *example_inputs, batch_size: int | None = None, **options):
    """`RuleConfig` or name -> the learner class (no model) or a learner (see `RuleConfig.build`)."""
    if isinstance(config, str):
        config = RuleConfig.of(config)
    if not isinstance(config, RuleConfig):
        raise ArgumentError(f"rule() takes a RuleConfig or a rule name such as 'eprop', got {config!r}")
    return config.build(model, *example_inputs, batch_size=batch_size, **options)


def resolve(algorithm):
    """``(learner class, fixed options)`` of a class, a rule name or a `RuleConfig`: what
    `etprop.compile` accepts as its ``algorithm``."""
    if isinstance(algorithm, type) and issubclass(algorithm, OnlineAlgorithm):
        return algorithm, {}
    if isinstance(algorithm, str):
        return RuleConfig.of(algorithm).algorithm()
    if isinstance(algorithm, RuleConfig):
        return algorithm.algorithm()
    raise ArgumentError(f"algorithm must be an etprop learner class (etprop.D_RTRL, ...), a rule name "
                        f"({', '.join(rule_names(aliases=False))}, or an alias such as 'pp_prop') or a "
                        f"RuleConfig; got {algorithm!r}")
