"""Every combination `etprop train` offers works: each task x model x algorithm trains.

The fast tests build and trace the update of every algorithm with every model (one task
each, the tasks taken in turn so that every task appears) in-process on tiny sizes, and run
it for one model per algorithm; the slow tests run the whole task x model x algorithm matrix
through the command (with the cosine to BPTT measured) and every online algorithm with
``--update step``.
"""

import math
import time

import brainstate
import brainunit as u
import jax
import jax.numpy as jnp
import pytest

import etprop
from etprop import cli
from etprop.algorithms.rules import canonical_name, rule_names
from etprop.experiment import ALGOS, MODELS, Run, TrainConfig, build_model
from etprop.experiment.runner import NOT_OFFERED, UNAVAILABLE
from etprop.tasks import TASKS

#: the smallest sizes of each task (a few time steps, a few input channels)
TINY = {
    "copying": {"length": 1, "delay": 0, "n_symbols": 2},
    "adding": {"length": 2},
    "dms": {"cue_steps": 1, "delay": 1, "recall_steps": 1, "pop_size": 1, "n_noise": 1},
    "evidence": {"n_cues": 1, "cue_steps": 1, "gap_steps": 0, "delay": 1, "recall_steps": 1, "pop_size": 1,
                 "n_noise": 1},
    "pattern": {"length": 3, "n_inputs": 2},
}
#: XLA options that halve the compile time of these one-update runs (numerics unchanged)
_QUICK_XLA = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
ALGORITHMS = sorted({canonical_name(a) for a in ALGOS})
TASK_NAMES = sorted(TASKS)
MODEL_NAMES = sorted(MODELS)
PAIRS = [(algo, model, TASK_NAMES[(i + j) % len(TASK_NAMES)])
         for i, algo in enumerate(ALGORITHMS) for j, model in enumerate(MODEL_NAMES)]


def test_the_matrix_covers_every_choice_of_the_command():
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices["train"]._actions if a.dest == "algo")
    assert set(train.choices) == set(ALGOS)
    assert {canonical_name(a) for a in train.choices} == set(ALGORITHMS)  # aliases run as their canonical rule
    assert not UNAVAILABLE, f"rules the registry names but this installation cannot load: {UNAVAILABLE}"
    assert {canonical_name(n) for n in rule_names()} == set(ALGORITHMS) | set(NOT_OFFERED)
    assert set(TINY) == set(TASKS)
    assert {t for _, _, t in PAIRS} == set(TASKS) and {m for _, m, _ in PAIRS} == set(MODELS)


#: the pairs whose update is also compiled by XLA and run: each algorithm once, the models in turn
EXECUTED = {(algo, MODEL_NAMES[i % len(MODEL_NAMES)]) for i, algo in enumerate(ALGORITHMS)}


@pytest.mark.parametrize("algo,model,task", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_every_algorithm_trains_every_model(algo, model, task):
    """Build the run and trace its update: every state leaf keeps its shape and dtype (so the
    state checkpoints and resumes). For one model per algorithm (`EXECUTED`) the update also
    runs (XLA at -O0, to halve its compile time): a finite loss and finite parameters. The slow
    matrix below runs every combination through the command."""
    cfg = TrainConfig(task=task, model=model, algo=algo, steps=1, batch=2, hidden=3, eval_every=0, ckpt_every=0,
                      task_args=TINY[task])
    with brainstate.environ.context(dt=1.0 * u.ms):
        run = Run(cfg)
        state = run.initial_state()
        lowered = run.train_step.lower(state, jnp.int32(1))
        new_aval, _ = lowered.out_info
        assert jax.tree.map(lambda a: (a.shape, a.dtype), new_aval) == jax.tree.map(lambda a: (a.shape, a.dtype),
                                                                                    state)
        if (algo, model) not in EXECUTED:
            return
        new, metrics = lowered.compile(_QUICK_XLA)(state, jnp.int32(1))
    assert math.isfinite(float(metrics["loss"]))
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(new["params"]))


@pytest.mark.parametrize("name", sorted(NOT_OFFERED))
def test_rules_the_command_does_not_offer_are_refused_at_parsing_with_the_reason(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--algo", name])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{name} is not offered by etprop train: {NOT_OFFERED[name]}" in err
    with pytest.raises(etprop.ArgumentError, match=f"--algo {name} is not offered by etprop train"):
        TrainConfig(algo=name).validate()


@pytest.mark.parametrize("model,readout", [("lif", "readout.weight['weight']"), ("lru", "readout.weight")])
def test_random_eprop_finds_the_readout_of_the_built_in_models(model, readout):
    """The leaky readout's traced weight (lif/alif) and the last of several output-only matrices
    (lru: C, then the readout) are found; with B = W_out^T e-prop's gradient is D-RTRL's."""
    import numpy as np
    from etprop.tasks import get_task

    task = get_task("evidence", **TINY["evidence"])
    with brainstate.environ.context(dt=1.0 * u.ms):
        batch = task.batch(jax.random.key(1), 2)

        def grads(algo, **options):
            net = build_model(model, task.n_in, 3, task.n_out)
            brainstate.nn.init_all_states(net, batch_size=2)
            learner = etprop.compile(net, algo, jnp.zeros((2, task.n_in)), batch_size=2, **options)
            _, h, o = learner.graph.mf.values()
            g = jax.jit(learner.sequence_fn(task.step_loss))(learner.params(), h, o, learner.etrace.value,
                                                             batch.inputs, batch.targets, batch.mask)[0]
            return learner, jax.tree.leaves(g)

        net = build_model(model, task.n_in, 3, task.n_out)
        brainstate.nn.init_all_states(net, batch_size=2)
        random = etprop.compile(net, etprop.EProp, jnp.zeros((2, task.n_in)), batch_size=2, feedback="random")
        leaf = random.readout_leaf
        assert random.graph.param_leaf_names[leaf] == readout
        if model == "lru":
            return  # the gradient identity below is the same code path; one model is enough
        w_out = u.get_mantissa(jax.tree.leaves(random.graph.mf.values()[0])[leaf])
        _, exact = grads(etprop.D_RTRL)
        _, given = grads(etprop.EProp, feedback=jnp.transpose(w_out))
    for a, b in zip(exact, given):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


FULL = [(t, m, a) for t in TASK_NAMES for m in MODEL_NAMES for a in ALGORITHMS]


@pytest.mark.slow
def test_every_task_model_algorithm_combination_trains(tmp_path, capsys):
    """The whole matrix through ``etprop train`` (2 updates, cosine to BPTT at each, checkpoint
    at the end); reports every failing combination at once."""
    failed, t0 = [], time.perf_counter()
    for task, model, algo in FULL:
        argv = ["train", "--task", task, "--model", model, "--algo", algo, "--steps", "2", "--batch", "2",
                "--hidden", "4", "--eval-every", "1", "--quiet", "--no-plots", "--out", str(tmp_path / "run")]
        for key, value in TINY[task].items():
            argv += ["--task-arg", f"{key}={value}"]
        try:
            rc = cli.main(argv)
        except Exception as e:  # noqa: BLE001 -- collect every failure, then report them together
            rc = f"{type(e).__name__}: {e}"
        err = capsys.readouterr().err.strip()
        if rc != 0:
            failed.append(f"{task}/{model}/{algo}: {rc} {err}")
    with capsys.disabled():
        print(f"\n{len(FULL)} combinations in {time.perf_counter() - t0:.0f} s")
    assert not failed, "\n".join(failed)


@pytest.mark.slow
@pytest.mark.parametrize("algo,model,task", [p for p in PAIRS if p[0] != "bptt"],
                         ids=["-".join(p) for p in PAIRS if p[0] != "bptt"])
def test_every_online_algorithm_updates_at_every_step(tmp_path, algo, model, task):
    """``--update step --carry-state`` (an optimiser update per time step, one stream), with a
    checkpoint after each update."""
    argv = ["train", "--task", task, "--model", model, "--algo", algo, "--steps", "2", "--batch", "2", "--hidden",
            "3", "--eval-every", "0", "--ckpt-every", "1", "--update", "step", "--carry-state", "--lr", "1e-3",
            "--quiet", "--no-plots", "--out", str(tmp_path / "run")]
    for key, value in TINY[task].items():
        argv += ["--task-arg", f"{key}={value}"]
    assert cli.main(argv) == 0
