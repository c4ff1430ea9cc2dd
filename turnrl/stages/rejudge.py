"""``turnrl rejudge``: score conversations that a judge already scored with a second judge, beside the first
judge's scores, and measure how the two judges agree (000 App. B rescores its conversations with a second judge).

**What it writes.** It reads logs of judged conversations -- by default the scored log
(``scored/trajectories.jsonl``) and every evaluation's test conversations (``eval/<name>/conversations.jsonl``)
-- and writes beside each one ``second_judge.jsonl`` (:func:`turnrl.layout.second_judge_file`): one record per
conversation with the second judge's 0-10 rubric scores, its answer (or the unreadable answers and why), the
judge's backend and model, and a fingerprint of the conversation it judged. The logs themselves are only read:
the first judge's components, rewards and records stay exactly as they are.

**Resuming.** Judging goes through the judge's cache (:mod:`turnrl.judge`), ``chunk_size`` conversations at a
time, each chunk appended to a :class:`~turnrl.records.ResumableJsonlWriter`: a killed run rerun with the same
command judges only what is missing and ends with the file an uninterrupted run writes. The second judge's
settings are recorded in ``second_judge.json``; a rerun with another judge (model or sampling settings) is
refused unless ``overwrite`` asks to replace the file, because its records would mix two judges. A record whose
conversation has changed since (the log was simulated or scored again) is dropped and the conversation judged
again.

**Agreement** (:func:`judge_agreement`). Per rubric item, over the conversations both judges scored: Spearman's
rho, Kendall's tau-b and Cohen's kappa with quadratic weights, each with a percentile bootstrap interval over
conversations, and the mean absolute and signed differences (:func:`turnrl.stats.rater_agreement`). ``turnrl
rejudge`` prints it for each log; ``turnrl compare`` shows it for the compared methods' test conversations
(pooled) and for the logged data, in ``results.md``, ``comparison.json`` and ``report.html``, and adds the second
judge's per-method means as the results table's "(2nd judge)" columns. Conversations scored with
``reward.judge.second`` (their ``judge_second_*`` components) are read the same way where no
``second_judge.jsonl`` exists; where one does, it is the second judge.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turnrl.errors import ConfigError, InputError
from turnrl.judge import LABELS, METRICS, PRIMARY, SECOND, Judge, JudgeConfig
from turnrl.layout import CONVERSATIONS, RunDir, SCORED, second_judge_file
from turnrl.records import ResumableJsonlWriter, Task, iter_jsonl, read_json, read_trajectories, \
    write_json, write_jsonl
from turnrl.stats import RaterAgreement, rater_agreement
from turnrl.log import get_logger

logger = get_logger(__name__)

SETTINGS = ("backend", "model", "temperature", "top_p", "max_new_tokens", "seed", "retries", "retry_temperature")
"""The judge settings that determine its scores (recorded in ``second_judge.json``; another value is another
judge). Endpoints, concurrency and timeouts are not among them."""


@dataclass
class RejudgeConfig:
    """Score judged conversations with a second judge, beside the first judge's scores."""

    run_dir: str = "runs/turnrl"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The second judge: any backend the judge supports (hf, vllm, openai), with 000's prompts and parse rule
    (docs/judge-and-endpoints.md)."""
    logs: list[str] = field(default_factory=list)
    """Logs to rejudge, relative to run_dir (default: scored/trajectories.jsonl and every
    eval/<name>/conversations.jsonl there)."""
    chunk_size: int = 64
    """Conversations judged and written at a time (a killed run redoes at most one chunk, from the cache)."""
    overwrite: bool = False
    """Replace a second_judge.jsonl that another judge (model or sampling settings) wrote."""
    bootstrap_samples: int = 10_000
    """Resamples of the bootstrap intervals of the printed agreement."""
    bootstrap_seed: int = 0


def conversation_key(task_id: Any, messages: Any) -> str:
    """A fingerprint of what a judge is shown of a conversation (its task and messages)."""
    content = json.dumps({"task_id": task_id, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def judge_settings(cfg: JudgeConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in SETTINGS}


def default_logs(run_dir: Path) -> list[Path]:
    logs = [run_dir / SCORED] if (run_dir / SCORED).exists() else []
    return logs + sorted(RunDir(run_dir).eval().glob(f"*/{CONVERSATIONS}"))


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a ``second_judge.jsonl`` (a line a running or killed rejudge left unfinished is
    not one)."""
    data = path.read_bytes()
    out = []
    for lineno, raw in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path}:{lineno}: not a JSON record; rejudge with --overwrite true") from None
        if not isinstance(obj, dict) or "id" not in obj:
            raise InputError(f"{path}:{lineno}: expected an object with the conversation's 'id'")
        out.append(obj)
    return out


def _path_label(path: Path, run_dir: Path) -> str:
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def rejudge_log(log: Path, judge: Judge, tasks: dict[str, Task], cfg: RejudgeConfig) -> Path:
    """Judge the conversations of ``log`` that its second_judge.jsonl does not hold yet; return that file."""
    label = _path_label(log, Path(cfg.run_dir))
    trajectories = read_trajectories(log)
    if not trajectories:
        raise InputError(f"{log}: no conversations to rejudge")
    for t in trajectories:
        if t.task_id not in tasks:
            raise InputError(f"{log}: conversation {t.id}: task {t.task_id!r} is not in the run's tasks")
    out = second_judge_file(log)
    settings_path = out.with_suffix(".json")
    settings = judge_settings(judge.cfg)
    if cfg.overwrite:
        out.unlink(missing_ok=True)
    elif out.exists() and out.stat().st_size > 0:
        old = read_json(settings_path) if settings_path.exists() else {}
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ConfigError(f"{out} holds the scores of another second judge (settings that differ: "
                              f"{', '.join(changed)}); rerun with its settings to resume, or --overwrite true to "
                              "replace it")
    keys = {t.id: conversation_key(t.task_id, t.messages) for t in trajectories}
    writer = ResumableJsonlWriter(out).open()  # drops a line a killed run left unfinished
    stale = [r for r in read_records(out) if keys.get(str(r["id"])) != r.get("conversation")]
    if stale:
        writer.close()
        ids = {str(r["id"]) for r in stale}
        write_jsonl(out, [r for r in read_records(out) if str(r["id"]) not in ids])
        logger.info(f"rejudge {label}: {len(stale)} records were of conversations that changed or left the log since; "
                    "judging them again")
        writer = ResumableJsonlWriter(out).open()
    write_json(settings_path, settings)
    try:
        chunks = [trajectories[i: i + cfg.chunk_size] for i in range(0, len(trajectories), cfg.chunk_size)]
        todo = [c for c in chunks if any(t.id not in writer.done for t in c)]
        done_before = sum(t.id in writer.done for t in trajectories)
        for number, chunk in enumerate(todo, start=1):
            records = judge.judge(chunk, tasks, desc=f"rejudge {label} [{number}/{len(todo)}]")
            writer.write({"id": t.id, "task_id": t.task_id, "conversation": keys[t.id],
                          "backend": judge.identity["backend"], **rec} for t, rec in zip(chunk, records))
    finally:
        writer.close()
    records = read_records(out)
    failures = sum(not r.get("ok") for r in records)
    logger.info(f"rejudge {label}: {len(records)} conversations judged by {judge.backend.model} "
                f"({done_before} already were; {failures} parse failures, no score) -> {out}")
    return out


def rejudge(cfg: RejudgeConfig) -> list[Path]:
    """Rejudge every log of ``cfg`` and print each one's agreement; return the second_judge.jsonl files."""
    run_dir = Path(cfg.run_dir)
    if cfg.judge.second is not None:
        raise ConfigError("judge.second: rejudge scores with one judge, --judge itself (the first judge's scores "
                          "are already in the log)")
    if cfg.chunk_size < 1:
        raise ConfigError(f"chunk_size: {cfg.chunk_size}; expected at least 1")
    if cfg.bootstrap_samples < 0:
        raise ConfigError(f"bootstrap_samples: {cfg.bootstrap_samples}; expected 0 (no intervals) or more")
    logs = [run_dir / p for p in cfg.logs] if cfg.logs else default_logs(run_dir)
    if not logs:
        raise InputError(f"{run_dir}: no scored log ({SCORED}) and no evaluation (eval/<name>/{CONVERSATIONS}) to "
                         "rejudge")
    for log in logs:
        if not log.exists():
            raise InputError(f"{log}: file not found")
    tasks = RunDir(run_dir).tasks_by_id()
    judge = Judge(cfg.judge)  # one backend for every log, loaded on the first cache miss
    outputs = []
    for log in logs:
        outputs.append(rejudge_log(log, judge, tasks, cfg))
        judged = read_judged_log(log)
        if judged is None:
            continue
        if cfg.judge.model in judged.first_models:
            logger.warning(f"rejudge: warning: the second judge is the first judge's model ({cfg.judge.model}); "
                           "with the same settings its answers are the first judge's, from the cache")
        result = judge_agreement(f"conversations of {_path_label(log, run_dir)}", [judged], cfg.bootstrap_samples,
                                 cfg.bootstrap_seed)
        print(agreement_markdown(result))
    return outputs


# --------------------------------------------------------------------------------------------- agreement


@dataclass
class JudgedLog:
    """The two judges' 0-10 scores of one log's conversations (conversation id -> metric -> score)."""

    path: Path
    first: dict[str, dict[str, float]]
    second: dict[str, dict[str, float]]
    tasks: dict[str, str]
    """conversation id -> task id"""
    first_models: list[str]
    second_models: list[str]
    second_records: int
    """Conversations the second judge was asked about (those whose answer could not be read included)."""
    failures: int
    """...of which its answer could not be read."""
    stale: int
    """Records of conversations that changed or left the log since they were judged (not used)."""
    source: str
    """Where the second judge's scores came from: the second_judge.jsonl file, or the log's judge_second_*."""


def _scores(rewards: Any, prefix: str) -> dict[str, float]:
    rewards = rewards if isinstance(rewards, dict) else {}
    return {m: 10.0 * float(v) for m in METRICS if isinstance(v := rewards.get(f"{prefix}_{m}"), (int, float))
            and not isinstance(v, bool)}


def _model(meta: Any, prefix: str) -> str | None:
    rec = meta.get(prefix) if isinstance(meta, dict) else None
    return str(rec["model"]) if isinstance(rec, dict) and rec.get("model") else None


def read_judged_log(log: Path) -> JudgedLog | None:
    """Both judges' scores of a log's conversations; None when no second judge scored any of them."""
    log = Path(log)
    if not log.exists():
        return None
    path = second_judge_file(log)
    if not path.exists() and f'"{SECOND}'.encode() not in log.read_bytes():
        return None  # no second judge anywhere: not worth parsing the log
    first, inline, tasks, keys = {}, {}, {}, {}
    first_models, inline_models = [], []
    inline_asked = inline_failures = 0
    for _, obj in iter_jsonl(log):
        if not isinstance(obj, dict) or "id" not in obj:
            continue
        cid = str(obj["id"])
        tasks[cid] = str(obj.get("task_id"))
        keys[cid] = conversation_key(obj.get("task_id"), obj.get("messages"))
        first[cid] = _scores(obj.get("rewards"), PRIMARY)
        inline[cid] = _scores(obj.get("rewards"), SECOND)
        record = obj.get("meta", {}).get(SECOND) if isinstance(obj.get("meta"), dict) else None
        if isinstance(record, dict) or inline[cid]:
            inline_asked += 1
            inline_failures += isinstance(record, dict) and not record.get("ok")
        for models, prefix in ((first_models, PRIMARY), (inline_models, SECOND)):
            model = _model(obj.get("meta"), prefix)
            if model and model not in models:
                models.append(model)
    if path.exists():
        second, models, asked, failures, stale = {}, [], 0, 0, 0
        for rec in read_records(path):
            cid = str(rec["id"])
            if keys.get(cid) != rec.get("conversation"):
                stale += 1
                continue
            asked += 1
            failures += not rec.get("ok")
            scores = rec.get("scores") if rec.get("ok") and isinstance(rec.get("scores"), dict) else {}
            second[cid] = {m: float(scores[m]) for m in METRICS if isinstance(scores.get(m), (int, float))}
            if rec.get("model") and rec["model"] not in models:
                models.append(str(rec["model"]))
        return JudgedLog(log, first, second, tasks, first_models, models, asked, failures, stale, path.name)
    if not any(inline.values()):
        return None
    return JudgedLog(log, first, inline, tasks, first_models, inline_models, inline_asked, inline_failures, 0,
                     f"{SECOND}_* components")


def second_judge_per_question(log: Path) -> dict[str, dict[str, float]] | None:
    """task id -> ``judge_second_<metric>`` (score / 10, averaged over the task's conversations, as an
    evaluation's per-question rows hold the first judge's), from the log's second_judge.jsonl; None without one."""
    if not second_judge_file(log).exists():
        return None
    judged = read_judged_log(log)
    if judged is None:
        return None
    sums: dict[str, dict[str, list[float]]] = {}
    for cid, scores in judged.second.items():
        for m, v in scores.items():
            sums.setdefault(judged.tasks[cid], {}).setdefault(f"{SECOND}_{m}", []).append(v / 10.0)
    return {task: {k: sum(v) / len(v) for k, v in values.items()} for task, values in sums.items()}


@dataclass
class JudgeAgreement:
    """How two judges agree on a set of conversations, per rubric item."""

    label: str
    logs: list[str]
    first_models: list[str]
    second_models: list[str]
    conversations: int
    second_records: int
    failures: int
    stale: int
    metrics: dict[str, RaterAgreement]
    bootstrap: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "metrics"},
                "metrics": {m: a.to_dict() for m, a in self.metrics.items()}}


def judge_agreement(label: str, logs: list[JudgedLog], samples: int = 10_000, seed: int = 0) -> JudgeAgreement:
    """Pool the logs' conversations and measure, per rubric item, the agreement of the two judges on those both
    scored (bootstrap over conversations: ``samples`` resamples, ``seed``)."""
    metrics = {}
    for m in METRICS:
        a, b = [], []
        for log in logs:
            for cid, second in log.second.items():
                if m in second and m in log.first.get(cid, {}):
                    a.append(log.first[cid][m])
                    b.append(second[m])
        metrics[m] = rater_agreement(a, b, n_boot=samples, seed=seed)
    unique = lambda lists: list(dict.fromkeys(x for models in lists for x in models))  # noqa: E731
    return JudgeAgreement(label, [str(log.path) for log in logs], unique(log.first_models for log in logs),
                          unique(log.second_models for log in logs), sum(len(log.first) for log in logs),
                          sum(log.second_records for log in logs), sum(log.failures for log in logs),
                          sum(log.stale for log in logs), metrics, {"samples": samples, "seed": seed, "level": 0.95})


AGREEMENT_HEADER = ["Rubric item", "Spearman ρ [95% CI]", "Kendall τ-b [95% CI]", "Quadratic κ [95% CI]",
                    "Mean abs. diff. (0-10)", "Mean diff. (2nd − 1st)", "n"]


def agreement_rows(result: JudgeAgreement) -> list[list[str]]:
    rows = []
    for m, a in result.metrics.items():
        diff = "n/a" if not a.n else f"{a.mean_abs_diff:.2f}"
        signed = "n/a" if not a.n else f"{a.mean_diff:+.2f}"
        rows.append([LABELS[m], a.spearman.fmt(), a.kendall.fmt(), a.kappa.fmt(), diff, signed, str(a.n)])
    return rows


def agreement_title(result: JudgeAgreement) -> str:
    first = ", ".join(result.first_models) or "the first judge"
    second = ", ".join(result.second_models) or "the second judge"
    return f"Judge agreement on the {result.label}: {first} vs {second}"


def agreement_note(result: JudgeAgreement) -> str:
    b = result.bootstrap
    parts = [f"Per rubric item, over the conversations both judges scored (n), of {result.conversations} in "
             f"the logs; the second judge could not be read on {result.failures} of the "
             f"{result.second_records} it was asked about."]
    if result.stale:
        parts.append(f"{result.stale} of its records are of conversations that changed since and are left out "
                     "(rejudge again).")
    intervals = (f"95% percentile bootstrap intervals over conversations ({b['samples']:,} resamples, seed "
                 f"{b['seed']})" if b["samples"] else "no intervals (bootstrap_samples 0)")
    parts.append("Spearman's rho and Kendall's tau-b of the two judges' 0-10 scores; Cohen's kappa with quadratic "
                 f"weights on the scores' own values (1: identical scores, 0: no better than chance); {intervals}; "
                 "n/a where a judge gave every conversation the same score.")
    return " ".join(parts)


def agreement_markdown(result: JudgeAgreement, level: str = "##") -> str:
    lines = [f"{level} {agreement_title(result)}", "", "| " + " | ".join(AGREEMENT_HEADER) + " |",
             "|" + "---|" * len(AGREEMENT_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in agreement_rows(result)]
    return "\n".join(lines + ["", agreement_note(result)]) + "\n"
