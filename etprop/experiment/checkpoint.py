"""Checkpoints of a training run: one documented, dependency-free, verified format.

A checkpoint is a directory ``DIR/checkpoint/`` holding two files:

``state.npz``
    every array of the run state, one ``numpy`` entry per pytree leaf, named by its key path
    (``jax.tree_util.keystr``), e.g. ``['params']['cell.Wz.weight']`` or
    ``['traces']['rel'][0]['eps']``. PRNG keys are stored as their raw ``uint32`` key data.
``meta.json``
    ``{"format": "etprop-checkpoint", "version": 2, "step": int, "config": {...},
    "leaves": {key path: {"shape": [int, ...], "dtype": str, "sha256": hex}}}``; ``config`` is
    what is needed to rebuild the run, ``sha256`` the SHA-256 of the array's bytes in C order.

Saving writes both files under temporary names and then renames them (``state.npz`` first,
``meta.json`` last), so an interrupted save leaves either the old checkpoint or the new one;
the checksums in ``meta.json`` also catch a pair of files from two different saves. A state
holding NaN or inf is refused at save time (`NumericalError` naming the leaf) and the previous
checkpoint is kept.

Loading needs a *template*: a pytree of the same structure (the freshly built run state).
Nothing is trusted: a missing or unreadable file, invalid JSON, another format or version,
missing fields, a truncated or damaged ``state.npz``, an array whose checksum, shape or dtype
differs from ``meta.json``, NaN/inf in a saved array, or entries that do not match the
template's key paths, shapes and dtypes each raise a one-line `CheckpointError` naming the
file, the problem and what to do -- never a ``zipfile``, ``json`` or ``numpy`` traceback.
Loading only reads, so a run that fails to load a checkpoint leaves it untouched.

The run state is ``{"params", "opt_state", "hidden", "others", "traces"}``: parameters,
optimiser state, hidden states and eligibility traces, so a resumed run continues exactly
where it stopped.

Versions. Version 2 added the per-array ``sha256`` (version 1 stored ``[shape, dtype]`` per
leaf). Version-1 checkpoints still load -- every check above except the checksum applies --
and `legacy_note` gives the line to tell the user their arrays were not verified; the next
save writes version 2. Any other version is refused.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax
import numpy as np

from etprop.errors import CheckpointError, NumericalError
from etprop.experiment.distributed import host_value, is_writer

__all__ = ["save_checkpoint", "load_checkpoint", "read_meta", "legacy_note", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoint"
_FORMAT, _VERSION = "etprop-checkpoint", 2
_READABLE = (1, 2)
_STATE, _META = "state.npz", "meta.json"
_FIX = "start a new run or restore the checkpoint directory from a backup"
_DAMAGED = f"the checkpoint is damaged; {_FIX}"


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flat(tree) -> dict:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _to_numpy(x) -> np.ndarray:
    return host_value(jax.random.key_data(x) if _is_key(x) else x)


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _nonfinite(a: np.ndarray) -> int:
    """How many values of ``a`` are NaN or infinite (0 for integer and boolean arrays)."""
    if not np.issubdtype(a.dtype, np.inexact):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _describe(shape, dtype) -> str:
    return f"{dtype}{list(shape)}"


# -- saving -------------------------------------------------------------------------------------

def _write_synced(path: str, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(run_dir: str, state, *, step: int, config: dict) -> str:
    """Write ``state`` (a pytree of arrays) after ``step`` updates; returns the checkpoint dir.

    Raises `NumericalError` (nothing written) if a floating leaf holds NaN or inf, and
    `CheckpointError` if the files cannot be written (the previous checkpoint is kept). With
    several processes (``jax.distributed``) every process calls it: the arrays are gathered to
    the host in each, and process 0 writes them.
    """
    ckpt = os.path.join(run_dir, CHECKPOINT_DIR)
    arrays = {k: _to_numpy(v) for k, v in _flat(state).items()}
    for name, a in arrays.items():
        bad = _nonfinite(a)
        if bad:
            raise NumericalError(f"not saving a checkpoint in {ckpt} at update {step}: state entry {name} holds "
                                 f"{bad} NaN/inf of {a.size} values; the previous checkpoint is kept. Lower --lr "
                                 f"or --clip")
    if not is_writer():
        return ckpt
    meta = {"format": _FORMAT, "version": _VERSION, "step": int(step), "config": config,
            "leaves": {k: {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": _sha256(a)}
                       for k, a in arrays.items()}}
    state_path, meta_path = os.path.join(ckpt, _STATE), os.path.join(ckpt, _META)
    tmps = [state_path + ".tmp", meta_path + ".tmp"]
    try:
        os.makedirs(ckpt, exist_ok=True)
        text = json.dumps(meta, indent=1, sort_keys=True).encode()
        # numpy names entries by keyword; key paths contain characters it keeps verbatim
        _write_synced(tmps[0], lambda f: np.savez(f, **arrays))
        _write_synced(tmps[1], lambda f: f.write(text))
        os.replace(tmps[0], state_path)
        os.replace(tmps[1], meta_path)  # last: meta.json names the checksums of this state.npz
    except (OSError, TypeError, ValueError) as e:  # disk full, permissions; a config JSON cannot hold
        for tmp in tmps:
            if os.path.isfile(tmp):
                os.remove(tmp)
        raise CheckpointError(f"cannot write the checkpoint in {ckpt} ({_one_line(e)}); free disk space or "
                              f"choose another --out") from None
    return ckpt


# -- reading meta.json --------------------------------------------------------------------------

def _check_leaves(path: str, leaves, version: int) -> dict:
    """``{name: (shape, dtype, sha256 or None)}`` from the ``leaves`` field of a version-``version`` meta."""
    if not isinstance(leaves, dict) or not leaves:
        raise CheckpointError(f"{path}: field 'leaves' must be a non-empty object, got {type(leaves).__name__}; "
                              f"{_DAMAGED}")
    out = {}
    for name, spec in leaves.items():
        if version == 1 and isinstance(spec, list) and len(spec) == 2:
            spec = {"shape": spec[0], "dtype": spec[1], "sha256": None}
        ok = isinstance(spec, dict) and isinstance(spec.get("shape"), list) and isinstance(spec.get("dtype"), str)
        ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in spec["shape"])
        if ok and version >= 2:
            ok = isinstance(spec.get("sha256"), str) and len(spec["sha256"]) == 64
        if not ok:
            raise CheckpointError(f"{path}: the entry for {name} is malformed ({json.dumps(spec)[:80]}); {_DAMAGED}")
        out[name] = (tuple(spec["shape"]), spec["dtype"], spec.get("sha256"))
    return out


def read_meta(run_dir: str) -> dict:
    """The validated ``meta.json`` of the checkpoint in ``run_dir``.

    Raises `CheckpointError` (naming the file and what to do) if there is none, it cannot be
    read, is not JSON, is not an etprop checkpoint of a readable version, or lacks a field.
    """
    path = os.path.join(run_dir, CHECKPOINT_DIR, _META)
    if not os.path.exists(path):
        there = os.path.isfile(os.path.join(run_dir, CHECKPOINT_DIR, _STATE))
        what = (f"{path} is missing, so the checkpoint is incomplete; start a new run" if there else
                f"no checkpoint in {run_dir!r} (expected {path}); resume from the --out directory of an earlier run")
        raise CheckpointError(what)
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({_one_line(e)}); check its permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:  # also truncated or zeroed files
        raise CheckpointError(f"{path} is not valid JSON ({_one_line(e)}); {_DAMAGED}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not an etprop checkpoint (format {got!r}, expected {_FORMAT!r}); "
                              f"resume from the --out directory of an etprop run")
    version = meta.get("version")
    if version not in _READABLE or isinstance(version, bool):
        raise CheckpointError(f"{path} is an etprop checkpoint of version {version!r}; this etprop reads versions "
                              f"{', '.join(map(str, _READABLE))}: use the etprop that wrote it, or start a new run")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: field 'step' must be a non-negative integer, got {step!r}; {_DAMAGED}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: field 'config' must be an object, got {meta.get('config')!r:.60}; "
                              f"{_DAMAGED}")
    _check_leaves(path, meta.get("leaves"), version)
    return meta


def legacy_note(meta: dict) -> str | None:
    """A line to show when ``meta`` is of a version without checksums (else None)."""
    if meta.get("version", _VERSION) >= 2:
        return None
    return (f"note: this checkpoint is of format version {meta['version']}, without checksums: its arrays were "
            f"checked for shape, dtype and NaN/inf but not verified; the next save writes version {_VERSION}")


# -- reading state.npz --------------------------------------------------------------------------

def _read_arrays(ckpt: str, specs: dict) -> dict:
    """Every array of ``state.npz``, checked against ``meta.json``'s ``specs``."""
    path = os.path.join(ckpt, _STATE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing (meta.json is there), so the checkpoint is incomplete; "
                              f"{_FIX}")
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 -- zipfile/numpy raise a dozen types on damaged bytes; all mean "damaged"
        raise CheckpointError(f"{path} cannot be read ({_one_line(e)}): it is truncated or damaged; "
                              f"{_FIX}") from None
    missing, extra = sorted(set(specs) - set(stored)), sorted(set(stored) - set(specs))
    if missing or extra:
        diff = (f"lacks {missing[0]}" if missing else f"has {extra[0]}, which meta.json does not list")
        raise CheckpointError(f"{path} does not match meta.json: it {diff} (the two files come from different "
                              f"saves); {_DAMAGED}")
    for name, (shape, dtype, digest) in specs.items():
        a = stored[name]
        if a.shape != shape or str(a.dtype) != dtype:
            raise CheckpointError(f"{path}: entry {name} is {_describe(a.shape, a.dtype)}, meta.json says "
                                  f"{_describe(shape, dtype)}; {_DAMAGED}")
        if digest is not None and _sha256(a) != digest:
            raise CheckpointError(f"{path}: entry {name} does not match its sha256 in meta.json (the data changed "
                                  f"after it was saved); {_DAMAGED}")
        bad = _nonfinite(a)
        if bad:
            raise CheckpointError(f"{path}: entry {name} holds {bad} NaN/inf of {a.size} values, so the run cannot "
                                  f"continue from it; start a new run (with a lower --lr or --clip)")
    return stored


def load_checkpoint(run_dir: str, template):
    """The state saved in ``run_dir``, with the structure of ``template``; returns ``(state, meta)``.

    Raises `CheckpointError` if the checkpoint is missing, damaged, holds NaN/inf, or does not
    fit ``template`` (another model, algorithm, optimiser or size).
    """
    meta = read_meta(run_dir)
    ckpt = os.path.join(run_dir, CHECKPOINT_DIR)
    stored = _read_arrays(ckpt, _check_leaves(os.path.join(ckpt, _META), meta["leaves"], meta["version"]))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [jax.tree_util.keystr(path) for path, _ in leaves]
    where = f"the checkpoint in {run_dir!r}"
    fix = "it was written by a different model, algorithm, optimiser or etprop; start a new run"
    out = []
    for name, (_, want) in zip(names, leaves):
        if name not in stored:
            raise CheckpointError(f"{where} has no entry {name}: {fix}")
        got, want_np = stored[name], _to_numpy(want)
        if got.shape != want_np.shape or got.dtype != want_np.dtype:
            raise CheckpointError(f"{where}: entry {name} is {_describe(got.shape, got.dtype)}, the run expects "
                                  f"{_describe(want_np.shape, want_np.dtype)}: {fix}")
        out.append(jax.random.wrap_key_data(got, impl=jax.random.key_impl(want)) if _is_key(want)
                   else jax.numpy.asarray(got))
    extra = sorted(set(stored) - set(names))
    if extra:
        raise CheckpointError(f"{where} has an entry {extra[0]} this run does not ({len(extra)} in all): {fix}")
    return jax.tree_util.tree_unflatten(treedef, out), meta
