"""``turnrl compare``: every evaluated policy of a run in one table, as 000's Tables 1-14, plus paired comparisons.

Reads ``eval/<method>/per_question.jsonl`` (and ``metrics.json``) for each method and writes, in the run
directory:

- ``results.md`` / ``results.csv``: one row per method; Accuracy, Thinking %, the judge's R-metrics (0-10, when
  present), format rate, accuracy among well-formatted answers, mean reward and any metric the environment adds
  (multi@k, tool-call rate, ...), each as mean ± SE with n. Best in bold, second underlined, ranked on the values
  as displayed (ties share a mark).
- paired comparisons of every method against Base and against the best baseline (the non-RL method with the
  highest accuracy) on the questions both answered: the mean per-question difference, a percentile bootstrap 95%
  interval over questions (fixed seed) and the questions won / lost / tied (:func:`turnrl.stats.paired_difference`).
- where a second judge scored the conversations (``turnrl rejudge``, or ``reward.judge.second``): the two judges'
  agreement per rubric item (Spearman, Kendall tau-b, quadratic-weighted kappa, bootstrap intervals over
  conversations) on the compared methods' test conversations and on the logged data
  (:mod:`turnrl.stages.rejudge`), and the second judge's scores as "(2nd judge)" columns of the results table;
- ``comparison.json``: all of the above, machine-readable; and, unless ``report`` is off, the plots and
  ``report.html`` (:mod:`turnrl.stages.report`).

Means and SEs are recomputed from the per-question outcomes with :func:`turnrl.stages.evaluate.summarise`, so the table
and each evaluation's ``metrics.json`` use one definition (:mod:`turnrl.stats`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnrl import stats
from turnrl.algorithms.registry import algorithms
from turnrl.errors import ConfigError, InputError
from turnrl.layout import CONVERSATIONS, SCORED, eval_dir
from turnrl.stages.evaluate import METRICS, letter_spread, summarise
from turnrl.stages.rejudge import JudgeAgreement, agreement_note, agreement_rows, agreement_title, \
    AGREEMENT_HEADER, judge_agreement, read_judged_log, second_judge_per_question
from turnrl.records import atomic_write_text, iter_jsonl, read_json, write_json

BASE = "Base"
"""The logging policy before training (000's Base); every other method's name comes from the algorithm registry."""


def display_names() -> dict[str, str]:
    """How 000, 003 and 004 name the methods, in table order; other folders under eval/ keep their own name."""
    return {"base": BASE, **{a.name: a.display for a in algorithms()}}


def baseline_methods() -> list[str]:
    """The methods that are not reward-weighted RL: the candidates for "best baseline"."""
    return [a.name for a in algorithms() if a.baseline]

JUDGE_HEADERS = {"judge_overall": "R-Overall", "judge_accuracy": "R-Accuracy", "judge_reasoning": "R-Reasoning",
                 "judge_comprehensiveness": "R-Comprehensive", "judge_pedagogical": "R-Pedagogic",
                 "judge_confidence": "R-Confidence"}
"""000's six judge metrics, in its column order (a second judge's ``judge_second_*`` follow). Stored as score / 10,
shown on the judge's 0-10 scale."""

AT_K = re.compile(r"^(?P<family>.+)@(?P<k>\d+)$")
"""Metrics of one family indexed by k (multi@1 .. multi@T, pass@k): shown together, in order of k."""

DIAGNOSTICS = {"answered": "Answered %", "ambiguous": "Ambiguous %", "answer_changed": "Answer changed %",
               "final_truncated": "Final turn capped %"}
"""Per-method behaviour worth seeing but not ranked (more is neither better nor worse)."""

PAIRED_METRICS = ["accuracy", "multi@1", "earned", "reward", "judge_overall"]
"""Metrics compared pairwise (those a run has). multi@1 (feedback environment): accuracy is multi@T there, which
elimination over the options inflates; multi@1 is the first-answer knowledge measure. earned (worksheet
environment): accuracy net of the declared cost of asking, the task's success."""


@dataclass
class Column:
    """A metric as the table shows it: ``mean * scale`` with ``digits`` decimals."""

    key: str
    header: str
    scale: float
    digits: int
    ranked: bool = True

    def fmt(self, est: stats.Estimate) -> str:
        return est.fmt(self.scale, self.digits)

    def rounded(self, value: float) -> float:
        return round(value * self.scale, self.digits)

    @property
    def diff_header(self) -> str:
        return "Δ " + (self.header.removesuffix(" %") + " (points)" if self.scale == 100 else self.header)

    def fmt_diff(self, d: stats.PairedDiff) -> tuple[str, str]:
        s, k = self.scale, self.digits
        return f"{d.diff * s:+.{k}f}", f"[{d.low * s:+.{k}f}, {d.high * s:+.{k}f}]"


@dataclass
class MethodResult:
    """One evaluated policy: its per-question outcomes, their summary, and how it was evaluated."""

    method: str
    rows: list[dict[str, Any]]
    summary: dict[str, stats.Estimate]
    info: dict[str, Any] = field(default_factory=dict)
    """How it was evaluated: metrics.json without the metrics (model, split, runs, temperature, env)."""

    @property
    def name(self) -> str:
        return display_name(self.method)

    def values(self, key: str) -> dict[str, float]:
        """task_id -> per-question value of ``key`` (questions that have it)."""
        return {r["task_id"]: float(r[key]) for r in self.rows if isinstance(r.get(key), (int, float))}


@dataclass
class Comparison:
    run_dir: Path
    methods: list[str]
    results: dict[str, MethodResult]
    columns: list[Column]
    diagnostics: list[Column]
    marks: dict[str, dict[str, str]]
    """column key -> method -> "best" / "second" / ""."""
    best_baseline: str | None
    paired: dict[str, dict[str, dict[str, stats.PairedDiff]]]
    """reference method -> method -> metric -> paired difference (method minus reference)."""
    bootstrap: dict[str, Any]
    agreement: list[JudgeAgreement] = field(default_factory=list)
    """Where a second judge scored conversations: the two judges' agreement on the test conversations (the
    compared methods pooled) and on the logged data."""
    markdown: str = ""
    split: str = "test"
    """The pool the methods were evaluated on (test, or val for development runs)."""

    def column(self, key: str) -> Column:
        return next(c for c in self.columns + self.diagnostics if c.key == key)

    def n_questions(self, method: str) -> int:
        return len(self.results[method].rows)


def display_name(method: str) -> str:
    """The papers' name; ``<algo>-refresh`` (turnrl run's rollout refresh) as "<name> (refresh)"."""
    names = display_names()
    if method not in names and method.endswith("-refresh"):
        return display_name(method.removesuffix("-refresh")) + " (refresh)"
    return names.get(method, method)


def default_order(methods: list[str], baseline: str = "base") -> list[str]:
    """Base first, then the registered algorithms in table order, then any others alphabetically."""
    known = list(display_names())
    return sorted(methods, key=lambda m: (m != baseline, known.index(m) if m in known else len(known), m))


def load_method(run_dir: Path, method: str, split: str = "test") -> MethodResult:
    folder = eval_dir(run_dir, method, split)
    path = folder / "per_question.jsonl"
    if not path.exists():
        raise InputError(f"{path}: missing; evaluate {method!r} first (`turnrl evaluate --name {method}`)")
    rows = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or "task_id" not in row:
            raise InputError(f"{path}:{lineno}: expected an object with 'task_id' and the question's outcomes")
        row.setdefault("runs", 1)
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no questions; evaluate {method!r} again")
    second = second_judge_per_question(folder / CONVERSATIONS)  # `turnrl rejudge`'s scores, beside the log
    if second is not None:
        for row in rows:
            for key in [k for k in row if k.startswith("judge_second_")]:
                del row[key]
            row.update(second.get(row["task_id"], {}))
    info = {}
    if (folder / "metrics.json").exists():
        info = {k: v for k, v in read_json(folder / "metrics.json").items() if k != "metrics"}
    summary = {k: stats.Estimate(**v) for k, v in summarise(rows).items()}
    return MethodResult(method, rows, summary, info)


def _at_k_sort(key: str) -> tuple:
    match = AT_K.match(key)
    return (match["family"], int(match["k"])) if match else (key, -1)


def table_columns(results: dict[str, MethodResult]) -> tuple[list[Column], list[Column]]:
    """The paper's columns, then ours, then the environment's; and the unranked diagnostics."""
    present = {k for r in results.values() for k, e in r.summary.items() if e.n}
    columns = [Column("accuracy", "Accuracy %", 100, 1), Column("thinking", "Thinking %", 100, 1)]
    second = {k.replace("judge_", "judge_second_"): h + " (2nd judge)" for k, h in JUDGE_HEADERS.items()}
    named = {**JUDGE_HEADERS, **second}
    judge = [k for k in named if k in present] + sorted(
        k for k in present if k.startswith("judge_") and k not in named)
    columns += [Column(k, named.get(k, "R-" + k.removeprefix("judge_")), 10, 2) for k in judge]
    columns += [Column("format", "Format %", 100, 1), Column("accuracy_formatted", "Acc. when formatted %", 100, 1),
                Column("reward", "Mean reward", 1, 3)]
    extras = sorted((k for k in present if k not in METRICS and not k.startswith("judge_")), key=_at_k_sort)
    for key in extras:
        values = [v for r in results.values() for v in r.values(key).values()]
        rate = all(0.0 <= v <= 1.0 for v in values)
        # Only k-indexed success rates are known to be better when higher; other environment metrics
        # (e.g. how often a tool is called) are reported without a ranking.
        label = key if AT_K.match(key) else key.replace("_", " ").capitalize()  # turns_used -> Turns used
        columns.append(Column(key, label + (" %" if rate else ""), 100 if rate else 1, 1 if rate else 3,
                              ranked=bool(AT_K.match(key)) and rate))
    diagnostics = [Column(k, h, 100, 1, ranked=False) for k, h in DIAGNOSTICS.items() if k in present]
    return columns, diagnostics


def rank_marks(results: dict[str, MethodResult], column: Column) -> dict[str, str]:
    """Best in bold, second underlined (000), ranked on the displayed values so that equal-looking cells share a
    mark. Nothing is marked when all values are equal, and the second only when it is not also the lowest."""
    shown = {m: column.rounded(r.summary[column.key].mean) for m, r in results.items()
             if column.key in r.summary and r.summary[column.key].n and not math.isnan(r.summary[column.key].mean)}
    distinct = sorted(set(shown.values()), reverse=True)
    best = distinct[0] if len(distinct) >= 2 else None
    second = distinct[1] if len(distinct) >= 3 else None
    return {m: ("best" if m in shown and shown[m] == best else "second" if m in shown and shown[m] == second
                else "") for m in results}


def pick_best_baseline(results: dict[str, MethodResult], baselines: list[str]) -> str | None:
    """The baseline with the highest accuracy (ties: higher mean reward, then the earlier in ``baselines``)."""
    present = [m for m in baselines if m in results]
    if not present:
        return None

    def key(m: str) -> tuple:
        acc, reward = results[m].summary["accuracy"].mean, results[m].summary["reward"].mean
        return (-acc, -(reward if not math.isnan(reward) else -math.inf), present.index(m))

    return min(present, key=key)


def paired(a: MethodResult, b: MethodResult, key: str, samples: int, seed: int) -> stats.PairedDiff:
    """``a`` minus ``b`` on the questions both have a value for, in a's question order."""
    va, vb = a.values(key), b.values(key)
    common = [t for t in va if t in vb]
    return stats.paired_difference([va[t] for t in common], [vb[t] for t in common], n_boot=samples, seed=seed)


def build_comparison(run_dir: Path, methods: list[str], baseline: str = "base",
                     baselines: list[str] | None = None, samples: int = 10_000, seed: int = 0,
                     split: str = "test") -> Comparison:
    run_dir = Path(run_dir)
    if samples < 100:
        raise ConfigError(f"bootstrap_samples: {samples}; use at least 100 (10,000 gives stable 95% intervals)")
    results = {m: load_method(run_dir, m, split) for m in methods}
    columns, diagnostics = table_columns(results)
    # A reference policy (the constant backend's always-a) is shown, not ranked: it marks what chance earns.
    ranked = {m: r for m, r in results.items() if r.info.get("backend") != "constant"}
    marks = {c.key: rank_marks(ranked, c) if c.ranked else {} for c in columns}
    best = pick_best_baseline(results, baseline_methods() if baselines is None else baselines)
    metrics = [k for k in PAIRED_METRICS if any(k in r.summary and r.summary[k].n for r in results.values())]
    comparisons: dict[str, dict[str, dict[str, stats.PairedDiff]]] = {}
    for reference in dict.fromkeys(r for r in (baseline, best) if r in results and len(methods) > 1):
        comparisons[reference] = {m: {k: paired(results[m], results[reference], k, samples, seed) for k in metrics}
                                  for m in methods if m != reference}
    comparison = Comparison(run_dir, methods, results, columns, diagnostics, marks, best, comparisons,
                            {"samples": samples, "seed": seed, "level": 0.95},
                            agreements(run_dir, methods, samples, seed, split), split=split)
    comparison.markdown = markdown(comparison, baseline)
    return comparison


def agreements(run_dir: Path, methods: list[str], samples: int, seed: int,
               split: str = "test") -> list[JudgeAgreement]:
    """The two judges' agreement on the methods' test conversations (pooled) and on the logged data, where a
    second judge scored them."""
    out = []
    tested = {m: read_judged_log(eval_dir(run_dir, m, split) / CONVERSATIONS) for m in methods}
    tested = {m: log for m, log in tested.items() if log is not None}
    if tested:
        names = ", ".join(display_name(m) for m in tested)
        out.append(judge_agreement(f"test conversations ({names})", list(tested.values()), samples, seed))
    logged = read_judged_log(run_dir / SCORED)
    if logged is not None:
        out.append(judge_agreement(f"logged data ({SCORED})", [logged], samples, seed))
    return out


def cell(comparison: Comparison, method: str, column: Column) -> tuple[str, str]:
    """(text, mark) of one table cell; n is shown where it differs from the method's number of questions."""
    est = comparison.results[method].summary.get(column.key, stats.Estimate(float("nan"), float("nan"), 0))
    text = column.fmt(est)
    if est.n and est.n != comparison.n_questions(method):
        text += f" (n={est.n})"
    return text, comparison.marks.get(column.key, {}).get(method, "")


Cell = tuple[str, str]
"""(text, mark): mark is "best", "second" or ""."""


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


def paired_tables(c: Comparison, baseline: str = "base") -> list[Table]:
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
        title = "Base" if reference == baseline else f"the best baseline, {display_name(reference)}"
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


def markdown(comparison: Comparison, baseline: str = "base") -> str:
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
    for table in paired_tables(c, baseline):
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
    atomic_write_text(run_dir / "results.md", comparison.markdown)
    atomic_write_text(run_dir / "results.csv", csv_text(comparison))
    write_json(run_dir / "comparison.json", comparison_dict(comparison))
    return [run_dir / "results.md", run_dir / "results.csv", run_dir / "comparison.json"]


@dataclass
class CompareConfig:
    """Compare the policies evaluated in a run directory: table, paired differences, plots, HTML report."""

    run_dir: str = "runs/turnrl"
    methods: list[str] = field(default_factory=list)
    """Methods to compare, in table order (folders under eval/; default: all evaluated, Base first)."""
    split: str = "test"
    """The pool whose evaluations are compared: test (eval/) or val (eval-val/)."""
    baseline: str = "base"
    """The reference of the first paired comparison (000's Base: the logging policy before training)."""
    baselines: list[str] = field(default_factory=baseline_methods)
    """The methods among which the best baseline (highest accuracy) is picked for the second paired comparison."""
    bootstrap_samples: int = 10_000
    """Resamples of the paired bootstrap."""
    bootstrap_seed: int = 0
    report: bool = True
    """Also draw the plots (plots/*.png) and write report.html."""


def evaluated_methods(run_dir: Path, split: str = "test") -> list[str]:
    return [p.name for p in sorted(eval_dir(run_dir, "", split).glob("*")) if (p / "per_question.jsonl").exists()]
