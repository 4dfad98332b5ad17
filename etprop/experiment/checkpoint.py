"""Checkpoints of a training run: one documented, dependency-free format.

A checkpoint is a directory ``DIR/checkpoint/`` holding two files, both replaced atomically
(written under a temporary name, then renamed, so an interrupted save never leaves a
half-written checkpoint):

``state.npz``
    every array of the run state, one ``numpy`` entry per pytree leaf, named by its key path
    (``jax.tree_util.keystr``), e.g. ``['params']['cell.Wz.weight']`` or
    ``['traces']['rel'][0]['eps']``. PRNG keys are stored as their raw ``uint32`` key data.
``meta.json``
    ``{"format": "etprop-checkpoint", "version": 1, "step": int, "config": {...},
    "leaves": {key path: [shape, dtype]}}``; ``config`` is what is needed to rebuild the run.

Loading needs a *template*: a pytree of the same structure (the freshly built run state).
Each leaf is taken from the file by its key path and checked against the template's shape
and dtype, so a checkpoint of another model or algorithm gives a clear error, not a silent
mismatch. The run state is ``{"params", "opt_state", "hidden", "others", "traces"}``:
parameters, optimiser state, hidden states and eligibility traces, so a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from etprop.errors import ArgumentError

__all__ = ["save_checkpoint", "load_checkpoint", "read_meta", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoint"
_FORMAT, _VERSION = "etprop-checkpoint", 1


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flat(tree) -> dict:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _to_numpy(x) -> np.ndarray:
    return np.asarray(jax.random.key_data(x) if _is_key(x) else x)


def _replace_atomically(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str, state, *, step: int, config: dict) -> str:
    """Write ``state`` (a pytree of arrays) after ``step`` updates; returns the checkpoint dir."""
    ckpt = os.path.join(run_dir, CHECKPOINT_DIR)
    os.makedirs(ckpt, exist_ok=True)
    arrays = {k: _to_numpy(v) for k, v in _flat(state).items()}
    meta = {"format": _FORMAT, "version": _VERSION, "step": int(step), "config": config,
            "leaves": {k: [list(a.shape), str(a.dtype)] for k, a in arrays.items()}}
    # numpy names entries by keyword; key paths contain characters it keeps verbatim
    _replace_atomically(os.path.join(ckpt, "state.npz"), lambda f: np.savez(f, **arrays))
    _replace_atomically(os.path.join(ckpt, "meta.json"),
                        lambda f: f.write(json.dumps(meta, indent=1, sort_keys=True).encode()))
    return ckpt


def read_meta(run_dir: str) -> dict:
    """The ``meta.json`` of the checkpoint in ``run_dir`` (`ArgumentError` if there is none)."""
    path = os.path.join(run_dir, CHECKPOINT_DIR, "meta.json")
    if not os.path.isfile(path):
        raise ArgumentError(f"no checkpoint in {run_dir!r} (expected {path}); resume from the --out directory "
                            f"of an earlier run")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ArgumentError(f"{path} is not an etprop checkpoint of version {_VERSION}")
    return meta


def load_checkpoint(run_dir: str, template):
    """The state saved in ``run_dir``, with the structure of ``template``; returns ``(state, meta)``."""
    meta = read_meta(run_dir)
    with np.load(os.path.join(run_dir, CHECKPOINT_DIR, "state.npz")) as data:
        stored = {k: data[k] for k in data.files}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, want in leaves:
        name = jax.tree_util.keystr(path)
        if name not in stored:
            raise ArgumentError(f"checkpoint in {run_dir!r} has no entry {name}: it was written by a different "
                                f"model, algorithm or optimiser; start a new run or resume with the same settings")
        got = stored[name]
        want_np = _to_numpy(want)
        if got.shape != want_np.shape or got.dtype != want_np.dtype:
            raise ArgumentError(f"checkpoint entry {name} is {got.dtype}{list(got.shape)}, the run expects "
                                f"{want_np.dtype}{list(want_np.shape)}; resume with the same settings")
        out.append(jax.random.wrap_key_data(got, impl=jax.random.key_impl(want)) if _is_key(want)
                   else jax.numpy.asarray(got))
    return jax.tree_util.tree_unflatten(treedef, out), meta
