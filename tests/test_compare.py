"""The comparison table and its statistics, on hand-made per-question outcomes with hand-computed expectations."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from turnrl.stages.compare import CompareConfig, build_comparison, compare_run
from turnrl.errors import InputError

QUESTIONS = [f"q{i}" for i in range(10)]
# Per-question outcomes of four policies on the same ten questions (one greedy run each). SFT missed q9.
ACCURACY = {
    "base":      [1, 0, 0, 1, 0, 0, 0, 1, 0, 0],
    "sft":       [1, 1, 0, 1, 0, 0, 0, 1, 0],
    "star-gate": [1, 1, 0, 1, 1, 0, 0, 1, 0, 1],
    "swift":     [1, 1, 1, 1, 1, 0, 1, 1, 0, 1],
}
FORMAT = {
    "base":      [1, 1, 0, 1, 1, 0, 1, 1, 1, 0],
    "sft":       [1, 1, 1, 1, 1, 1, 1, 1, 1],
    "star-gate": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "swift":     [1, 1, 1, 1, 1, 1, 1, 1, 0, 1],
}
THINKING = {"base": [0] * 10, "sft": [0] * 9, "star-gate": [0] * 10, "swift": [1, 1, 1, 1, 0, 1, 1, 1, 1, 1]}
REWARD = {
    "base":      [0.82, 0.11, 0.25, 0.77, 0.30, 0.05, 0.18, 0.91, 0.22, 0.14],
    "sft":       [0.80, 0.75, 0.20, 0.85, 0.28, 0.10, 0.15, 0.88, 0.20],
    "star-gate": [0.86, 0.79, 0.27, 0.81, 0.83, 0.09, 0.21, 0.90, 0.26, 0.74],
    "swift":     [0.88, 0.84, 0.76, 0.83, 0.85, 0.12, 0.79, 0.93, 0.25, 0.81],
}
JUDGE_OVERALL = {  # the judge's Overall score / 10, as the reward components store it
    "base": [0.6, 0.5, 0.4, 0.7, 0.5, 0.3, 0.4, 0.8, 0.5, 0.4],
    "sft": [0.6, 0.6, 0.4, 0.7, 0.5, 0.3, 0.4, 0.8, 0.5],
    "star-gate": [0.7, 0.6, 0.5, 0.7, 0.6, 0.3, 0.4, 0.8, 0.5, 0.6],
    "swift": [0.8, 0.7, 0.6, 0.8, 0.7, 0.4, 0.6, 0.9, 0.5, 0.7],
}
MULTI = {"swift": ([1, 0, 0, 1, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 1, 0, 1, 1, 0, 1])}  # multi@1, multi@2


def per_question_rows(method: str) -> list[dict]:
    rows = []
    for i, acc in enumerate(ACCURACY[method]):
        row = {"task_id": QUESTIONS[i], "gold": "A", "runs": 1, "answers": ["A" if acc else "B"],
               "accuracy": float(acc), "format": float(FORMAT[method][i]), "thinking": float(THINKING[method][i]),
               "answered": 1.0, "ambiguous": 0.0, "answer_changed": 0.0, "final_truncated": 0.0,
               "reward": REWARD[method][i], "judge_overall": JUDGE_OVERALL[method][i]}
        if FORMAT[method][i]:
            row["accuracy_formatted"] = float(acc)
        if method in MULTI:
            row["multi@1"], row["multi@2"] = float(MULTI[method][0][i]), float(MULTI[method][1][i])
            row["tool_calls"] = 2.0 + i % 3
        rows.append(row)
    return rows


def write_run(run_dir: Path, methods=tuple(ACCURACY)) -> Path:
    for m in methods:
        folder = run_dir / "eval" / m
        folder.mkdir(parents=True)
        (folder / "per_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_question_rows(m)))
        (folder / "metrics.json").write_text(json.dumps({"name": m, "model": f"models/{m}", "runs": 1,
                                                         "temperature": 0.0, "metrics": {}}))
    return run_dir


def binomial(values) -> tuple[float, float]:
    p = sum(values) / len(values)
    return p, math.sqrt(p * (1 - p) / len(values))


def sample_mean(values) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def bootstrap_interval(a, b, samples=10_000, seed=0) -> tuple[float, float]:
    """Percentile bootstrap of mean(a - b), one resampled question at a time, quantiles interpolated by hand."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    rng = np.random.default_rng(seed)
    means = sorted(sum(d[int(rng.integers(0, n))] for _ in range(n)) / n for _ in range(samples))

    def quantile(q):
        pos = q * (samples - 1)
        lo = int(math.floor(pos))
        return means[lo] + (pos - lo) * (means[min(lo + 1, samples - 1)] - means[lo])

    return quantile(0.025), quantile(0.975)


def table_row(markdown: str, name: str) -> list[str]:
    line = next(l for l in markdown.splitlines() if l.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def header(markdown: str) -> list[str]:
    return [c.strip() for c in markdown.splitlines()[4].strip("|").split("|")]


@pytest.fixture()
def comparison(tmp_path):
    run_dir = write_run(tmp_path / "run")
    return build_comparison(run_dir, ["base", "sft", "star-gate", "swift"])


def test_table_means_and_standard_errors(comparison):
    md = comparison.markdown
    cols = header(md)
    assert cols[:4] == ["Method", "Accuracy %", "Thinking %", "R-Overall"]
    assert cols[4:7] == ["Format %", "Acc. when formatted %", "Mean reward"]
    assert cols[7:10] == ["multi@1 %", "multi@2 %", "Tool calls"] and cols[-1] == "n"

    def pct(values):
        p, se = binomial(values)
        return f"{100 * p:.1f} ± {100 * se:.1f}"

    swift = dict(zip(cols, table_row(md, "Swift")))
    assert swift["Accuracy %"] == f"**{pct(ACCURACY['swift'])}**" == "**80.0 ± 12.6**"
    assert swift["Thinking %"] == f"**{pct(THINKING['swift'])}**"
    mean, se = sample_mean(REWARD["swift"])
    assert swift["Mean reward"] == f"**{mean:.3f} ± {se:.3f}**"
    mean, se = sample_mean(JUDGE_OVERALL["swift"])
    assert swift["R-Overall"] == f"**{10 * mean:.2f} ± {10 * se:.2f}**"  # on the judge's 0-10 scale
    formatted = [a for a, f in zip(ACCURACY["swift"], FORMAT["swift"]) if f]
    assert swift["Acc. when formatted %"] == f"**{pct(formatted)} (n=9)**"
    assert swift["multi@2 %"] == pct(MULTI["swift"][1])  # the only method with the metric: nothing to rank
    assert swift["Tool calls"] == f"{statistics.fmean([2 + i % 3 for i in range(10)]):.3f} ± " \
                                  f"{statistics.stdev([2 + i % 3 for i in range(10)]) / math.sqrt(10):.3f}"
    assert swift["n"] == "10"

    star = dict(zip(cols, table_row(md, "STaR-GATE")))
    assert star["Accuracy %"] == f"<u>{pct(ACCURACY['star-gate'])}</u>" == "<u>60.0 ± 15.5</u>"
    assert star["multi@1 %"] == "n/a"
    base = dict(zip(cols, table_row(md, "Base")))
    assert base["Accuracy %"] == pct(ACCURACY["base"])
    assert base["Acc. when formatted %"] == f"{pct([a for a, f in zip(ACCURACY['base'], FORMAT['base']) if f])} (n=7)"
    sft = dict(zip(cols, table_row(md, "SFT")))
    assert sft["Accuracy %"] == pct(ACCURACY["sft"]) and sft["n"] == "9"
    # Format: SFT and STaR-GATE are both at 100.0 (tied best, both bold); Swift's 90.0 is second.
    assert sft["Format %"] == "**100.0 ± 0.0**" and star["Format %"] == "**100.0 ± 0.0**"
    assert swift["Format %"].startswith("<u>90.0")


def test_paired_differences_against_base_and_best_baseline(comparison):
    assert comparison.best_baseline == "star-gate"  # 60% beats SFT's 44.4%
    d = comparison.paired["base"]["swift"]["accuracy"]
    assert (d.n, d.won, d.lost, d.tied) == (10, 5, 0, 5)
    assert d.diff == pytest.approx(0.5)
    low, high = bootstrap_interval(ACCURACY["swift"], ACCURACY["base"])
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert d.low > 0  # five wins and no loss: the interval excludes 0

    # SFT has no q9: compared on the nine questions both answered.
    d = comparison.paired["base"]["sft"]["accuracy"]
    assert (d.n, d.won, d.lost) == (9, 1, 0)
    low, high = bootstrap_interval(ACCURACY["sft"], ACCURACY["base"][:9])
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))

    d = comparison.paired["star-gate"]["swift"]["reward"]
    diffs = [a - b for a, b in zip(REWARD["swift"], REWARD["star-gate"])]
    assert d.diff == pytest.approx(statistics.fmean(diffs))
    assert (d.won, d.lost) == (sum(x > 0 for x in diffs), sum(x < 0 for x in diffs))
    low, high = bootstrap_interval(REWARD["swift"], REWARD["star-gate"])
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))

    d = comparison.paired["star-gate"]["base"]["accuracy"]
    assert d.diff == pytest.approx(-0.3) and (d.won, d.lost) == (0, 3)
    assert "star-gate" not in comparison.paired["star-gate"] and "base" not in comparison.paired["base"]

    md = comparison.markdown
    section = md.split("## Paired differences against Base")[1].split("## ")[0]
    swift = table_row(section, "Swift")
    low, high = bootstrap_interval(ACCURACY["swift"], ACCURACY["base"])
    assert swift[1:4] == ["**+50.0**", f"[{100 * low:+.1f}, {100 * high:+.1f}]", "5 / 0 / 5"]
    assert "## Paired differences against the best baseline, STaR-GATE" in md


def test_files_and_csv(tmp_path):
    run_dir = write_run(tmp_path / "run")
    comparison, report = compare_run(CompareConfig(run_dir=str(run_dir), report=False))
    assert report is None
    assert comparison.methods == ["base", "sft", "star-gate", "swift"]  # Base first, then the paper's order
    assert (run_dir / "results.md").read_text() == comparison.markdown
    rows = {r["method"]: r for r in csv.DictReader((run_dir / "results.csv").open())}
    p, se = binomial(ACCURACY["star-gate"])
    assert float(rows["star-gate"]["accuracy_mean"]) == pytest.approx(p)
    assert float(rows["star-gate"]["accuracy_se"]) == pytest.approx(se)
    assert rows["sft"]["accuracy_n"] == "9" and rows["star-gate"]["name"] == "STaR-GATE"
    assert rows["base"]["multi@1_mean"] == "" and float(rows["swift"]["multi@1_mean"]) == pytest.approx(0.5)
    saved = json.loads((run_dir / "comparison.json").read_text())
    assert saved["best_baseline"] == "star-gate"
    assert saved["paired"]["base"]["swift"]["accuracy"]["won"] == 5


def test_several_runs_per_question_use_the_sample_se(tmp_path):
    """Outcomes averaged over k runs are not 0/1: the SE is the sample SE over questions, not binomial."""
    run_dir = tmp_path / "run"
    folder = run_dir / "eval" / "base"
    folder.mkdir(parents=True)
    accuracy = [1.0, 2 / 3, 0.0, 1 / 3, 1.0, 0.0]
    folder.joinpath("per_question.jsonl").write_text("".join(
        json.dumps({"task_id": f"q{i}", "runs": 3, "accuracy": a, "format": 1.0, "reward": a}) + "\n"
        for i, a in enumerate(accuracy)))
    comparison = build_comparison(run_dir, ["base"])
    mean, se = sample_mean(accuracy)
    assert table_row(comparison.markdown, "Base")[1] == f"{100 * mean:.1f} ± {100 * se:.1f}"
    assert "3 runs per question" in comparison.markdown
    assert comparison.best_baseline is None and "No baseline" in comparison.markdown


def test_bad_input_names_the_file_and_keeps_outputs(tmp_path):
    run_dir = write_run(tmp_path / "run", methods=("base", "swift"))
    (run_dir / "results.md").write_text("earlier results\n")
    with (run_dir / "eval" / "swift" / "per_question.jsonl").open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(InputError, match=r"eval/swift/per_question.jsonl:11:2: not valid JSON"):
        compare_run(CompareConfig(run_dir=str(run_dir), report=False))
    with pytest.raises(InputError, match=r"eval/dpo/per_question.jsonl: missing; evaluate 'dpo' first"):
        compare_run(CompareConfig(run_dir=str(run_dir), methods=["base", "dpo"], report=False))
    with pytest.raises(InputError, match="no evaluated policies"):
        compare_run(CompareConfig(run_dir=str(tmp_path / "empty"), report=False))
    assert (run_dir / "results.md").read_text() == "earlier results\n"


def test_methods_evaluated_differently_are_flagged(tmp_path):
    run_dir = write_run(tmp_path / "run", methods=("base", "swift"))
    assert "Not evaluated alike" not in build_comparison(run_dir, ["base", "swift"]).markdown
    (run_dir / "eval" / "swift" / "metrics.json").write_text(json.dumps({"runs": 1, "temperature": 0.7}))
    md = build_comparison(run_dir, ["base", "swift"]).markdown
    assert "**Not evaluated alike:** temperature: base 0.0, swift 0.7." in md


def test_display_names_of_the_papers_and_of_refreshed_runs():
    from turnrl.stages.comparison import display_name
    assert display_name("sft-final") == "SFT (final turn)"
    assert display_name("drift-refresh") == "DRIFT (refresh)"
    assert display_name("my-method") == "my-method"
