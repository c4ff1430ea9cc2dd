"""``turnrl run`` with several seeds: the whole experiment once per seed, then one table over seeds.

Seed s re-simulates the log (``rollout.seed`` = s), trains every algorithm on it (``optim.seed`` = s) and evaluates
every policy on the same questions, their options shown in orders drawn with ``evaluation.seed`` + s, in
``<run_dir>/seed<s>/`` (each a complete ``turnrl run`` directory that resumes on its own). The table reports, per
method, the mean over seeds of its accuracy with a two-level bootstrap interval (seeds, then questions within a
seed: :func:`turnrl.stats.seeds_bootstrap`), the per-seed values, the stated-letter spread, and the paired
difference against Base with the same kind of interval (per question, method minus Base within each seed).
``results.csv`` holds every per-seed value.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from turnrl import stats
from turnrl.layout import eval_dir
from turnrl.records import atomic_write_text, iter_jsonl, write_json
from turnrl.log import get_logger

logger = get_logger(__name__)


def seed_config(cfg, seed: int):
    return replace(cfg, seeds=[], run_dir=str(Path(cfg.run_dir) / f"seed{seed}"),
                   rollout=replace(cfg.rollout, seed=seed), optim=replace(cfg.optim, seed=seed),
                   evaluation=replace(cfg.evaluation, seed=cfg.evaluation.seed + seed))


def run_seeds(cfg, run: Callable[[Any], dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """``run`` (``turnrl run`` for one seed) once per seed of ``cfg.seeds``, then the table over seeds."""
    if len(set(cfg.seeds)) != len(cfg.seeds):
        from turnrl.errors import ConfigError

        raise ConfigError(f"seeds: {cfg.seeds} repeats a seed")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run_config.json", {**asdict(cfg), "machine": machine})
    per_seed = {}
    for seed in cfg.seeds:
        logger.info(f"run: seed {seed} of {cfg.seeds}")
        per_seed[seed] = run(seed_config(cfg, seed))
    methods = list(dict.fromkeys(m for r in per_seed.values() for m in r["methods"]))
    table = seeds_table(run_dir, cfg.seeds, methods, cfg.split)
    atomic_write_text(run_dir / "results.md", table["markdown"])
    atomic_write_text(run_dir / "results.csv", table["csv"])
    write_json(run_dir / "seeds.json", {k: v for k, v in table.items() if k not in ("markdown", "csv")})
    print(table["markdown"])
    return {"table": table["markdown"], "per_seed": per_seed, "methods": methods}


def _rows(run_dir: Path, seed: int, method: str, split: str) -> dict[str, dict[str, Any]] | None:
    path = eval_dir(run_dir / f"seed{seed}", method, split) / "per_question.jsonl"
    if not path.exists():
        return None
    return {row["task_id"]: row for _, row in iter_jsonl(path)}


def seeds_table(run_dir: Path, seeds: list[int], methods: list[str], split: str, metric: str = "accuracy",
                baseline: str = "base", n_boot: int = 10_000) -> dict[str, Any]:
    """Mean over seeds with two-level bootstrap intervals, per-seed values and paired differences vs Base."""
    from turnrl.stages.compare import display_name
    from turnrl.stages.evaluate import letter_spread

    rows = {m: {s: _rows(run_dir, s, m, split) for s in seeds} for m in methods}
    out: dict[str, Any] = {"metric": metric, "split": split, "seeds": seeds, "methods": {}}
    for m in methods:
        done = {s: r for s, r in rows[m].items() if r}
        if not done:
            continue
        est = stats.seeds_bootstrap([[float(q[metric]) for q in r.values()] for r in done.values()], n_boot)
        letters = letter_spread([q for r in done.values() for q in r.values()])
        entry = {"estimate": est.to_dict(), "seeds": list(done), "stated_letters": letters}
        base = {s: rows[baseline][s] for s in done if baseline in rows and rows[baseline].get(s)}
        if m != baseline and base:
            diffs = [[float(done[s][t][metric]) - float(base[s][t][metric]) for t in done[s] if t in base[s]]
                     for s in base]
            entry["vs_base"] = stats.seeds_bootstrap(diffs, n_boot).to_dict()
        out["methods"][m] = entry
    lines = [f"# Results over {len(seeds)} seeds ({split} pool)", "",
             f"{metric.capitalize()} %: mean over seeds of the per-seed mean over questions, with a 95 % interval "
             "from a two-level bootstrap (seeds, then questions within each seed); Δ vs Base likewise, on the "
             "per-question differences within each seed. Stated letters: final answers as the policy wrote "
             "them, options shown in an order drawn per question and seed.", "",
             "| Method | " + f"{metric.capitalize()} % [95 %] | per seed | Δ vs Base [95 %] | stated letters | "
             "questions × seeds |", "|---|---|---|---|---|---|"]
    csv_rows = [["method", "seed", metric, "n_questions"]]
    for m, e in out["methods"].items():
        est = e["estimate"]
        vs = e.get("vs_base")
        delta = f"{vs['mean'] * 100:+.1f} [{vs['low'] * 100:+.1f}, {vs['high'] * 100:+.1f}]" if vs else ""
        total = sum(e["stated_letters"].values()) or 1
        spread = " ".join(f"{k} {v / total:.0%}" for k, v in sorted(e["stated_letters"].items(),
                                                                     key=lambda kv: (kv[0] == "none", kv[0])))
        lines.append(f"| {display_name(m)} | {est['mean'] * 100:.1f} [{est['low'] * 100:.1f}, {est['high'] * 100:.1f}]"
                     f" | {' / '.join(f'{v * 100:.1f}' for v in est['per_seed'])} | {delta} | {spread} | "
                     f"{est['n_questions']} × {len(e['seeds'])} |")
        csv_rows += [[m, s, f"{v:.6f}", len(rows[m][s])] for s, v in zip(e["seeds"], est["per_seed"])]
    buf = io.StringIO()
    csv.writer(buf).writerows(csv_rows)
    out["markdown"] = "\n".join(lines) + "\n"
    out["csv"] = buf.getvalue()
    return out
