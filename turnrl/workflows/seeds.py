"""``turnrl run`` with several seeds: the whole experiment once per seed, then one table over seeds.

Seed s re-simulates the log (``rollout.seed`` = s), trains every algorithm on it (``optim.seed`` = s) and evaluates
every policy on the same questions, their options shown in orders drawn with ``evaluation.seed`` + s, in
``<run_dir>/seed<s>/`` (each a complete ``turnrl run`` directory that resumes on its own). The table reports, per
method, the mean over seeds of its accuracy with a two-level bootstrap interval (seeds, then questions within a
seed: :func:`turnrl.stats.seeds_bootstrap`), the per-seed values, the stated-letter spread, how many stated
letters were right, and the paired difference against Base with the same kind of interval (per question, method
minus Base within each seed); then each reward-weighted method against the best baseline (the baseline algorithm,
SFT or STaR-GATE for instance, with the highest mean), likewise. ``results.csv`` holds every per-seed value.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from turnrl import stats
from turnrl.layout import RunDir
from turnrl.records import atomic_write_text, iter_jsonl, write_json
from turnrl.log import get_logger

logger = get_logger(__name__)


def seed_config(cfg, seed: int):
    return replace(cfg, seeds=[], run_dir=str(RunDir(cfg.run_dir).seed(seed).root),
                   rollout=replace(cfg.rollout, seed=seed), optim=replace(cfg.optim, seed=seed),
                   evaluation=replace(cfg.evaluation, seed=cfg.evaluation.seed + seed))


def run_seeds(cfg, run: Callable[[Any], dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """``run`` (``turnrl run`` for one seed) once per seed of ``cfg.seeds``, then the table over seeds."""
    if len(set(cfg.seeds)) != len(cfg.seeds):
        from turnrl.errors import ConfigError

        raise ConfigError(f"seeds: {cfg.seeds} repeats a seed")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunDir(run_dir)
    write_json(folder.config, {**asdict(cfg), "machine": machine})
    per_seed = {}
    for seed in cfg.seeds:
        logger.info(f"run: seed {seed} of {cfg.seeds}")
        per_seed[seed] = run(seed_config(cfg, seed))
    methods = list(dict.fromkeys(m for r in per_seed.values() for m in r["methods"]))
    table = seeds_table(run_dir, cfg.seeds, methods, cfg.split)
    # The environment's own measures of success beside accuracy (multi@k of the feedback environment, whose
    # accuracy is multi@T; earned of the worksheet task), each in a table of the same kind.
    others = {m: seeds_table(run_dir, cfg.seeds, methods, cfg.split, metric=m)
              for m in task_metrics(run_dir, cfg.seeds, methods, cfg.split)}
    markdown = "\n".join([table["markdown"], *(o["markdown"].replace("# Results over", f"## {m}: results over", 1)
                                              for m, o in others.items())])
    atomic_write_text(folder.results_md, markdown)
    atomic_write_text(folder.results_csv, table["csv"])
    write_json(folder.seeds_summary, {**{k: v for k, v in table.items() if k not in ("markdown", "csv")},
                                      "by_metric": {m: {k: v for k, v in o.items() if k not in ("markdown", "csv")}
                                                    for m, o in others.items()}})
    print(markdown)
    return {"table": markdown, "per_seed": per_seed, "methods": methods}


def task_metrics(run_dir: Path, seeds: list[int], methods: list[str], split: str) -> list[str]:
    """The per-question measures beside accuracy that the evaluations hold and a table over seeds reports:
    ``multi@k`` (k = 1..T-1; multi@T is accuracy) and ``earned``, in that order."""
    keys: set[str] = set()
    for m in methods:
        for s in seeds:
            for row in (_rows(run_dir, s, m, split) or {}).values():
                keys.update(k for k, v in row.items() if isinstance(v, (int, float)))
    from turnrl.stages.comparison import AT_K

    multi = sorted((int(m["k"]), k) for k in keys if (m := AT_K.match(k)) and m["family"] == "multi")
    return [k for _, k in multi[:-1]] + (["earned"] if "earned" in keys else [])


def _rows(run_dir: Path, seed: int, method: str, split: str) -> dict[str, dict[str, Any]] | None:
    path = RunDir(run_dir).seed(seed).per_question(method, split)
    if not path.exists():
        return None
    return {row["task_id"]: row for _, row in iter_jsonl(path)}


def right_of_stated(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(right, stated): the final answers that state one letter, and how many of them are the gold's."""
    stated = [answer == row["gold"] for row in rows
              for answer, letter in zip(row.get("answers", []), row.get("stated", [])) if letter]
    return sum(stated), len(stated)


def _paired(rows: dict, method: str, reference: str, seeds: list[int], metric: str, n_boot: int) -> dict | None:
    """method minus reference per question within each seed both have, over seeds (two-level bootstrap)."""
    both = [s for s in seeds if rows.get(method, {}).get(s) and rows.get(reference, {}).get(s)]
    if not both:
        return None
    a, b = rows[method], rows[reference]
    diffs = [[float(a[s][t][metric]) - float(b[s][t][metric]) for t in a[s] if t in b[s]] for s in both]
    return stats.seeds_bootstrap(diffs, n_boot).to_dict()


def _delta(d: dict | None) -> str:
    return f"{d['mean'] * 100:+.1f} [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]" if d else ""


def seeds_table(run_dir: Path, seeds: list[int], methods: list[str], split: str, metric: str = "accuracy",
                baseline: str = "base", n_boot: int = 10_000) -> dict[str, Any]:
    """Mean over seeds with two-level bootstrap intervals, per-seed values and paired differences vs Base and of
    the reward-weighted methods vs the best baseline."""
    from turnrl.algorithms.registry import algorithms
    from turnrl.stages.comparison import baseline_methods, display_name
    from turnrl.stages.evaluate import letter_spread

    rows = {m: {s: _rows(run_dir, s, m, split) for s in seeds} for m in methods}
    out: dict[str, Any] = {"metric": metric, "split": split, "seeds": seeds, "methods": {}}
    for m in methods:
        done = {s: r for s, r in rows[m].items() if r}
        if not done:
            continue
        est = stats.seeds_bootstrap([[float(q[metric]) for q in r.values()] for r in done.values()], n_boot)
        every = [q for r in done.values() for q in r.values()]
        entry = {"estimate": est.to_dict(), "seeds": list(done), "stated_letters": letter_spread(every),
                 "right_of_stated": right_of_stated(every)}
        if m != baseline and (vs := _paired(rows, m, baseline, seeds, metric, n_boot)):
            entry["vs_base"] = vs
        out["methods"][m] = entry
    candidates = [m for m in baseline_methods() if m in out["methods"]]
    best = max(candidates, key=lambda m: (out["methods"][m]["estimate"]["mean"], -candidates.index(m)),
               default=None)
    learned = {a.name for a in algorithms() if not a.baseline}
    rl = [m for m in out["methods"] if m in learned]
    if best is not None and rl:
        out["best_baseline"] = best
        out["vs_best_baseline"] = {m: _paired(rows, m, best, seeds, metric, n_boot) for m in rl}
    lines = [f"# Results over {len(seeds)} seeds ({split} pool)", "",
             f"{metric.capitalize()} %: mean over seeds of the per-seed mean over questions, with a 95 % interval "
             "from a two-level bootstrap (seeds, then questions within each seed); Δ vs Base likewise, on the "
             "per-question differences within each seed. Stated letters: final answers as the policy wrote "
             "them, options shown in an order drawn per question and seed.", "",
             "| Method | " + f"{metric.capitalize()} % [95 %] | per seed | Δ vs Base [95 %] | stated letters | "
             "right / stated | questions × seeds |", "|---|---|---|---|---|---|---|"]
    csv_rows = [["method", "seed", metric, "n_questions"]]
    for m, e in out["methods"].items():
        est = e["estimate"]
        right, stated = e["right_of_stated"]
        total = sum(e["stated_letters"].values()) or 1
        spread = " ".join(f"{k} {v / total:.0%}" for k, v in sorted(e["stated_letters"].items(),
                                                                     key=lambda kv: (kv[0] == "none", kv[0])))
        lines.append(f"| {display_name(m)} | {est['mean'] * 100:.1f} [{est['low'] * 100:.1f}, {est['high'] * 100:.1f}]"
                     f" | {' / '.join(f'{v * 100:.1f}' for v in est['per_seed'])} | {_delta(e.get('vs_base'))} | "
                     f"{spread} | {right} / {stated} | {est['n_questions']} × {len(e['seeds'])} |")
        csv_rows += [[m, s, f"{v:.6f}", len(rows[m][s])] for s, v in zip(e["seeds"], est["per_seed"])]
    if out.get("vs_best_baseline"):
        name = display_name(out["best_baseline"])
        lines += ["", f"Against the best baseline, {name} (paired, per question within each seed; two-level "
                      "bootstrap):", "", f"| Method | Δ vs {name} [95 %] |", "|---|---|"]
        lines += [f"| {display_name(m)} | {_delta(d)} |" for m, d in out["vs_best_baseline"].items()]
    buf = io.StringIO()
    csv.writer(buf).writerows(csv_rows)
    out["markdown"] = "\n".join(lines) + "\n"
    out["csv"] = buf.getvalue()
    return out
