"""benchmarks.task_accuracy's table: mean and spread over seeds per (task, model, algorithm)."""

from benchmarks import task_accuracy as ta


def _row(task, algo, seed, acc, updates=600, batch=64):
    return {"task": task, "model": "alif", "algo": algo, "seed": seed, "updates": updates, "hidden": 100,
            "batch": batch, "lr": 0.01, "T": 220, "accuracy": acc, "chance": 0.5,
            "grad_cos_bptt": 1.0 if algo == "bptt" else 0.9, "grad_cos_bptt_min": 1.0 if algo == "bptt" else 0.5,
            "rate_hz": 10.0, "wall_s": 12.0}


def test_table_gives_mean_and_spread_over_seeds():
    rows = [_row("evidence", a, s, acc) for s, (b, d) in enumerate([(0.99, 0.90), (0.97, 0.96), (0.98, 0.93)])
            for a, acc in (("bptt", b), ("d_rtrl", d))]
    table = ta.markdown(rows).splitlines()
    assert table[0].count("|") == table[1].count("|")             # header and separator agree
    (line,) = [t for t in table if t.startswith("| evidence")]
    assert "| 0,1,2 |" in line and "| 0.980 (0.970-0.990) |" in line and "| 0.930 (0.900-0.960) |" in line
    assert "100 x 64" in line and "0.90 (0.50)" in line
    assert ta._stat([0.5]) == "0.500" and ta._stat([]) == "-"


def test_table_rows_follow_the_task_order_with_their_own_budget():
    # dms runs its own set-up (batch 32, 1,000 updates: `DMS.train_defaults`), evidence its own
    rows = [_row("dms", a, 0, 0.97, updates=1000, batch=32) for a in ("bptt", "eprop")]
    rows += [_row("evidence", a, 0, 0.99) for a in ("bptt", "eprop")]
    lines = [t for t in ta.markdown(rows).splitlines() if t.startswith("| evidence") or t.startswith("| dms")]
    assert [t.split(" |")[0] for t in lines] == ["| evidence", "| dms"]
    assert "| 100 x 32 | 1000 | 0 |" in lines[1] and "| 100 x 64 | 600 | 0 |" in lines[0]
