"""``turnrl evaluate``: run a policy on the held-out questions and report 000's metrics with standard errors.

Greedy by default (one run per question); with ``runs`` = k > 1 and a temperature, k sampled runs per question
whose outcomes are averaged per question first. Writes, under ``eval/<name>/``: the conversations, the
per-question outcomes (so methods can be compared pairwise on the same questions), ``metrics.json`` and
``metrics.md``; and adds the policy's row to the run's ``results.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from turnrl import stats
from turnrl.envs import EnvConfig, make_env
from turnrl.errors import ConfigError
from turnrl.generation import BackendConfig, make_generator
from turnrl.judge import LABELS as JUDGE_LABELS, summary_markdown as judge_markdown
from turnrl.layout import CONVERSATIONS, EVALUATION_SETTINGS, METRICS_FILE, PER_QUESTION, RunDir
from turnrl.records import Task, Trajectory, atomic_write_text, read_json, read_trajectories, write_json, write_jsonl
from turnrl.rewards import answer_changed, answers_per_turn, final_answer, uses_thinking_tags
from turnrl.rollout import build_jobs, check_resume, log_rollouts
from turnrl.rewards.scoring import RewardConfig, Scorer, check_reward_fits_tasks
from turnrl.tasks import DatasetConfig, load_split, prepare_split
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class EvalOptions:
    """How the test conversations are sampled."""

    runs: int = 1
    """Runs per question (k); more than 1 needs temperature > 0."""
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 0.95
    seed: int = 1234
    limit: int = 0
    """Evaluate only the first N questions (0: all)."""
    chunk_size: int = 128


@dataclass
class EvaluateConfig:
    """Evaluate a policy on the test split."""

    run_dir: str = "runs/turnrl"
    name: str = ""
    """Label of the policy in tables (default: the checkpoint's method folder, or the model name)."""
    policy: BackendConfig = field(default_factory=BackendConfig)
    teacher: BackendConfig = field(default_factory=BackendConfig)
    """The LLM teacher (clarify environment only)."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    """Used only when the run directory has no tasks/test.jsonl yet."""
    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    split: Literal["test", "val", "train"] = "val"
    """val (the validation pool, for development and choosing settings: written under eval-val/), test (the
    held-out pool that final tables report: only when named, written under eval/), or train."""


# name -> (is a 0/1 outcome per run, description)
METRICS = {
    "accuracy": (True, "final answer correct"),
    "thinking": (True, "every assistant turn outputs <thinking> tags (000's Thinking %)"),
    "format": (True, "final turn starts with the canonical answer statement"),
    "accuracy_formatted": (True, "accuracy among well-formatted final turns"),
    "answered": (True, "final turn names exactly one option"),
    "ambiguous": (True, "final turn names several different options (scored wrong)"),
    "answer_changed": (True, "first stated answer differs from the final one"),
    "final_truncated": (True, "final turn hit the token cap"),
    "reward": (False, "mean scalar reward"),
}


def outcome(traj: Trajectory, task: Task, env=None) -> dict[str, Any]:
    """Everything measured about one test conversation. ``answer`` is the final answer in the task's own option
    letters (comparable across runs and methods whatever order each conversation showed); ``stated`` is the
    letter as the policy wrote it, in the order it was shown (whose spread shows a letter preference)."""
    fa = final_answer(traj, task)
    extra = env.metrics(traj, task) if env is not None else {}
    return {**extra,
        "answer": task.original_letter(fa["answer"], traj.order_at()) if task.choices else fa["answer"],
        "stated": fa["answer"] if task.choices else None,
        "accuracy": float(fa["correct"]),
        "format": float(fa["well_formatted"]),
        "answered": float(fa["status"] == "ok"),
        "ambiguous": float(fa["status"] == "ambiguous"),
        "thinking": float(uses_thinking_tags(traj)),
        "answer_changed": float(answer_changed(traj, task)),
        "final_truncated": float(bool(traj.turns) and traj.turns[-1].truncated),
        "reward": traj.reward,
        "per_turn_answers": answers_per_turn(traj, task),
        **{k: v for k, v in traj.rewards.items() if k.startswith("judge_")},
    }


def per_question(trajectories: list[Trajectory], tasks: dict[str, Task], env=None) -> list[dict[str, Any]]:
    """Outcomes averaged over the runs of each question, in question order."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for traj in trajectories:
        by_task.setdefault(traj.task_id, []).append(outcome(traj, tasks[traj.task_id], env))
    rows = []
    for task_id, runs in by_task.items():
        row: dict[str, Any] = {"task_id": task_id, "gold": tasks[task_id].answer, "runs": len(runs),
                               "answers": [r["answer"] for r in runs], "stated": [r["stated"] for r in runs]}
        for key in runs[0]:
            values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and r.get(key) is not None]
            if values and key not in ("answer", "stated", "per_turn_answers"):
                row[key] = float(np.mean(values))
        formatted = [r["accuracy"] for r in runs if r["format"]]
        if formatted:
            row["accuracy_formatted"] = float(np.mean(formatted))
        rows.append(row)
    return rows


NOT_METRICS = {"task_id", "gold", "runs", "answers", "stated"}


def letter_spread(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How often each letter was stated as the final answer, in the order the options were shown (a constant or
    preferred letter shows here), with ``none`` for no or an ambiguous answer."""
    counts: dict[str, int] = {}
    for row in rows:
        for letter in row.get("stated", []):
            counts[letter or "none"] = counts.get(letter or "none", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == "none", kv[0])))


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each metric's mean, SE and n over questions: binomial SE where each question has one 0/1 outcome,
    sample SE of the per-question values otherwise."""
    single_run = all(r["runs"] == 1 for r in rows)
    extra = sorted({k for r in rows for k in r} - set(METRICS) - NOT_METRICS)
    out = {}
    for key in list(METRICS) + extra:
        values = [r[key] for r in rows if r.get(key) is not None]
        binary = single_run and all(v in (0.0, 1.0) for v in values) and key != "reward" and \
            not key.startswith("judge_")
        out[key] = stats.estimate(values, binary).to_dict()
    return out


def _judge_description(key: str) -> str:
    """judge_overall -> "judge: Overall (0-10)"; judge_second_* likewise for the second judge."""
    second = key.startswith("judge_second_")
    metric = key.removeprefix("judge_second_" if second else "judge_")
    return f"{'second judge' if second else 'judge'}: {JUDGE_LABELS.get(metric, metric)} (0-10)"


def metrics_markdown(name: str, summary: dict[str, dict[str, float]],
                     env_metrics: dict[str, tuple[bool, str]] | None = None) -> str:
    """The metrics with SEs; proportions as percentages, the judge's scores (stored / 10) on its 0-10 scale.
    ``env_metrics``: the environment's ``metric_descriptions`` (a ``family@k`` metric is looked up by family)."""
    known = {**METRICS, **(env_metrics or {})}
    lines = [f"# {name}", "", "| metric | mean ± SE | n | what |", "|---|---|---|---|"]
    for key, est in summary.items():
        e = stats.Estimate(**est)
        family, _, k = key.partition("@")
        pct, what = known.get(key) or known.get(family, (False, ""))
        if k and key not in known:
            what = what.replace(" k ", f" {k} ")  # "solved by turn k" -> "solved by turn 3"
        judge = key.startswith("judge_")
        value = e.fmt(10, 2) if judge else e.fmt(100 if pct else 1, 1 if pct else 3)
        if judge:
            what = _judge_description(key)
        lines.append(f"| {key} | {value}{' %' if pct and e.n else ''} | {e.n} | {what} |")
    return "\n".join(lines) + "\n"


def policy_label(cfg: EvaluateConfig) -> str:
    if cfg.name:
        return cfg.name
    path = Path(cfg.policy.model)
    return path.parent.name if path.name == "checkpoint" else (path.name or cfg.policy.model)


def evaluate(cfg: EvaluateConfig, generator=None) -> dict[str, Any]:
    """Evaluate and write the outputs; ``generator`` reuses an already loaded policy backend."""
    ev = cfg.evaluation
    if ev.runs < 1 or (ev.runs > 1 and ev.temperature <= 0):
        raise ConfigError("runs: more than one run per question needs temperature > 0 (greedy runs are identical)")
    run_dir = Path(cfg.run_dir)
    train, test = prepare_split(cfg.dataset, run_dir)
    check_reward_fits_tasks(cfg.reward.weights, train + test)
    tasks = load_split(cfg.dataset, run_dir, cfg.split)
    if not tasks:
        raise ConfigError(f"{RunDir(run_dir).tasks}: the {cfg.split} split is empty (dataset.n_{cfg.split} is 0)")
    if ev.limit:
        tasks = tasks[: ev.limit]
    task_index = {t.id: t for t in tasks}
    name = policy_label(cfg)
    out_dir = RunDir(run_dir).eval(name, cfg.split)
    env = make_env(cfg.env)
    settings = env.settings()
    jobs = build_jobs(tasks, settings, ev.runs, [ev.temperature], ev.top_p, 0, ev.seed)
    conversations = out_dir / CONVERSATIONS
    policy = generator or make_generator(cfg.policy)
    # Resume a killed evaluation of the same policy; start over if the policy or the settings changed.
    check_resume(conversations, out_dir / EVALUATION_SETTINGS,
                 {"model": cfg.policy.model, "revision": getattr(policy, "revision", ""), "env": settings,
                  "evaluation": asdict(ev), "split": cfg.split}, on_change="restart")
    log_rollouts(conversations, env, jobs, cfg.policy, chunk_size=ev.chunk_size, desc=f"evaluate {name}",
                 teacher=cfg.teacher, generator=policy)
    trajectories = read_trajectories(conversations)
    scorer = Scorer(cfg.reward)
    scorer.score(trajectories, task_index, desc=f"score {name}")
    write_jsonl(conversations, trajectories)
    rows = per_question(trajectories, task_index, env)
    summary = summarise(rows)
    write_jsonl(out_dir / PER_QUESTION, rows)
    result = {"name": name, "model": cfg.policy.model, "backend": getattr(policy, "name", cfg.policy.backend),
              "split": cfg.split, "runs": ev.runs,
              "temperature": ev.temperature, "env": settings, "reward": asdict(cfg.reward), "metrics": summary,
              "stated_letters": letter_spread(rows)}
    if scorer.judge_summary:
        result["judge"] = scorer.judge_summary  # parse failures per judge; agreement of two judges
    write_json(out_dir / METRICS_FILE, result)
    atomic_write_text(out_dir / "metrics.md", metrics_markdown(name, summary, env.metric_descriptions) + (
        "\n## Judge\n\n" + judge_markdown(scorer.judge_summary) if scorer.judge_summary else ""))
    if cfg.split == "test":
        _update_results(run_dir, name, result)
    if (Path(cfg.policy.model) / "turnrl_train.json").exists():
        from turnrl.train.card import write_card

        write_card(Path(cfg.policy.model))  # the checkpoint's card lists its held-out results
    acc = stats.Estimate(**summary["accuracy"])
    logger.info(f"evaluate {name} ({cfg.split}): accuracy {acc.fmt(100)} % (n={acc.n}), format "
                f"{stats.Estimate(**summary['format']).fmt(100)} % -> {out_dir}")
    return result


def _update_results(run_dir: Path, name: str, result: dict[str, Any]) -> None:
    path = RunDir(run_dir).results_json
    results = read_json(path) if path.exists() else {"methods": {}}
    results["methods"][name] = {"model": result["model"], "metrics": result["metrics"]}
    write_json(path, results)
