"""``metrics.csv``: one row per update of a training run (the columns are `FIELDS`).

``step`` is the update number, ``loss`` and ``accuracy`` that update's training metrics,
``grad_cos_bptt`` / ``grad_cos_bptt_min`` the cosine of the online gradient to BPTT's (all
parameters / the worst parameter; empty where not measured), ``wall_s`` the seconds since the
run (or its last resume) started. A resumed run reads the rows up to its checkpoint back.

The file is written once when a run starts (or resumes: the rows up to its checkpoint) and then
appended to before each checkpoint (`append_rows`), so a long run writes each row once: the cost
of a checkpoint does not grow with the number of updates. A row cut short by a crash in the
middle of an append is beyond every checkpoint and is dropped when the run resumes.
"""

from __future__ import annotations

import csv
import os

from etprop.errors import CheckpointError

__all__ = ["FIELDS", "read_rows", "write_rows", "append_rows"]

FIELDS = ["step", "loss", "accuracy", "grad_cos_bptt", "grad_cos_bptt_min", "wall_s"]


def read_rows(path: str, upto: int) -> list[dict]:
    """The rows of ``metrics.csv`` up to update ``upto`` (none if the file is missing)."""
    if not os.path.isfile(path):
        return []
    rows = []
    try:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if None in r.values() or None in r:  # a last row cut short (a crash while appending)
                    continue
                rows.append({k: (int(v) if k == "step" else (float(v) if v != "" else "")) for k, v in r.items()})
    except (OSError, ValueError, TypeError, csv.Error) as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {' '.join(str(e).split())}); the "
                              f"resumed run continues its rows: restore it, or delete it to resume without the "
                              f"earlier rows") from None
    if rows and set(rows[0]) != set(FIELDS):
        raise CheckpointError(f"{path} has columns {sorted(rows[0])}, expected {FIELDS}; restore it, or "
                              f"delete it to resume without the earlier rows")
    return [r for r in rows if r["step"] <= upto]


def write_rows(path: str, rows: list[dict]) -> None:
    """Replace ``path`` with ``rows`` (written under a temporary name, then renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def append_rows(path: str, rows: list[dict]) -> None:
    """Append ``rows`` to ``path`` (written with its header by `write_rows` first)."""
    if not rows:
        return
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=FIELDS).writerows(rows)
