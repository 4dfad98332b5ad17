"""Checkpoints that cannot mislead: every damaged, incomplete or incompatible checkpoint is a
one-line `CheckpointError` naming the file (never a zipfile/json/numpy traceback), NaN/inf is
refused on save and on load, and a run that cannot read a checkpoint leaves it untouched."""

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import etprop
from etprop import cli
from etprop.errors import ArgumentError, CheckpointError, EtpropError
from etprop.experiment import legacy_note, load_checkpoint, read_meta, save_checkpoint

TINY = ["--batch", "2", "--hidden", "4", "--quiet", "--no-plots", "--eval-every", "0", "--task-arg", "length=2",
        "--task-arg", "delay=1"]


def _state(w=None):
    return {"params": {"w": jnp.arange(6.0).reshape(2, 3) if w is None else w, "b": jnp.zeros(3)},
            "opt_state": (jnp.int32(7), jnp.ones((2, 3), jnp.float32)),
            "key": jax.random.key(3)}


def _save(tmp_path, state=None, step=5):
    run = str(tmp_path / "run")
    save_checkpoint(run, _state() if state is None else state, step=step, config={"model": "gru"})
    return run


def _files(run):
    return os.path.join(run, "checkpoint", "state.npz"), os.path.join(run, "checkpoint", "meta.json")


def _edit_meta(run, edit):
    meta_path = _files(run)[1]
    with open(meta_path) as f:
        meta = json.load(f)
    edit(meta)
    with open(meta_path, "w") as f:
        json.dump(meta, f)


def _rewrite_arrays(run, edit):
    """Rewrite state.npz as a valid file with ``edit(arrays)`` applied (meta.json unchanged)."""
    state_path = _files(run)[0]
    with np.load(state_path) as data:
        arrays = {k: data[k] for k in data.files}
    edit(arrays)
    with open(state_path, "wb") as f:
        np.savez(f, **arrays)


def _load_error(run, template=None) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(run, _state() if template is None else template)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def test_round_trip_is_exact_and_records_checksums(tmp_path):
    run = _save(tmp_path)
    state, meta = load_checkpoint(run, _state())
    ref = _state()
    for a, b in zip(jax.tree.leaves(jax.tree.map(etprop_key_data, state)),
                    jax.tree.leaves(jax.tree.map(etprop_key_data, ref))):
        np.testing.assert_array_equal(a, b)
    assert jax.dtypes.issubdtype(state["key"].dtype, jax.dtypes.prng_key)
    assert meta["version"] == 2 and meta["step"] == 5 and legacy_note(meta) is None
    spec = meta["leaves"]["['params']['w']"]
    assert spec["shape"] == [2, 3] and spec["dtype"] == "float32"
    assert spec["sha256"] == hashlib.sha256(np.arange(6.0, dtype=np.float32).tobytes()).hexdigest()
    assert not [f for f in os.listdir(os.path.join(run, "checkpoint")) if f.endswith(".tmp")]


def etprop_key_data(x):
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def test_checkpoint_error_is_a_library_argument_error():
    assert issubclass(CheckpointError, ArgumentError) and issubclass(CheckpointError, EtpropError)
    assert "CheckpointError" in etprop.errors.__all__


@pytest.mark.parametrize("keep", [0, 30, 0.5, -22])
def test_truncated_state_is_refused(tmp_path, keep):
    run = _save(tmp_path)
    path = _files(run)[0]
    data = open(path, "rb").read()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    with open(path, "wb") as f:
        f.write(data[:n])
    msg = _load_error(run)
    assert path in msg and "truncated or damaged" in msg and "start a new run" in msg


def test_every_single_bit_flip_is_caught_or_harmless(tmp_path):
    """Flipping one bit anywhere in state.npz either leaves the arrays intact (a header field
    zip does not check) or is refused; never a silent change, never another exception."""
    run = _save(tmp_path)
    path = _files(run)[0]
    good = open(path, "rb").read()
    ref, _ = load_checkpoint(run, _state())
    refused = 0
    for pos in range(0, len(good), max(1, len(good) // 97)):
        bad = bytearray(good)
        bad[pos] ^= 0x10
        with open(path, "wb") as f:
            f.write(bytes(bad))
        try:
            state, _ = load_checkpoint(run, _state())
        except CheckpointError as e:
            assert "\n" not in str(e) and path in str(e)
            refused += 1
            continue
        for a, b in zip(jax.tree.leaves(jax.tree.map(etprop_key_data, state)),
                        jax.tree.leaves(jax.tree.map(etprop_key_data, ref))):
            np.testing.assert_array_equal(a, b, err_msg=f"bit flip at byte {pos} went unnoticed")
    assert refused > 50


def test_changed_array_is_caught_by_its_checksum(tmp_path):
    run = _save(tmp_path)
    _rewrite_arrays(run, lambda a: a.__setitem__("['params']['w']", a["['params']['w']"] + 1e-6))
    msg = _load_error(run)
    assert "entry ['params']['w'] does not match its sha256 in meta.json" in msg and "damaged" in msg


def test_state_and_meta_of_different_saves_are_refused(tmp_path):
    run = _save(tmp_path)
    other = _save(tmp_path / "o", _state(w=jnp.ones((2, 3))))
    shutil.copy(_files(other)[0], _files(run)[0])
    assert "does not match its sha256" in _load_error(run)


@pytest.mark.parametrize("which,needle", [
    ("state", "state.npz is missing (meta.json is there), so the checkpoint is incomplete"),
    ("meta", "meta.json is missing, so the checkpoint is incomplete"),
    ("dir", "no checkpoint in"),
])
def test_missing_files(tmp_path, which, needle):
    run = _save(tmp_path)
    state_path, meta_path = _files(run)
    if which == "dir":
        shutil.rmtree(os.path.dirname(state_path))
    else:
        os.remove(state_path if which == "state" else meta_path)
    assert needle in _load_error(run)


@pytest.mark.parametrize("text,needle", [
    (b'{"format": "etprop-checkpoint", "vers', "is not valid JSON"),
    (b"", "is not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not valid JSON"),
    (b"[1, 2]", "is not an etprop checkpoint"),
    (b'{"format": "something-else", "version": 2}', "is not an etprop checkpoint (format 'something-else'"),
])
def test_invalid_meta_json(tmp_path, text, needle):
    run = _save(tmp_path)
    with open(_files(run)[1], "wb") as f:
        f.write(text)
    msg = _load_error(run)
    assert needle in msg and "meta.json" in msg


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.update(version=99), "of version 99; this etprop reads versions 1, 2"),
    (lambda m: m.update(version="2"), "of version '2'"),
    (lambda m: m.pop("step"), "field 'step' must be a non-negative integer, got None"),
    (lambda m: m.update(step=-1), "field 'step' must be a non-negative integer, got -1"),
    (lambda m: m.update(config=[1]), "field 'config' must be an object"),
    (lambda m: m.update(leaves={}), "field 'leaves' must be a non-empty object"),
    (lambda m: m["leaves"]["['params']['w']"].pop("sha256"), "the entry for ['params']['w'] is malformed"),
    (lambda m: m["leaves"]["['params']['w']"].update(shape=[3, 2]),
     "entry ['params']['w'] is float32[2, 3], meta.json says float32[3, 2]"),
    (lambda m: m["leaves"]["['params']['w']"].update(dtype="float64"), "meta.json says float64[2, 3]"),
    (lambda m: m["leaves"].pop("['params']['b']"), "has ['params']['b'], which meta.json does not list"),
    (lambda m: m["leaves"].update({"['extra']": m["leaves"]["['params']['b']"]}), "it lacks ['extra']"),
])
def test_wrong_metadata(tmp_path, edit, needle):
    run = _save(tmp_path)
    _edit_meta(run, edit)
    assert needle in _load_error(run)


def test_nan_state_is_refused_at_save_and_the_old_checkpoint_kept(tmp_path):
    run = _save(tmp_path)
    before = [open(p, "rb").read() for p in _files(run)]
    w = jnp.arange(6.0).reshape(2, 3).at[1, 2].set(jnp.inf)
    with pytest.raises(etprop.NumericalError, match=r"state entry \['params'\]\['w'\] holds 1 NaN/inf of 6"):
        save_checkpoint(run, _state(w=w), step=6, config={})
    assert [open(p, "rb").read() for p in _files(run)] == before
    assert not [f for f in os.listdir(os.path.join(run, "checkpoint")) if f.endswith(".tmp")]


def test_nan_in_saved_state_is_refused_on_load_naming_the_leaf(tmp_path):
    """A NaN whose checksum is right (the run had diverged): refused, naming the entry."""
    run = _save(tmp_path)

    def plant(arrays):
        arrays["['opt_state'][1]"] = arrays["['opt_state'][1]"].copy()
        arrays["['opt_state'][1]"][0, 0] = np.nan

    _rewrite_arrays(run, plant)
    with np.load(_files(run)[0]) as data:
        digest = hashlib.sha256(data["['opt_state'][1]"].tobytes()).hexdigest()
    _edit_meta(run, lambda m: m["leaves"]["['opt_state'][1]"].update(sha256=digest))
    msg = _load_error(run)
    assert "entry ['opt_state'][1] holds 1 NaN/inf of 6 values" in msg and "start a new run" in msg


@pytest.mark.parametrize("template,needle", [
    (dict(_state(), params={"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}),
     "entry ['params']['w'] is float32[2, 3], the run expects float32[4, 3]"),
    (dict(_state(), params={"w": jnp.zeros((2, 3), jnp.int32), "b": jnp.zeros(3)}), "the run expects int32[2, 3]"),
    (dict(_state(), extra=jnp.zeros(2)), "has no entry ['extra']"),
    ({k: v for k, v in _state().items() if k != "key"}, "has an entry ['key'] this run does not"),
])
def test_leaves_of_another_run_are_refused(tmp_path, template, needle):
    msg = _load_error(_save(tmp_path), template)
    assert needle in msg and "different model, algorithm, optimiser" in msg


def test_version_1_checkpoints_load_with_a_note(tmp_path):
    run = _save(tmp_path)

    def to_v1(m):
        m["version"] = 1
        m["leaves"] = {k: [v["shape"], v["dtype"]] for k, v in m["leaves"].items()}

    _edit_meta(run, to_v1)
    state, meta = load_checkpoint(run, _state())
    np.testing.assert_array_equal(state["params"]["w"], _state()["params"]["w"])
    assert "without checksums" in legacy_note(meta) and "not verified" in legacy_note(meta)
    _edit_meta(run, lambda m: m["leaves"]["['params']['w']"].__setitem__(0, [3, 2]))
    assert "meta.json says float32[3, 2]" in _load_error(run)  # still checked, but for the checksum


def test_save_failure_is_a_checkpoint_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").write_text("a file where the directory should be")
    with pytest.raises(CheckpointError, match="cannot write the checkpoint in .*checkpoint"):
        save_checkpoint(str(run), _state(), step=1, config={})


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = _save(tmp_path)
    before = [open(p, "rb").read() for p in _files(run)]

    def full_disk(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*free disk space"):
        save_checkpoint(run, _state(w=jnp.ones((2, 3))), step=6, config={})
    assert [open(p, "rb").read() for p in _files(run)] == before
    assert sorted(os.listdir(os.path.join(run, "checkpoint"))) == ["meta.json", "state.npz"]


def test_read_meta_gives_the_validated_metadata(tmp_path):
    meta = read_meta(_save(tmp_path, step=9))
    assert meta["step"] == 9 and meta["config"] == {"model": "gru"}


# -- through the command ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-update run (copied per test)."""
    out = str(tmp_path_factory.mktemp("ckpt") / "run")
    assert cli.main(["train", "--steps", "2", "--out", out] + TINY) == 0
    return out


def _snapshot(run):
    found = {}
    for root, _, files in os.walk(run):
        for name in files:
            p = os.path.join(root, name)
            found[os.path.relpath(p, run)] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return found


def _damage_state(run):
    path = _files(run)[0]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _damage_meta(run):
    with open(_files(run)[1], "w") as f:
        f.write('{"format": "etprop-checkpoint", "version": 2, "st')


def _flip_array(run):
    _rewrite_arrays(run, lambda a: a.__setitem__(next(iter(a)), a[next(iter(a))] * 2 + 1))


def _bad_config(run):
    _edit_meta(run, lambda m: m["config"].update(model="transformer"))


def _bad_metrics(run):
    with open(os.path.join(run, "metrics.csv"), "w") as f:
        f.write("step,loss,accuracy,grad_cos_bptt,grad_cos_bptt_min,wall_s\n1,0.5,oops,,,0.1\n")


@pytest.mark.parametrize("damage,needle", [
    (_damage_state, "state.npz cannot be read"),
    (_damage_meta, "meta.json is not valid JSON"),
    (_flip_array, "does not match its sha256 in meta.json"),
    (_bad_config, "meta.json: the saved settings are invalid (unknown model 'transformer'"),
    (_bad_metrics, "metrics.csv cannot be read"),
    (lambda run: os.remove(_files(run)[0]), "state.npz is missing"),
])
def test_cli_damaged_checkpoint_is_one_line_and_left_untouched(trained, tmp_path, capsys, damage, needle):
    run = str(tmp_path / "run")
    shutil.copytree(trained, run)
    damage(run)
    before = _snapshot(run)
    capsys.readouterr()
    assert cli.main(["train", "--resume", run, "--steps", "4", "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("etprop train: error: ") and needle in err, err
    assert "Traceback" not in err and run in err
    assert _snapshot(run) == before  # nothing rewritten, nothing added


def test_cli_resumes_a_version_1_checkpoint_with_a_note(trained, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(trained, run)

    def to_v1(m):
        m["version"] = 1
        m["leaves"] = {k: [v["shape"], v["dtype"]] for k, v in m["leaves"].items()}

    _edit_meta(run, to_v1)
    capsys.readouterr()
    assert cli.main(["train", "--resume", run, "--steps", "3", "--quiet", "--no-plots"]) == 0
    assert "format version 1, without checksums" in capsys.readouterr().out
    assert read_meta(run)["version"] == 2 and read_meta(run)["step"] == 3
