"""A :class:`~turnrl.stages.comparison.Comparison` as tables: the results table, the stated letters, the paired
differences, diagnostics and judge agreement, rendered as ``results.md``, ``results.csv`` and ``comparison.json``
(the HTML report renders the same tables)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from turnrl import stats
from turnrl.records import atomic_write_text, write_json
from turnrl.stages.evaluate import letter_spread
from turnrl.stages.rejudge import agreement_note, agreement_rows, agreement_title, \
    AGREEMENT_HEADER
from turnrl.stages.comparison import baseline_methods, Cell, cell, Comparison, display_name
from turnrl.layout import RunDir


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""


def results_table(c: Comparison) -> Table:
    judged = any(col.key.startswith("judge_") for col in c.columns)
    return Table("Results", ["Method"] + [col.header for col in c.columns] + ["n"],
                 [[(c.results[m].name, "")] + [cell(c, m, col) for col in c.columns] + [(str(c.n_questions(m)), "")]
                  for m in c.methods],
                 "Mean ± standard error over questions (binomial for a 0/1 outcome per question, sample SE of the "
                 "per-question values otherwise); n: questions (given in a cell where it differs)."
                 + (" R-metrics: the judge's 0-10 scores." if judged else "")
                 + " Best in bold, second underlined (on the values as shown); a constant reference policy "
                 "(always-a) is not ranked.")


def paired_tables(c: Comparison, compare_against: str = "base") -> list[Table]:
    """One table per reference; a difference whose interval excludes 0 is marked "best" (shown in bold)."""
    tables = []
    for reference, by_method in c.paired.items():
        metrics = list(next(iter(by_method.values())))
        header = ["Method"]
        for k in metrics:
            header += [c.column(k).diff_header, "95% interval", "won / lost / tied"]
        rows = []
        for m, diffs in by_method.items():
            row: list[Cell] = [(c.results[m].name, "")]
            for k in metrics:
                d = diffs[k]
                if d.n == 0:
                    row += [("n/a", ""), ("", ""), ("", "")]
                    continue
                diff, interval = c.column(k).fmt_diff(d)
                row += [(diff, "best" if d.excludes_zero() else ""), (interval, ""),
                        (f"{d.won} / {d.lost} / {d.tied}", "")]
            rows.append(row + [(str(max(d.n for d in diffs.values())), "")])
        title = "Base" if reference == compare_against else f"the best baseline, {display_name(reference)}"
        tables.append(Table(
            f"Paired differences against {title}", header + ["n"], rows,
            f"Method minus {display_name(reference)} on the questions both answered (percentages in points); "
            f"percentile bootstrap over questions, {c.bootstrap['samples']:,} resamples, seed {c.bootstrap['seed']}; "
            "bold: the 95% interval excludes 0. Won / lost / tied: questions where the method scored higher / lower "
            "/ the same."))
    return tables


def letters_table(c: Comparison) -> Table | None:
    """Per method: accuracy's Wilson interval (one run per question) and the spread of the letters it stated as
    its final answer, in the order each conversation showed the options."""
    spreads = {m: letter_spread(c.results[m].rows) for m in c.methods}
    letters = sorted({k for sp in spreads.values() for k in sp}, key=lambda k: (k == "none", k))
    if not letters or letters == ["none"]:
        return None
    rows = []
    for m in c.methods:
        est = c.results[m].summary.get("accuracy")
        single = all(r["runs"] == 1 for r in c.results[m].rows)
        interval = ""
        if est is not None and est.n and single:
            low, high = stats.wilson(round(est.mean * est.n), est.n)
            interval = f"{est.mean * 100:.1f} [{low * 100:.1f}, {high * 100:.1f}]"
        total = sum(spreads[m].values()) or 1
        rows.append([(c.results[m].name, ""), (interval, "")] +
                    [(f"{spreads[m].get(k, 0) / total * 100:.0f}", "") for k in letters])
    return Table("Accuracy interval and stated letters", ["Method", "Accuracy % [95 % Wilson]"] +
                 [f"{k} %" for k in letters], rows,
                 "Stated letters: the final answers' letters as each policy wrote them (none: no answer or an "
                 "ambiguous one); every conversation shows the options in an order drawn from its question and "
                 "seed, so a letter preference earns 1/k in expectation (the always-a row).")


def agreement_tables(c: Comparison) -> list[Table]:
    """One table per set of conversations a second judge scored."""
    return [Table(agreement_title(a), AGREEMENT_HEADER, [[(text, "") for text in row] for row in agreement_rows(a)],
                  agreement_note(a)) for a in c.agreement]


def diagnostics_table(c: Comparison) -> Table | None:
    if not c.diagnostics:
        return None
    return Table("Diagnostics", ["Method"] + [col.header for col in c.diagnostics],
                 [[(c.results[m].name, "")] + [(cell(c, m, col)[0], "") for col in c.diagnostics] for m in c.methods],
                 "Not ranked: more is neither better nor worse.")


def _md_table(table: Table) -> list[str]:
    def mark(text: str, m: str) -> str:
        return f"**{text}**" if m == "best" else f"<u>{text}</u>" if m == "second" else text

    return (["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)] +
            ["| " + " | ".join(mark(*cell_) for cell_ in row) + " |" for row in table.rows])


EVALUATION_SETTINGS = ("split", "runs", "temperature", "env")
"""What must be equal for methods to be compared on the same footing (from each metrics.json)."""


def settings_mismatch(comparison: Comparison) -> str:
    """Which evaluation settings differ between methods, e.g. "temperature: base 0.0, swift 0.7"; "" if none."""
    parts = []
    for key in EVALUATION_SETTINGS:
        values = {m: comparison.results[m].info[key] for m in comparison.methods if key in comparison.results[m].info}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            parts.append(f"{key}: " + ", ".join(f"{m} {json.dumps(v, sort_keys=True)}" for m, v in values.items()))
    return "; ".join(parts)


def describe_runs(comparison: Comparison) -> str:
    runs = sorted({int(r["runs"]) for res in comparison.results.values() for r in res.rows})
    if runs == [1]:
        return "one run per question"
    return f"{'/'.join(map(str, runs))} runs per question, averaged per question first"


def markdown(comparison: Comparison, compare_against: str = "base") -> str:
    c = comparison
    main = results_table(c)
    pool = "Test" if c.split == "test" else "Validation" if c.split == "val" else c.split.capitalize()
    lines = ["# Results", "", f"{pool} questions: {max(c.n_questions(m) for m in c.methods)} ({c.split} pool); "
             f"{describe_runs(c)}.", ""]
    lines += _md_table(main) + ["", main.note]
    spread = letters_table(c)
    if spread is not None:
        lines += ["", f"## {spread.title}", ""] + _md_table(spread) + ["", spread.note]
    mismatch = settings_mismatch(c)
    if mismatch:
        lines += ["", f"**Not evaluated alike:** {mismatch}."]
    for table in paired_tables(c, compare_against):
        lines += ["", f"## {table.title}", ""] + _md_table(table) + ["", table.note]
    if c.best_baseline is None:
        lines += ["", "No baseline (" + ", ".join(display_name(b) for b in baseline_methods()) + ") was evaluated."]
    diag = diagnostics_table(c)
    if diag is not None:
        lines += ["", "## Diagnostics", ""] + _md_table(diag)
    for table in agreement_tables(c):
        lines += ["", f"## {table.title}", ""] + _md_table(table) + ["", table.note]
    return "\n".join(lines) + "\n"


def csv_text(comparison: Comparison) -> str:
    """Unscaled values (proportions as fractions, judge scores / 10): mean, SE and n of every metric."""
    keys = list(dict.fromkeys(k for m in comparison.methods for k in comparison.results[m].summary))
    fieldnames = ["method", "name", "questions", "runs"] + [f"{k}_{s}" for k in keys for s in ("mean", "se", "n")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, restval="")
    writer.writeheader()
    for m in comparison.methods:
        res = comparison.results[m]
        row: dict[str, Any] = {"method": m, "name": res.name, "questions": len(res.rows),
                               "runs": max(int(r["runs"]) for r in res.rows)}
        for k, est in res.summary.items():
            row.update({f"{k}_mean": est.mean, f"{k}_se": est.se, f"{k}_n": est.n})
        writer.writerow(row)
    return buffer.getvalue()


def comparison_dict(comparison: Comparison) -> dict[str, Any]:
    c = comparison
    return {
        "methods": c.methods,
        "names": {m: c.results[m].name for m in c.methods},
        "columns": [vars(col) for col in c.columns + c.diagnostics],
        "metrics": {m: {k: e.to_dict() for k, e in c.results[m].summary.items()} for m in c.methods},
        "marks": c.marks,
        "best_baseline": c.best_baseline,
        "paired": {ref: {m: {k: d.to_dict() for k, d in diffs.items()} for m, diffs in by.items()}
                   for ref, by in c.paired.items()},
        "bootstrap": c.bootstrap,
        "agreement": [a.to_dict() for a in c.agreement],
    }


def write_comparison(comparison: Comparison) -> list[Path]:
    run_dir = comparison.run_dir
    run = RunDir(run_dir)
    atomic_write_text(run.results_md, comparison.markdown)
    atomic_write_text(run.results_csv, csv_text(comparison))
    write_json(run.comparison_json, comparison_dict(comparison))
    return [run.results_md, run.results_csv, run.comparison_json]
