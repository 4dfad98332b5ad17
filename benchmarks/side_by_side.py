"""Two commits of etprop timed side by side on one machine: `benchmarks.run` in both trees, interleaved.

The core rebuild promised no slow-down: the benchmarks of the commit before it and of the rebuilt
tree run in one sitting, alternating (round 1: before then after; round 2: after then before, ...)
so that a drift of the machine's load hits both sides alike. The other commit is checked out in a
git worktree (``--worktree``, created if absent); each run imports etprop from its own tree (the
script checks ``etprop.__file__``). Per configuration and contender: the median over rounds of
each side's median ms per sequence, the ratio after / before, and whether it lies within
``--tolerance``.

    python -m benchmarks.side_by_side --rev c14772d [--rounds 2] [--budget-s 10]
        [--spec "lif --hidden 128 512 --T 500 --batch 16" --spec "gru --hidden 256 --T 100 --batch 32"]

Only the contenders both trees measure are compared (braintrace's rows are left out: they time
the same code on both sides). Prints a markdown table with the machine and both revisions; with
``--out`` also writes every run's JSON into that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SPECS = ("lif --hidden 128 512 --T 500 --batch 16", "gru --hidden 256 --T 100 --batch 32")
COMMON = ("--device", "cpu", "--no-braintrace", "--no-mem", "--no-equality")


def _git(*args, cwd=ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def worktree(rev: str, path: pathlib.Path) -> pathlib.Path:
    """A worktree of ``rev`` at ``path`` (created, or checked to be at ``rev``)."""
    want = _git("rev-parse", rev)
    if path.exists():
        have = _git("rev-parse", "HEAD", cwd=path)
        if have != want:
            raise SystemExit(f"--worktree {path} is at {have[:9]}, not {rev} ({want[:9]}): remove it "
                             f"(git worktree remove {path}) or name another folder")
        return path
    _git("worktree", "add", "--detach", str(path), want)
    return path


def run_side(tree: pathlib.Path, spec: str, budget_s: float, out: pathlib.Path) -> dict:
    """``benchmarks.run`` with ``spec`` in ``tree``, importing that tree's etprop; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    check = subprocess.run([sys.executable, "-c", "import etprop; print(etprop.__file__)"], cwd=tree, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not pathlib.Path(check).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: python imports etprop from {check}, not from that tree")
    argv = [sys.executable, "-m", "benchmarks.run", "--suite", *shlex.split(spec), *COMMON,
            "--budget-s", str(budget_s), "--out", str(out)]
    proc = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(argv[1:])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def medians(result: dict) -> dict:
    """``{(suite, hidden, T, batch, contender): median seconds}`` of one run's JSON."""
    rows = {}
    for suite, configs in result.items():
        if not isinstance(configs, list):
            continue
        for cfg in configs:
            for name, c in cfg.get("contenders", {}).items():
                if "braintrace" in name or not isinstance(c, dict) or c.get("median_s") is None:
                    continue
                rows[(suite, cfg["hidden"], cfg["T"], cfg["batch"], name)] = c["median_s"]
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the other commit (the 'before' side)")
    p.add_argument("--worktree", default=None, help="where its worktree lives (default: a folder in /tmp)")
    p.add_argument("--spec", action="append", default=None,
                   help="a suite and its overrides as benchmarks.run takes them (repeatable)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=10.0, dest="budget_s")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--out", default=None, help="a folder for every run's JSON")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    before_tree = worktree(a.rev, pathlib.Path(a.worktree or f"/tmp/etprop_wt_{a.rev}"))
    sides = {"before": before_tree, "after": ROOT}
    out = pathlib.Path(a.out) if a.out else pathlib.Path(tempfile.mkdtemp(prefix="side_by_side_"))
    out.mkdir(parents=True, exist_ok=True)
    specs = a.spec or list(DEFAULT_SPECS)
    got = {"before": [], "after": []}
    for rnd in range(a.rounds):
        order = ("before", "after") if rnd % 2 == 0 else ("after", "before")
        for side in order:
            for k, spec in enumerate(specs):
                res = run_side(sides[side], spec, a.budget_s, out / f"{side}_{k}_{rnd}.json")
                got[side].append(medians(res))
                print(f"round {rnd + 1} {side:6s} {spec}: done {time.strftime('%H:%M:%S')}", file=sys.stderr)
    keys = sorted(set().union(*got["before"]) & set().union(*got["after"]), key=str)
    print(f"# side by side: before {a.rev} ({_git('rev-parse', '--short', a.rev)}), after "
          f"{_git('rev-parse', '--short', 'HEAD')}{' (+ uncommitted changes)' if _git('status', '--porcelain', '-uno') else ''}; "
          f"{a.rounds} rounds, interleaved; {time.strftime('%Y-%m-%d %H:%M')} UTC, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
    print("| suite | hidden | T | batch | contender | before ms | after ms | after / before | within |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        b = statistics.median(r[key] for r in got["before"] if key in r)
        f = statistics.median(r[key] for r in got["after"] if key in r)
        ratio = f / b
        mark = "yes" if abs(ratio - 1) <= a.tolerance else ("faster" if ratio < 1 else "SLOWER")
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {b * 1e3:.1f} | {f * 1e3:.1f} | "
              f"{ratio:.2f} | {mark} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
