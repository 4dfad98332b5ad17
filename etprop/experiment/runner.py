"""Train a built-in network on a built-in task with any algorithm: the engine of ``etprop train``.

One update = one batch of sequences: the learner scans the sequence forward, carrying
eligibility traces (memory independent of the sequence length), and returns the gradient
accumulated over the sequence; an optax optimiser applies it. Batch generation, the scan and
the update are one jitted function of ``(state, step)``, and the data of step ``k`` depend only
on ``(seed, k)``, so a run resumed from a checkpoint reproduces the uninterrupted run exactly.

The run state (`save_checkpoint`) is ``{"params", "opt_state", "hidden", "others", "traces"}``.
Hidden states and traces are reset before each sequence (independent trials), unless
``carry_state``: then the trials form one stream and the network and its traces run on
across updates.

The learning rate is ``lr`` throughout (``schedule="constant"``) or, by default
(``schedule="cosine"``), half a cosine from ``lr`` down to ``lr / 10`` over the first
``schedule_steps`` updates, then ``lr / 10``: a function of the update number only (the count
is in the optimiser state), so a run extended with ``--resume --steps`` continues the same
schedule. The final accuracy is measured on ``eval_batch`` held-out sequences (a fixed key).
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import time

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np

import etprop
from etprop.algorithms.rules import canonical_name
from etprop.errors import ArgumentError, CheckpointError
from etprop.experiment import plots
from etprop.experiment.checkpoint import CHECKPOINT_DIR, legacy_note, load_checkpoint, read_meta, save_checkpoint
from etprop.experiment.distributed import check_devices, host_value, is_writer, local_copy
from etprop.experiment.config import (ALGOS, LR_FLOOR, NOT_OFFERED, SCHEDULES, UNAVAILABLE, TrainConfig,
                                      algo_options, learning_rate, refusal)
from etprop.experiment.metrics import append_rows, read_rows, write_rows
from etprop.experiment.models import SPIKING, build_model
from etprop.experiment.progress import Progress, format_seconds
from etprop.tasks import get_task

# the settings, the offered algorithms and the schedule are etprop.experiment.config's (imported here as before)
__all__ = ["TrainConfig", "ALGOS", "NOT_OFFERED", "UNAVAILABLE", "refusal", "train", "Run", "SCHEDULES", "LR_FLOOR"]


def _cos(va, vb):
    return jnp.dot(va, vb) / (jnp.linalg.norm(va) * jnp.linalg.norm(vb) + 1e-30)


def _cosines(a: dict, b: dict) -> tuple[jax.Array, jax.Array]:
    """Cosine of two gradients over all parameters, and the smallest per-parameter cosine
    (the global one is dominated by the largest gradients, often a readout's exact one)."""
    la = [jnp.ravel(x) for x in jax.tree.leaves(a)]
    lb = [jnp.ravel(x) for x in jax.tree.leaves(b)]
    per = jnp.stack([jnp.where(jnp.linalg.norm(y) > 0, _cos(x, y), 1.0) for x, y in zip(la, lb)])
    return _cos(jnp.concatenate(la), jnp.concatenate(lb)), jnp.min(per)


def device_mesh(n: int, batch: int):
    """A one-axis mesh ``('data',)`` over the first ``n`` devices (None for one device); with
    several processes (`etprop.experiment.distributed`) over all of theirs."""
    check_devices(n)
    if n == 1:
        return None
    devices = jax.devices()
    if len(devices) < n:
        raise ArgumentError(f"--devices {n}: only {len(devices)} {devices[0].platform} device(s) here; on a CPU "
                            f"the command sets jax_num_cpu_devices itself when jax has not started yet")
    if batch % n:
        raise ArgumentError(f"--batch {batch} does not split over --devices {n}: use a multiple of {n}")
    return jax.sharding.Mesh(np.array(devices[:n]), ("data",))


class Run:
    """A built run: task, model, learner, optimiser and the jitted step functions.

    Use `train` for the whole loop; `Run` is exposed for notebooks and tests.
    """

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.task = get_task(cfg.task, **cfg.task_args)
        with brainstate.environ.context(dt=self.dt):
            self._build()

    @property
    def dt(self):
        """The step of the spiking models: the task's ``dt`` (ms) where it has one, else 1 ms.
        Everything the run traces (the learners, the update, the evaluation) is traced with it."""
        return float(getattr(self.task, "dt", 1.0)) * u.ms

    def _build(self):
        import optax

        cfg, task, B = self.cfg, self.task, self.cfg.batch
        self.model = build_model(cfg.model, task.n_in, cfg.hidden, task.n_out, seed=cfg.seed,
                                 dt=float(getattr(task, "dt", 1.0)))
        brainstate.nn.init_all_states(self.model, batch_size=B)
        x0 = jnp.zeros((B, task.n_in), jnp.float32)
        self.mesh = mesh = device_mesh(cfg.devices, B)
        self.learner = etprop.compile(self.model, ALGOS[cfg.algo], x0, batch_size=B, mesh=mesh,
                                      **algo_options(cfg))
        lr = learning_rate(cfg, task.n_steps if cfg.update == "step" else 1)
        self.optimizer = optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adam(lr))
        self.data_key = jax.random.key(cfg.seed + 1)
        _, hidden0, self.others0 = self.learner.graph.mf.values()
        # the reset values are closed over by the jitted functions; with several processes a
        # closure may not hold an array spread over other processes' devices: whole local copies
        self.hidden0, self.traces0 = local_copy((hidden0, self.learner.etrace.value))
        self._seq = self.learner.sequence_fn(task.step_loss, return_out=True)
        self._bptt = None
        if cfg.eval_every and canonical_name(cfg.algo) != "bptt":
            # a second learner on the same model: BPTT's gradient of the same batch, for the cosine
            self._bptt = etprop.compile(self.model, etprop.BPTT, x0, batch_size=B, mesh=mesh)
            self.grad_cosine = jax.jit(self._grad_cosine_fn())
        self.train_step = jax.jit(self._online_step_fn() if cfg.update == "step" else self._sequence_step_fn())
        self.evaluate = jax.jit(self._evaluate_fn())

    def _batch(self, step):
        """The batch of update ``step``: a function of ``(seed, step)`` only."""
        return self.task.batch(jax.random.fold_in(self.data_key, step), self.cfg.batch)

    def _start(self, state):
        """Hidden states, other states and traces a sequence starts from."""
        if self.cfg.carry_state:
            return state["hidden"], state["others"], state["traces"]
        return self.hidden0, state["others"], self.traces0

    def _sequence_step_fn(self):
        """``(state, step) -> (state, metrics)``: one optimiser update from the online gradient
        accumulated over the batch's sequence."""
        task, optimizer, seq = self.task, self.optimizer, self._seq

        def train_step(state, step):
            batch = self._batch(step)
            h, o, tr = self._start(state)
            grads, losses, h, o, tr, outs = seq(state["params"], h, o, tr, batch.inputs, batch.targets, batch.mask)
            norm = jnp.maximum(jnp.sum(batch.mask), 1.0)
            grads = jax.tree.map(lambda g: g / norm, grads)
            updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
            params = jax.tree.map(lambda p, d: p + d, state["params"], updates)
            metrics = {"loss": jnp.sum(losses) / norm, "accuracy": task.accuracy(outs, batch)}
            new = {"params": params, "opt_state": opt_state, "hidden": h, "others": o, "traces": tr}
            return new, metrics

        return train_step

    def _online_step_fn(self):
        """True online learning: the optimiser updates the parameters at every time step, each
        update from that step's online gradient (traces carried through the sequence): the
        learner's own per-step driver (`online_fn`)."""
        task = self.task
        online = self.learner.online_fn(task.step_loss, self.optimizer, return_out=True)

        def online_train_step(state, step):
            batch = self._batch(step)
            h, o, tr = self._start(state)
            norm = jnp.maximum(jnp.sum(batch.mask), 1.0)
            params, opt_state, h, o, tr, losses, outs = online(state["params"], state["opt_state"], h, o, tr,
                                                               batch.inputs, batch.targets, batch.mask / norm)
            metrics = {"loss": jnp.sum(losses), "accuracy": task.accuracy(outs, batch)}
            return {"params": params, "opt_state": opt_state, "hidden": h, "others": o, "traces": tr}, metrics

        return online_train_step

    def _grad_cosine_fn(self):
        """``(state, step) -> (cosine, worst per-parameter cosine)`` of the online gradient of
        update ``step``'s batch to BPTT's, from reset states."""
        seq, ref = self._seq, self._bptt.sequence_fn(self.task.step_loss)
        bptt_traces = local_copy(self._bptt.etrace.value)

        def grad_cosine(state, step):
            batch = self._batch(step)
            args = (batch.inputs, batch.targets, batch.mask)
            g_on = seq(state["params"], self.hidden0, state["others"], self.traces0, *args)[0]
            g_ref = ref(state["params"], self.hidden0, state["others"], bptt_traces, *args)[0]
            return _cosines(g_on, g_ref)

        return grad_cosine

    def _evaluate_fn(self):
        """``(params, others) -> (accuracy, batch, outputs)``: the accuracy on ``eval_batch``
        held-out sequences (a fixed key), run ``batch`` at a time from reset states; ``batch``
        and ``outputs`` are the first ``batch`` of them (for the figures)."""
        eval_key = jax.random.key(self.cfg.seed + 10_000)
        B, n = self.cfg.batch, self.cfg.eval_batch
        chunks = -(-n // B)

        def evaluate(params, others):
            held = self.task.batch(eval_key, chunks * B)
            split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], chunks, B, *a.shape[2:]), 1, 0)

            def forward(xy):
                return self._seq(params, self.hidden0, others, self.traces0, *xy, held.mask)[-1]

            outs = jax.lax.map(forward, (split(held.inputs), split(held.targets)))  # (chunks, T, B, n_out)
            outs = jnp.moveaxis(outs, 0, 1).reshape(outs.shape[1], chunks * B, *outs.shape[3:])
            trim = lambda a, m: type(held)(a.inputs[:, :m], a.targets[:, :m], a.mask)
            return self.task.accuracy(outs[:, :n], trim(held, n)), trim(held, B), outs[:, :B]

        return evaluate

    def initial_state(self) -> dict:
        params = self.learner.params()
        return self.place({"params": params, "opt_state": self.optimizer.init(params), "hidden": self.hidden0,
                           "others": self.others0, "traces": self.traces0})

    def place(self, state: dict) -> dict:
        """The run state on the run's devices: parameters and optimiser state replicated, hidden
        states and traces where the learner keeps them (unchanged on one device)."""
        if self.mesh is None:
            return state
        rep = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        h, o, tr = self.learner.constrain_carry(state["hidden"], state["others"], state["traces"])
        fixed = jax.device_put({k: state[k] for k in ("params", "opt_state")}, rep)  # every process its slices
        return {**fixed, "hidden": h, "others": o, "traces": tr}

    def compile(self, state) -> int | None:
        """Compile the update ahead of time (so the first step's time is the step's own);
        returns the bytes of its XLA temporaries (None where XLA does not say)."""
        with brainstate.environ.context(dt=self.dt):
            compiled = self.train_step.lower(state, jnp.int32(0)).compile()
            self.train_step = compiled
            if self._bptt is not None:
                self.grad_cosine = self.grad_cosine.lower(state, jnp.int32(0)).compile()
        try:
            return int(compiled.memory_analysis().temp_size_in_bytes)
        except Exception:  # noqa: BLE001 -- memory analysis is optional per backend
            return None

    def record(self, params, inputs) -> tuple[dict, np.ndarray]:
        """Run one batch forward with ``params`` from reset states; returns the network's
        ``observe()`` arrays and outputs for sample 0, time leading."""
        self.learner.set_params(params)
        self.learner.reset()
        model = self.model

        def body(x):
            out = model(x)
            return out, model.observe()

        with brainstate.environ.context(dt=self.dt):
            outs, obs = brainstate.transform.jit(lambda xs: brainstate.transform.for_loop(body, xs))(inputs)
        self.learner.reset()
        pick = lambda a: host_value(u.get_mantissa(a))[:, 0]
        return {k: pick(v) for k, v in obs.items()}, pick(outs)


def _config_dict(run: Run) -> dict:
    """The settings a checkpoint is resumed with: the run's `TrainConfig` with its task's
    parameters in full (``task_args``), so that a resumed run keeps its task when a later etprop
    changes the task's defaults."""
    saved = dataclasses.asdict(run.cfg)
    saved["task_args"] = {k: list(v) if isinstance(v, tuple) else v for k, v in run.task.config.items()}
    return saved


def _task_note(run: Run, meta: dict) -> str | None:
    """A line for a checkpoint whose saved task parameters are not complete (written before
    checkpoints held them all): the parameters it resumes with from this etprop's defaults."""
    missing = sorted(set(run.task.config) - set(meta["config"].get("task_args") or {}))
    if not missing:
        return None
    now = ", ".join(f"{k}={run.task.config[k]!r}" for k in missing)
    return (f"note: this checkpoint does not record every parameter of task {run.cfg.task!r}; it continues with "
            f"this etprop's defaults for them ({now}); if the run was started with other values, pass them with "
            f"--task-arg in a new run")


def _peak_memory_text(step_temp: int | None) -> str:
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return f"peak device memory {stats['peak_bytes_in_use'] / 2 ** 20:.1f} MiB"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    text = f"peak RSS {rss:.0f} MiB"
    return text + (f", update temporaries {step_temp / 2 ** 20:.2f} MiB" if step_temp is not None else "")


def train(cfg: TrainConfig | None = None, *, out: str | None = None, resume: str | None = None,
          steps: int | None = None, plots_enabled: bool = True, progress: bool = True, log=print,
          on_update=None, devices: int | None = None) -> dict:
    """Train, writing ``metrics.csv``, PNG figures and checkpoints to ``out``.

    Args:
      cfg: the run's configuration (ignored with ``resume``, which reads it back).
      out: output directory (with ``resume``: defaults to the resumed directory).
      resume: a directory holding a checkpoint; training continues from it exactly. A
        checkpoint that cannot be used raises `CheckpointError` before anything is written.
      steps: with ``resume``, a new total number of updates (to extend a finished run).
      devices: with ``resume``, the device count to continue on (checkpoints hold whole arrays,
        gathered to the host, so any count resumes any other).
      plots_enabled, progress: figures and the progress line.
      log: where summary lines go.
      on_update: called as ``on_update(k, state, metrics)`` after update ``k`` and its checkpoint
        if any (its metrics as floats, the run state after it), e.g. to sample memory along a
        long run.

    Returns:
      ``{"accuracy", "loss", "steps", "wall_s", "out", "chance", ...}`` of the final state.
    """
    if not is_writer():  # several processes: process 0 alone logs and writes files
        log, progress = (lambda *a, **k: None), False
    meta = None
    if resume is not None:
        meta = read_meta(resume)
        cfg = _resumed_config(meta, resume, steps, devices)
        out = out or resume
    elif cfg is None:
        cfg = TrainConfig()
    if out is None:
        raise ArgumentError("give an output directory (--out DIR)")
    with brainstate.environ.context(dt=1.0 * u.ms):  # Run traces its own functions with the task's dt
        t_start = time.perf_counter()
        run = Run(cfg)
        state, start, rows = run.initial_state(), 0, []
        if resume is not None:  # everything is read and checked before anything is written
            state, start, rows = _resume(run, state, resume, meta, log)
        if is_writer():
            os.makedirs(out, exist_ok=True)
        return _train(run, state, start, rows, out, t_start, plots_enabled, progress, log, on_update)


def _resumed_config(meta: dict, resume: str, steps: int | None, devices: int | None = None) -> TrainConfig:
    """The `TrainConfig` saved in ``meta`` (``--steps``: a new total; ``--devices``: another device
    count, the checkpoint holding whole arrays), checked."""
    path = os.path.join(resume, CHECKPOINT_DIR, "meta.json")
    saved = dict(meta["config"])
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise CheckpointError(f"{path}: the saved settings have unknown keys {unknown} (written by another version "
                              f"of etprop?); resume with that version or start a new run")
    saved.setdefault("schedule", "constant")  # written before schedules existed: trained at a constant lr
    cfg = TrainConfig(**saved)
    if steps is not None:
        cfg.steps = int(steps)
    if devices is not None:
        cfg.devices = int(devices)
    try:
        cfg.validate()
        get_task(cfg.task, **cfg.task_args)
    except ArgumentError as e:
        raise CheckpointError(f"{path}: the saved settings are invalid ({e}); start a new run") from None
    return cfg


def _resume(run: Run, state, resume: str, meta: dict, log) -> tuple[dict, int, list]:
    """The state, update count and metrics rows of the run checkpointed in ``resume``."""
    state, meta = load_checkpoint(resume, state)
    state = run.place(state)
    start = int(meta["step"])
    if run.cfg.steps <= start:
        raise ArgumentError(f"the run in {resume!r} already has {start} updates; pass --steps N with N > "
                            f"{start} to continue it")
    rows = read_rows(os.path.join(resume, "metrics.csv"), start)
    for note in (legacy_note(meta), _task_note(run, meta)):
        if note:
            log(note)
    log(f"resumed from {resume} at update {start}")
    return state, start, rows


def _train(run: Run, state, start: int, rows: list, out: str, t_start: float, plots_enabled, progress, log,
           on_update=None):
    cfg = run.cfg
    t_compile = time.perf_counter()
    step_temp = run.compile(state)
    log(f"etprop train: task={cfg.task} model={cfg.model} algo={cfg.algo} hidden={cfg.hidden} batch={cfg.batch} "
        f"T={run.task.n_steps} updates={cfg.steps} (compiled in {time.perf_counter() - t_compile:.1f} s)")
    state, last = _loop(run, state, start, rows, out, t_start, progress, log, on_update)
    with brainstate.environ.context(dt=run.dt):
        acc, batch, _ = run.evaluate(state["params"], state["others"])
    acc = float(acc)
    figures = _figures(run, state, batch, rows, out, log) if plots_enabled and rows else []
    wall = time.perf_counter() - t_start
    summary = {"task": cfg.task, "model": cfg.model, "algo": cfg.algo, "steps": cfg.steps, "accuracy": acc,
               "chance": run.task.chance, "loss": last["loss"], "wall_s": wall, "out": out, "figures": figures,
               "eval_batch": cfg.eval_batch}
    log(f"done: task={cfg.task} model={cfg.model} algo={cfg.algo} updates={cfg.steps} "
        f"eval accuracy={acc:.3f} on {cfg.eval_batch} held-out (chance {run.task.chance:.3f}) "
        f"train loss={last['loss']:.4f} "
        f"wall {format_seconds(wall)} ({wall:.1f} s) {_peak_memory_text(step_temp)} -> {out}")
    return summary


def _loop(run: Run, state, start: int, rows: list, out: str, t_start: float, progress, log, on_update=None):
    """Updates ``start + 1 .. cfg.steps``, appending to ``rows``; checkpoints every
    ``ckpt_every`` updates, at the end and on Ctrl-C. Returns ``(state, last metrics)``."""
    cfg = run.cfg
    metrics_path = os.path.join(out, "metrics.csv")
    bar = Progress(cfg.steps, start=start, enabled=progress)
    config = _config_dict(run)
    last = {"loss": float("nan"), "accuracy": float("nan")}
    done = start
    writer = is_writer()  # several processes: process 0 writes the rows (every process saves: a gather)
    if writer:
        write_rows(metrics_path, rows)  # the rows up to the checkpoint resumed from (none for a new run)
    written = len(rows)

    def flush():  # the rows since the last checkpoint, before the next one: each row is written once
        nonlocal written
        if writer:
            append_rows(metrics_path, rows[written:])
        written = len(rows)

    try:
        for k in range(start + 1, cfg.steps + 1):
            cos = cos_min = ""
            if run._bptt is not None and cfg.eval_every and (k - 1) % cfg.eval_every == 0:
                # the gradient at the parameters this update uses
                cos, cos_min = (float(c) for c in run.grad_cosine(state, jnp.int32(k)))
            new_state, m = run.train_step(state, jnp.int32(k))
            last = {key: float(v) for key, v in m.items()}  # waits for the step to finish
            if not all(math.isfinite(v) for v in last.values()):
                raise etprop.NumericalError(f"update {k}: loss or accuracy is NaN/inf ({last}); lower --lr "
                                            f"(now {cfg.lr}) or --clip")
            state, done = new_state, k
            rows.append({"step": k, "loss": last["loss"], "accuracy": last["accuracy"],
                         "grad_cos_bptt": cos, "grad_cos_bptt_min": cos_min, "wall_s": time.perf_counter() - t_start})
            bar.update(k, loss=last["loss"], acc=last["accuracy"])
            if cfg.ckpt_every and k % cfg.ckpt_every == 0 and k < cfg.steps:
                flush()
                save_checkpoint(out, state, step=k, config=config)
            if on_update is not None:
                on_update(k, state, last)
    except KeyboardInterrupt:
        bar.close()
        rows[:] = [r for r in rows if r["step"] <= done]
        flush()
        save_checkpoint(out, state, step=done, config=config)
        log(f"interrupted after update {done}; continue with: etprop train --resume {out}")
        raise
    bar.close()
    flush()
    save_checkpoint(out, state, step=cfg.steps, config=config)
    return state, last


def _figures(run: Run, state, batch, rows: list, out: str, log) -> list[str]:
    """``curves.png`` (and ``activity.png`` for spiking models); the paths written (process 0
    writes them; with several processes every process takes part in the recording)."""
    cfg = run.cfg
    if not plots.available():
        log("matplotlib is not installed: no figures (pip install 'etprop[examples]')")
        return []
    recorded = run.record(state["params"], batch.inputs) if cfg.model in SPIKING else None
    if not is_writer():
        return []
    title = f"{cfg.task} / {cfg.model} / {cfg.algo}"
    path = os.path.join(out, "curves.png")
    plots.plot_curves(path, rows, title=title, chance=run.task.chance,
                      metric_name="accuracy" if run.task.kind == "classification" else "1 - NMSE")
    figures = [path]
    if recorded is not None:
        path = os.path.join(out, "activity.png")
        plots.plot_activity(path, *recorded, title=title)
        figures.append(path)
    return figures
