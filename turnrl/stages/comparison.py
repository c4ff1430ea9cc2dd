"""The comparison of a run's evaluated policies as data: each method's per-question outcomes and summary
(:class:`MethodResult`), the table's columns and ranks, and the paired differences against Base and the best
baseline (:class:`Comparison`). Means and SEs are recomputed from the per-question outcomes with
:func:`turnrl.stages.evaluate.summarise`, so the table and each evaluation's ``metrics.json`` use one definition
(:mod:`turnrl.stats`). Rendered by :mod:`turnrl.stages.tables`, drawn by :mod:`turnrl.stages.plots`; the
``turnrl compare`` stage is :mod:`turnrl.stages.compare`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from turnrl import stats
from turnrl.algorithms.registry import algorithms
from turnrl.errors import InputError
from turnrl.layout import CONVERSATIONS, METRICS_FILE, PER_QUESTION, RunDir, SCORED
from turnrl.records import iter_jsonl, read_json
from turnrl.stages.evaluate import METRICS, summarise
from turnrl.stages.rejudge import JudgeAgreement, judge_agreement, read_judged_log, second_judge_per_question


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
    folder = RunDir(run_dir).eval(method, split)
    path = folder / PER_QUESTION
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
    if (folder / METRICS_FILE).exists():
        info = {k: v for k, v in read_json(folder / METRICS_FILE).items() if k != "metrics"}
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


def agreements(run_dir: Path, methods: list[str], samples: int, seed: int,
               split: str = "test") -> list[JudgeAgreement]:
    """The two judges' agreement on the methods' test conversations (pooled) and on the logged data, where a
    second judge scored them."""
    out = []
    tested = {m: read_judged_log(RunDir(run_dir).conversations(m, split)) for m in methods}
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


def evaluated_methods(run_dir: Path, split: str = "test") -> list[str]:
    return [p.name for p in sorted(RunDir(run_dir).eval("", split).glob("*")) if (p / PER_QUESTION).exists()]
