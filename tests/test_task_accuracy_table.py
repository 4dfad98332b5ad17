"""benchmarks.task_accuracy's table: mean and spread over seeds per (task, model, algorithm)."""

from benchmarks import task_accuracy as ta


def _row(task, algo, seed, acc):
    return {"task": task, "model": "alif", "algo": algo, "seed": seed, "updates": 600, "hidden": 100, "batch": 64,
            "accuracy": acc, "chance": 0.5, "grad_cos_bptt": 1.0 if algo == "bptt" else 0.9,
            "grad_cos_bptt_min": 1.0 if algo == "bptt" else 0.5, "rate_hz": 10.0, "wall_s": 12.0}


def test_table_gives_mean_and_spread_over_seeds():
    rows = [_row("evidence", a, s, acc) for s, (b, d) in enumerate([(0.99, 0.90), (0.97, 0.96), (0.98, 0.93)])
            for a, acc in (("bptt", b), ("d_rtrl", d))]
    table = ta.markdown(rows).splitlines()
    assert table[0].count("|") == table[1].count("|")             # header and separator agree
    (line,) = [t for t in table if t.startswith("| evidence")]
    assert "| 0,1,2 |" in line and "| 0.980 (0.970-0.990) |" in line and "| 0.930 (0.900-0.960) |" in line
    assert "100 x 64" in line and "0.90 (0.50)" in line
    assert ta._stat([0.5]) == "0.500" and ta._stat([]) == "-"
