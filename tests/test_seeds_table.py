"""The table over seeds, from hand-made per-question outcomes: right-of-stated counts, the best baseline and the
reward-weighted methods' paired differences against it."""

from __future__ import annotations

import json

import pytest

from turnrl.workflows.seeds import seeds_table

# Per seed, per method: (gold, stated as shown, answer as the canonical letter) for questions q0-q3.
GOLD = ["A", "B", "C", "D"]
OUTCOMES = {
    "base": [["A", None, "A", None], ["B", "B", None, None]],
    "sft": [["A", "A", "A", "A"], ["A", "A", "A", "A"]],
    "star-gate": [["A", "B", None, None], ["A", "B", "C", None]],
    "refit": [["A", "B", "C", None], ["A", "B", "C", "D"]],
    "always-a": [["A", "A", "A", "A"], ["A", "A", "A", "A"]],
}


def write(run, method, seed, answers):
    folder = run / f"seed{seed}" / "eval" / method
    folder.mkdir(parents=True)
    rows = [{"task_id": f"q{i}", "gold": g, "answers": [a], "stated": [a], "accuracy": float(a == g)}
            for i, (g, a) in enumerate(zip(GOLD, answers))]
    (folder / "per_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_right_of_stated_and_the_best_baseline(tmp_path):
    for method, per_seed in OUTCOMES.items():
        for seed, answers in enumerate(per_seed):
            write(tmp_path, method, seed, answers)
    table = seeds_table(tmp_path, [0, 1], list(OUTCOMES), "test", n_boot=500)
    methods = table["methods"]
    assert methods["base"]["right_of_stated"] == (2, 4)  # seed 0: A right, A wrong; seed 1: B wrong, B right
    assert methods["refit"]["right_of_stated"] == (7, 7)
    assert methods["sft"]["right_of_stated"] == (2, 8)
    # Baselines by mean accuracy: SFT (2 of 8) and STaR-GATE (5 of 8); the best is STaR-GATE.
    assert table["best_baseline"] == "star-gate"
    assert list(table["vs_best_baseline"]) == ["refit"]  # not Base, the baselines or the reference policy
    assert table["vs_best_baseline"]["refit"]["mean"] == pytest.approx((3 / 4 + 4 / 4) / 2 - (2 / 4 + 3 / 4) / 2)
    assert "| Refit | +25.0 [" in table["markdown"] and "Against the best baseline, STaR-GATE" in table["markdown"]
    assert "| 7 / 7 |" in table["markdown"]


def test_the_environment_measures_beside_accuracy_get_their_own_tables(tmp_path):
    """multi@1 .. multi@(T-1) (multi@T is accuracy) and earned, where the evaluations hold them; the table of one
    is the mean over seeds of that measure (here computed by hand)."""
    from turnrl.workflows.seeds import task_metrics

    for seed in (0, 1):
        folder = tmp_path / f"seed{seed}" / "eval" / "base"
        folder.mkdir(parents=True)
        rows = [{"task_id": f"q{i}", "accuracy": 1.0, "multi@1": float(i == seed), "multi@2": 1.0, "multi@3": 1.0,
                 "earned": 0.8, "stated": ["A"], "gold": "A"} for i in range(4)]
        (folder / "per_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert task_metrics(tmp_path, [0, 1], ["base"], "test") == ["multi@1", "multi@2", "earned"]
    table = seeds_table(tmp_path, [0, 1], ["base"], "test", metric="multi@1", n_boot=200)
    assert table["methods"]["base"]["estimate"]["per_seed"] == pytest.approx([0.25, 0.25])
    assert "| Base | 25.0 [" in table["markdown"]
