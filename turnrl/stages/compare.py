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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from turnrl import stats
from turnrl.errors import ConfigError, InputError
from turnrl.layout import RunDir
from turnrl.stages.comparison import agreements, AT_K, baseline_methods, Comparison, default_order, \
    evaluated_methods, load_method, paired, PAIRED_METRICS, pick_best_baseline, rank_marks, table_columns
from turnrl.stages.tables import markdown, write_comparison
from turnrl.stages.plots import method_colors, plot_at_k
from turnrl.stages.report import write_report
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class CompareConfig:
    """Compare the policies evaluated in a run directory: table, paired differences, plots, HTML report."""

    run_dir: str = "runs/turnrl"
    methods: list[str] = field(default_factory=list)
    """Methods to compare, in table order (folders under eval/; default: all evaluated, Base first)."""
    split: str = "test"
    """The pool whose evaluations are compared: test (eval/) or val (eval-val/)."""
    compare_against: str = "base"
    """The reference of the first paired comparison (000's Base: the logging policy before training)."""
    baselines: list[str] = field(default_factory=baseline_methods)
    """The methods among which the best baseline (highest accuracy) is picked for the second paired comparison."""
    bootstrap_samples: int = 10_000
    """Resamples of the paired bootstrap."""
    bootstrap_seed: int = 0
    report: bool = True
    """Also draw the plots (plots/*.png) and write report.html."""


def build_comparison(run_dir: Path, methods: list[str], compare_against: str = "base",
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
    for reference in dict.fromkeys(r for r in (compare_against, best) if r in results and len(methods) > 1):
        comparisons[reference] = {m: {k: paired(results[m], results[reference], k, samples, seed) for k in metrics}
                                  for m in methods if m != reference}
    comparison = Comparison(run_dir, methods, results, columns, diagnostics, marks, best, comparisons,
                            {"samples": samples, "seed": seed, "level": 0.95},
                            agreements(run_dir, methods, samples, seed, split), split=split)
    comparison.markdown = markdown(comparison, compare_against)
    return comparison


def compare_run(cfg: CompareConfig) -> tuple[Comparison, Path | None]:
    """Write the comparison files (and the report); return the comparison and the report's path."""
    run_dir = Path(cfg.run_dir)
    available = evaluated_methods(run_dir, cfg.split)
    methods = cfg.methods or default_order(available, cfg.compare_against)
    if not methods:
        raise InputError(f"{RunDir(run_dir).eval('', cfg.split)}: no evaluated policies; run `turnrl evaluate` first")
    comparison = build_comparison(run_dir, methods, cfg.compare_against, cfg.baselines, cfg.bootstrap_samples,
                                  cfg.bootstrap_seed, cfg.split)
    write_comparison(comparison)
    return comparison, write_report(comparison) if cfg.report else None


def compare(cfg: CompareConfig) -> Path | None:
    comparison, report = compare_run(cfg)
    print(comparison.markdown)
    run = RunDir(cfg.run_dir)
    logger.info(f"written: {run.results_md}, {run.results_csv}, {run.comparison_json}")
    if report is not None:
        logger.info(f"report: {report}")
    return report


def multi_at_k_curves(run_dir: str | Path, methods: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per evaluated method: multi@k (mean, SE, n) for k = 1..T from ``eval/<method>/per_question.jsonl`` (SEs
    as every table of the run: :mod:`turnrl.stats`), and 004 Table 6's correction rate
    Corr = (multi@T - multi@1) / (1 - multi@1), the share of first-turn failures fixed by the feedback."""
    run_dir = Path(run_dir)
    curves: dict[str, dict[str, Any]] = {}
    for method in methods or evaluated_methods(run_dir):
        summary = load_method(run_dir, method).summary
        points = sorted((int(m["k"]), e) for key, e in summary.items()
                        if (m := AT_K.match(key)) and m["family"] == "multi" and e.n)
        if not points:
            continue
        first, last = points[0][1].mean, points[-1][1].mean
        curves[method] = {"k": [k for k, _ in points], "mean": [e.mean for _, e in points],
                          "se": [e.se for _, e in points], "n": points[0][1].n,
                          "correction_rate": (last - first) / (1 - first) if first < 1 else float("nan")}
    return curves


def plot_multi_at_k(run_dir: str | Path, methods: list[str] | None = None, output: str | Path = "") -> Path:
    """multi@k against k (mean ± SE), one line per method, as a PNG (default: <run_dir>/multi_at_k.png). It is the
    figure the run's report draws for the feedback environment (plots/multi_at_k.png), for any choice of methods."""
    run_dir = Path(run_dir)
    methods = methods or default_order(evaluated_methods(run_dir))
    if not multi_at_k_curves(run_dir, methods):
        raise InputError(f"{RunDir(run_dir).eval()}: no evaluation of {methods} has multi@k (env.name: feedback)")
    comparison = build_comparison(run_dir, methods)
    path = Path(output) if output else run_dir / "multi_at_k.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(plot_at_k("multi", comparison, method_colors(methods)))
    tmp.replace(path)
    return path
