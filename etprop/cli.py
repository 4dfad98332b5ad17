"""The ``etprop`` command (also ``python -m etprop``).

``etprop train`` trains a built-in network on a built-in task, online or with BPTT, and
writes metrics, figures and checkpoints; ``etprop tasks`` / ``etprop models`` /
``etprop algos`` list what can be chosen. Errors in the arguments -- a damaged or
incompatible ``--resume`` checkpoint included -- are one line on stderr (exit status 2), never
a traceback; a file-system error is one line too (exit status 1).
"""

from __future__ import annotations

import argparse
import sys

from etprop.errors import EtpropError

__all__ = ["main", "build_parser"]

_EPILOG = """\
examples:
  etprop train                                   # the demo: copying task, GRU, D-RTRL
  etprop train --task evidence --out runs/evidence   # e-prop's cue accumulation: ALIF net, 600 updates
  etprop train --task copying --algo bptt --out runs/bptt   # the exact reference, same budget
  etprop train --resume runs/demo --steps 600    # continue a run exactly where it stopped

outputs in --out: metrics.csv (step, loss, accuracy, grad_cos_bptt, wall_s), curves.png
(loss, accuracy, cosine of the online gradient to BPTT), activity.png (spiking models: spike
raster, membrane potentials, outputs), checkpoint/ (parameters, optimiser state, hidden
states and eligibility traces; see etprop.experiment.checkpoint for the format).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _checked(cast, ok, what: str):
    """An argparse type: ``cast`` the text, then require ``ok(value)``; errors say ``what``."""
    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive number")
_decay = _checked(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")


def _task_arg(text: str) -> tuple[str, int | float]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. delay=20), got {text!r}")
    key, value = text.split("=", 1)
    try:
        num = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: expected a number, got {value!r}") from None
    return key.strip(), int(num) if num.is_integer() and "." not in value else num


def _algo_name(text: str) -> str:
    """``--algo``: a rule the command offers; a known rule it does not offer is refused with the reason."""
    from etprop.experiment.runner import refusal

    why = refusal(text)
    if why:
        raise argparse.ArgumentTypeError(why.split(" ", 1)[1])  # argparse prefixes "argument --algo:"
    return text


def _add_run_options(p, d) -> None:
    """``etprop train``'s options for where it runs, what it measures and writes, and resuming."""
    p.add_argument("--eval-every", type=_nonneg_int, default=d.eval_every,
                   help=f"measure the cosine of the online gradient to BPTT every N updates, 0 for never "
                        f"(default {d.eval_every})")
    p.add_argument("--devices", type=_positive_int, default=None,
                   help="train data parallel on N devices: the batch is split over them, the gradient reduced "
                        "by XLA (on a CPU, N host devices are made; --batch must be a multiple of N; default 1; "
                        "with --resume: continue a run on another device count)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="several processes (one per host) under jax.distributed: the address of process 0; "
                        "every process runs the same command with its own --process-id (docs/scaling.md)")
    p.add_argument("--num-processes", type=_positive_int, default=None,
                   help="with --coordinator: how many processes take part")
    p.add_argument("--process-id", type=_nonneg_int, default=None,
                   help="with --coordinator: this process's number, 0 .. N-1 (process 0 writes the files)")
    p.add_argument("--eval-batch", type=_positive_int, default=d.eval_batch,
                   help=f"held-out sequences of the final evaluation (default {d.eval_batch})")
    p.add_argument("--ckpt-every", type=_nonneg_int, default=d.ckpt_every,
                   help=f"checkpoint every N updates, 0 for only at the end (default {d.ckpt_every})")
    p.add_argument("--update", choices=["sequence", "step"], default=d.update,
                   help="'sequence': one optimiser update per batch from the online gradient accumulated "
                        "over the sequence (default); 'step': an update at every time step (true online "
                        "learning; use a smaller --lr)")
    p.add_argument("--carry-state", action="store_true",
                   help="do not reset hidden states and traces between batches (one continuing stream)")
    p.add_argument("--task-arg", type=_task_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="override a task size, e.g. --task-arg delay=20 (repeatable)")
    p.add_argument("--out", default=None, help="output directory (default runs/<task>-<model>-<algo>)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run checkpointed in DIR with its saved settings")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def build_parser() -> argparse.ArgumentParser:
    from etprop.experiment.models import MODELS
    from etprop.experiment.runner import ALGOS, LR_FLOOR, SCHEDULES, TrainConfig
    from etprop.tasks import TASKS

    d = TrainConfig()
    parser = _Parser(prog="etprop", description="Online training of recurrent and spiking networks by "
                                                "eligibility-trace propagation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("train", help="train a built-in model on a built-in task",
                       description="Train a built-in network on a built-in task. Each update uses one batch of "
                                   "sequences; online algorithms carry eligibility traces forward through the "
                                   "sequence (memory independent of its length), BPTT is the exact reference.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default=d.task, help=f"task (default {d.task})")
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help=f"network (default {d.model}, or the task's: etprop tasks)")
    p.add_argument("--algo", type=_algo_name, choices=sorted(ALGOS), default=d.algo,
                   help=f"learning algorithm (default {d.algo})")
    p.add_argument("--steps", type=_positive_int, default=None, help=f"number of updates (default {d.steps} or the "
                                                                      f"task's; "
                                                                      f"with --resume: a new total)")
    p.add_argument("--batch", type=_positive_int, default=None,
                   help=f"sequences per update (default {d.batch}, or the task's)")
    p.add_argument("--hidden", type=_positive_int, default=None,
                   help=f"hidden units (default {d.hidden}, or the task's)")
    p.add_argument("--seed", type=_nonneg_int, default=d.seed, help=f"seed of weights and data (default {d.seed})")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help=f"Adam learning rate (default {d.lr}, or the task's)")
    p.add_argument("--decay", type=_decay, default=None,
                   help="ES-D-RTRL / hybrid trace decay in (0, 1) (default: the algorithm's, 0.9)")
    p.add_argument("--clip", type=_positive_float, default=d.clip, help=f"gradient-norm clip (default {d.clip})")
    floor = f"--lr/{round(1 / LR_FLOOR)}"
    p.add_argument("--schedule", choices=list(SCHEDULES), default=d.schedule,
                   help=f"learning rate: 'constant' (--lr throughout) or 'cosine' (half a cosine from --lr down "
                        f"to {floor} over --schedule-steps updates, then {floor}; default {d.schedule})")
    p.add_argument("--schedule-steps", type=_positive_int, default=None,
                   help=f"updates over which --schedule cosine decays the learning rate (default "
                        f"{d.schedule_steps}, or the task's --steps; fixed, so that --resume --steps extends "
                        f"a run exactly)")
    _add_run_options(p, d)
    sub.add_parser("tasks", help="list the tasks")
    sub.add_parser("models", help="list the models")
    sub.add_parser("algos", help="list the algorithms")
    g = sub.add_parser("graph", help="draw a built-in model's compiled graph as an SVG image",
                       description="Build a built-in network as etprop train does, compile it with the algorithm "
                                   "and write learner.report() as an SVG image (etprop.graph.picture): hidden "
                                   "groups, ETP operators and their weights, which are traced and by which rule, "
                                   "which are not and why, and the report's notes.")
    g.add_argument("--model", choices=sorted(MODELS), default=d.model, help=f"network (default {d.model})")
    g.add_argument("--algo", type=_algo_name, choices=sorted(ALGOS), default=d.algo,
                   help=f"learning algorithm (default {d.algo})")
    g.add_argument("--task", choices=sorted(TASKS), default=d.task,
                   help=f"task whose input and output sizes the network takes (default {d.task})")
    g.add_argument("--hidden", type=_positive_int, default=d.hidden, help=f"hidden units (default {d.hidden})")
    g.add_argument("--out", default=None, metavar="FILE.svg",
                   help="file to write (default graph-<model>-<algo>.svg; '-' for standard output)")
    return parser


def _train(args) -> int:
    from etprop.experiment.runner import TrainConfig, train

    if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
        _join(args)
    elif (args.devices or 1) > 1:
        _host_devices(args.devices)
    if args.resume is not None:
        train(out=args.out, resume=args.resume, steps=args.steps, plots_enabled=not args.no_plots,
              progress=not args.quiet, devices=args.devices)
        return 0
    # options not given (None) take the task's settings (Task.train_defaults), else the global ones
    cfg = TrainConfig(task=args.task, model=args.model, algo=args.algo, batch=args.batch, hidden=args.hidden,
                      seed=args.seed, lr=args.lr, decay=args.decay, clip=args.clip, schedule=args.schedule,
                      schedule_steps=args.schedule_steps, eval_every=args.eval_every, eval_batch=args.eval_batch,
                      ckpt_every=args.ckpt_every, carry_state=args.carry_state, update=args.update,
                      task_args=dict(args.task_arg), devices=args.devices or 1, steps=args.steps)
    out = args.out or f"runs/{cfg.task}-{cfg.model}-{cfg.algo}"
    train(cfg, out=out, plots_enabled=not args.no_plots, progress=not args.quiet)
    return 0


def _join(args) -> None:
    """Join a multi-process run (`etprop.experiment.distributed`); ``--devices`` becomes all of
    the processes' devices where it is not given."""
    from etprop.errors import ArgumentError
    from etprop.experiment.distributed import start

    missing = [f"--{k.replace('_', '-')}" for k in ("coordinator", "num_processes", "process_id")
               if getattr(args, k) is None]
    if missing:
        raise ArgumentError(f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and "
                            f"--process-id K together; missing {', '.join(missing)}")
    start(args.coordinator, args.num_processes, args.process_id, args.devices)
    if args.devices is None:
        import jax

        args.devices = jax.device_count()


def _host_devices(n: int) -> None:
    """On a CPU, make ``n`` host devices (only possible before jax starts its backends)."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices or 1))
    except RuntimeError:  # jax has started: the devices it has are the ones there are
        pass


def _graph(args) -> int:
    import brainstate
    import brainunit as u

    from etprop.experiment.runner import Run, TrainConfig
    from etprop.graph.picture import learner_svg

    cfg = TrainConfig(task=args.task, model=args.model, algo=args.algo, hidden=args.hidden, eval_every=0)
    with brainstate.environ.context(dt=1.0 * u.ms):  # as etprop train does (spiking models: 1 ms steps)
        svg = learner_svg(Run(cfg).learner)
    if args.out == "-":
        sys.stdout.write(svg)
        return 0
    out = args.out or f"graph-{cfg.model}-{cfg.algo}.svg"
    with open(out, "w", encoding="utf-8") as f:
        f.write(svg)
    print(f"wrote {out}")
    return 0


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _list(command: str) -> int:
    if command == "models":
        from etprop.experiment import models
        table = models.__doc__[models.__doc__.index("====="):]
        print(table.split("\n\n")[0])
        return 0
    if command == "tasks":
        from etprop.tasks import TASKS as choices
        for name, cls in sorted(choices.items()):
            print(f"{name:10s} {_summary(cls.__doc__)}")
            if cls.train_defaults:
                given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cls.train_defaults.items())
                print(f"{'':10s} etprop train --task {name} runs with: {given}")
        return 0
    from etprop.algorithms.rules import canonical_name
    from etprop.experiment.runner import ALGOS as choices
    from etprop.experiment.runner import NOT_OFFERED
    aliases = {}
    for name in choices:
        if canonical_name(name) != name:
            aliases.setdefault(canonical_name(name), []).append(name)
    for name, cls in sorted(choices.items()):
        if canonical_name(name) == name:
            also = f" (also: {', '.join(sorted(aliases[name]))})" if name in aliases else ""
            print(f"{name:16s} {_summary(cls.__doc__)}{also}")
    from etprop.experiment.runner import UNAVAILABLE
    missing = sorted(NOT_OFFERED) + sorted(UNAVAILABLE)
    print(f"(not offered here: {', '.join(missing)}; etprop train --algo NAME says why)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "graph":
            return _graph(args)
        return _list(args.command)
    except EtpropError as e:
        print(f"etprop {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused: a directory that cannot be made, a full disk
        print(f"etprop {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
