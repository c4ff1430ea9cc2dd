"""Compare evaluated policies on the same held-out questions: one table with standard errors, paired differences.

Reads ``eval/<method>/metrics.json`` and ``per_question.jsonl`` for each method and writes ``results.md``,
``results.csv`` and ``comparison.json`` in the run directory. Paired differences use the per-question outcomes
of two methods on the same questions (:func:`turnrl.stats.paired_difference`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnrl import stats
from turnrl.errors import InputError
from turnrl.evaluate import load_per_question
from turnrl.records import atomic_write_text, read_json, write_json

COLUMNS = [  # (metric, header, percentage)
    ("accuracy", "Accuracy", True),
    ("thinking", "Thinking %", True),
    ("format", "Format", True),
    ("accuracy_formatted", "Acc. (formatted)", True),
    ("answer_changed", "Answer changed", True),
    ("final_truncated", "Final truncated", True),
    ("reward", "Mean reward", False),
]
JUDGE_COLUMNS = [("judge_overall", "R-Overall"), ("judge_accuracy", "R-Acc"), ("judge_reasoning", "R-Reas"),
                 ("judge_comprehensiveness", "R-Comp"), ("judge_pedagogical", "R-Ped"),
                 ("judge_confidence", "R-Conf")]


def _paired(run_dir: Path, a: str, b: str, metric: str = "accuracy") -> stats.PairedDiff:
    rows_a = {r["task_id"]: r for r in load_per_question(run_dir, a)}
    rows_b = {r["task_id"]: r for r in load_per_question(run_dir, b)}
    common = [t for t in rows_a if t in rows_b and metric in rows_a[t] and metric in rows_b[t]]
    return stats.paired_difference([rows_a[t][metric] for t in common], [rows_b[t][metric] for t in common])


def _rank_marks(values: dict[str, float]) -> dict[str, str]:
    """Best in bold, second underlined, as in 000's tables (ties share the mark)."""
    distinct = sorted({v for v in values.values()}, reverse=True)
    marks = {}
    for method, v in values.items():
        marks[method] = "**" if distinct and v == distinct[0] else ("<u>" if len(distinct) > 1 and v == distinct[1]
                                                                    else "")
    return marks


def write_comparison(run_dir: Path, methods: list[str], baseline: str = "base") -> str:
    """Write the comparison files and return the markdown table."""
    run_dir = Path(run_dir)
    metrics: dict[str, dict[str, Any]] = {}
    for m in methods:
        path = run_dir / "eval" / m / "metrics.json"
        if not path.exists():
            raise InputError(f"{path}: missing; evaluate {m!r} first")
        metrics[m] = read_json(path)["metrics"]
    columns = [(k, h, p) for k, h, p in COLUMNS] + [(k, h, False) for k, h in JUDGE_COLUMNS
                                                      if any(k in metrics[m] for m in methods)]
    header = ["Method"] + [h for _, h, _ in columns] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv_rows = []
    marks = {key: _rank_marks({m: metrics[m][key]["mean"] for m in methods if key in metrics[m]
                               and metrics[m][key]["n"] and key not in ("final_truncated", "answer_changed")})
             for key, _, _ in columns}
    for m in methods:
        cells, row = [m], {"method": m}
        for key, _, pct in columns:
            est = stats.Estimate(**metrics[m][key]) if key in metrics[m] else stats.Estimate(float("nan"), 0, 0)
            text = est.fmt(100 if pct else 1, 1 if pct else (2 if key.startswith("judge") else 3))
            mark = marks[key].get(m, "")
            cells.append(f"{mark}{text}{'</u>' if mark == '<u>' else mark}" if mark else text)
            row.update({f"{key}_mean": est.mean, f"{key}_se": est.se, f"{key}_n": est.n})
        cells.append(str(metrics[m]["accuracy"]["n"]))
        lines.append("| " + " | ".join(cells) + " |")
        csv_rows.append(row)
    table = "\n".join(lines)
    paired = {}
    if baseline in methods:
        plines = ["", f"Paired accuracy differences against {baseline} on the same questions (95% bootstrap "
                      "interval over questions, 10,000 resamples, seed 0):", "",
                  "| Method | Difference (points) | 95% interval | won / lost / tied | n |", "|---|---|---|---|---|"]
        for m in methods:
            if m == baseline:
                continue
            d = _paired(run_dir, m, baseline)
            paired[m] = {"vs": baseline, **d.to_dict()}
            plines.append(f"| {m} | {100 * d.diff:+.1f} | [{100 * d.low:+.1f}, {100 * d.high:+.1f}] | "
                          f"{d.won} / {d.lost} / {d.tied} | {d.n} |")
        table += "\n" + "\n".join(plines)
    atomic_write_text(run_dir / "results.md", "# Results\n\n" + table + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(csv_rows[0]))
    writer.writeheader()
    writer.writerows(csv_rows)
    atomic_write_text(run_dir / "results.csv", buffer.getvalue())
    write_json(run_dir / "comparison.json", {"methods": methods, "metrics": metrics, "paired": paired})
    return table


def load_comparison(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "comparison.json").read_text())


@dataclass
class CompareConfig:
    """Compare policies already evaluated in a run directory."""

    run_dir: str = "runs/turnrl"
    methods: list[str] = field(default_factory=list)
    """Methods to compare (folders under eval/; default: all, Base first)."""
    baseline: str = "base"


def compare(cfg: CompareConfig) -> str:
    run_dir = Path(cfg.run_dir)
    methods = cfg.methods or sorted((p.name for p in (run_dir / "eval").glob("*") if (p / "metrics.json").exists()),
                                    key=lambda m: (m != cfg.baseline, m))
    if not methods:
        raise InputError(f"{run_dir / 'eval'}: no evaluated policies; run `turnrl evaluate` first")
    table = write_comparison(run_dir, methods, cfg.baseline)
    print(table)
    print(f"\nwritten: {run_dir / 'results.md'}, {run_dir / 'results.csv'}")
    return table
