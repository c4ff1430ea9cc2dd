"""The LLM judge of 000 App. E.3: six rubric scores (0-10) for a whole conversation; reward = Overall / 10.

**Prompts.** 000's system and user prompts, verbatim (:data:`SYSTEM_PROMPT`, :func:`user_prompt`). The judge sees
the question, the options, the gold answer (its letter) and the transcript: every message after the system
prompt, labelled "Teacher" (user messages: 000's name for the environment's side) or "Assistant". 000 prints the
required format with literal ``\\n`` escapes; they are sent as line breaks.

**Parse rule** (:func:`parse_judgement`). For each metric the first "<label>: <score>" is read, where the label
is 000's (any letter case; the shortened "Reasoning", "Pedagogical", "Confidence" and "Comprehensive" are
accepted too), markdown around it is ignored ("**Accuracy:** 7", "### Overall: 8"), a table cell separator
works as the colon ("| Accuracy | 7/10 |"), and the score is a number, optionally in brackets and optionally
"/10" or "out of 10" ("7", "7.5", "[7]", "7/10"). A score outside 0-10 or over another denominator ("7/5") makes
the answer a parse failure. Without an Overall line, Overall is the mean of the five others when all five are
there (000's examples show Overall as that mean or close to it); otherwise the answer is a parse failure. A
missing individual metric with an Overall present is simply absent.

**Failures.** An unparseable answer is asked again with a fresh sample (temperature ``retry_temperature``, another
seed), up to ``retries`` times; if all fail, the trajectory gets no judge components (its reward, if it uses
them, is left unset rather than scored 0), and the raw answers are kept in ``meta["judge"]["failed"]``. An endpoint
that answers a malformed body (not JSON, or no completion in it) is retried by the backend like a 5xx, and then
stops the run with an error naming the endpoint and the body (:mod:`turnrl.generation.openai_backend`).

**Cache.** Every call whose answer parses is stored under ``cache_dir`` (default ``$TURNRL_CACHE/judge``) in a
file named by the SHA-256 of its full content: backend, model (and the weights' fingerprint for local models),
messages and sampling settings. A rerun with the same content makes no calls for those; changing any of them makes
new ones. Answers that did not parse are not reused: a rerun asks them again (an entry of one already in the cache,
written by an older version, counts as a miss and is replaced once an answer parses).

**Second judge.** ``second`` scores the same conversations with another model (000 Table 19: Claude 4 Opus next to
GPT-4o), as ``judge_second_*`` components; :func:`agreement` gives Pearson and Spearman correlations, Kendall's
tau-b, quadratic-weighted kappa, the mean absolute difference and n per metric. Conversations already judged are
rescored by a second judge afterwards, beside the first's scores, with ``turnrl rejudge``
(:mod:`turnrl.stages.rejudge`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from turnrl.errors import ConfigError
from turnrl.generation import BackendConfig, GenRequest, GenResult, Sampling, derive_seed, engine, make_generator
from turnrl.records import Task, Trajectory, atomic_write_text, shown_task

METRICS = ("accuracy", "reasoning", "comprehensiveness", "pedagogical", "confidence", "overall")
"""Component suffixes, in 000's order: ``judge_<metric>`` = the score / 10."""
RUBRIC = METRICS[:5]
LABELS = {"accuracy": "Accuracy", "reasoning": "Reasoning ability", "comprehensiveness": "Comprehensiveness",
          "pedagogical": "Pedagogical value", "confidence": "Confidence calibration", "overall": "Overall"}
PRIMARY, SECOND = "judge", "judge_second"
CHUNK = 128
"""Judge calls sent to the backend at a time (each chunk is cached when it returns)."""
COMPONENTS = tuple(f"{PRIMARY}_{m}" for m in METRICS) + tuple(f"{SECOND}_{m}" for m in METRICS)

SYSTEM_PROMPT = (
    "You are an expert evaluator of educational conversations about multiple-choice questions. Your job is to rate "
    "the quality and progress of a conversation on a scale from 0 to 10 for several metrics. For each metric, you "
    "MUST provide a numerical score (0-10) and a brief justification of 1-2 sentences.\n\n"
    "The metrics to evaluate are:\n"
    "1. Accuracy - Is the assistant moving toward the correct answer?\n"
    "2. Reasoning ability - Is the reasoning logical, clear, and precise?\n"
    "3. Comprehensiveness - Are key concepts being properly explained?\n"
    "4. Pedagogical value - Is this explanation helping someone learn?\n"
    "5. Confidence calibration - Is the assistant appropriately confident in their analysis?\n\n"
    "After rating each metric, provide an overall score (0-10) that represents your holistic assessment of the "
    "conversation, followed by a brief overall justification.\n\n"
    "IMPORTANT: You MUST format your response EXACTLY as follows with these exact labels and line breaks:\n\n"
    "Accuracy: [score]\n[justification]\n\n"
    "Reasoning ability: [score]\n[justification]\n\n"
    "Comprehensiveness: [score]\n[justification]\n\n"
    "Pedagogical value: [score]\n[justification]\n\n"
    "Confidence calibration: [score]\n[justification]\n\n"
    "Overall: [score]\n[justification]"
)

ROLE_NAMES = {"user": "Teacher", "assistant": "Assistant", "tool": "Tool"}


def transcript(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in messages if m["role"] != "system")


def user_prompt(task: Task, messages: list[dict[str, str]]) -> str:
    lines = ["Please evaluate this educational conversation about a multiple-choice question up to this point.", "",
             f"Original Question: {task.question}", ""]
    if task.choices:
        lines += ["Choices: " + ", ".join(f"{letter}. {text}" for letter, text in zip(task.letters, task.choices)), ""]
    lines += [f"Correct Answer: {task.answer}", "",
              "— CONVERSATION TRANSCRIPT SO FAR —", transcript(messages), "— END CONVERSATION TRANSCRIPT —", "",
              "Please provide your evaluation following the exact format specified in your system prompt."]
    return "\n".join(lines)


def judge_messages(task: Task, trajectory: Trajectory) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(task, trajectory.messages)}]


# ----------------------------------------------------------------------------------------------- parsing

_LABEL_PATTERNS = {
    "accuracy": r"accuracy",
    "reasoning": r"reasoning(?:\s+ability)?",
    "comprehensiveness": r"comprehensive(?:ness)?",
    "pedagogical": r"pedagogical(?:\s+value)?",
    "confidence": r"confidence(?:\s+calibration)?",
    "overall": r"overall(?:\s+score)?",
}
_SCORE = (
    r"(?<![\w])(?P<label>{label})"
    r"[ \t*_]*(?:\([^)\n]*\))?"                 # an optional "(0-10)"
    r"[ \t*_]*[:|=][ \t*_|]*"                    # the colon (or a table's cell separator), markdown around it
    r"\[?(?P<value>[-+]?\d+(?:\.\d+)?)\]?"
    r"(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+(?:\.\d+)?))?"
)
_PATTERNS = {m: re.compile(_SCORE.format(label=p), re.IGNORECASE) for m, p in _LABEL_PATTERNS.items()}


@dataclass
class Judgement:
    ok: bool
    scores: dict[str, float] = field(default_factory=dict)
    """0-10 per metric found; ``overall`` is always there when ``ok``."""
    overall_fallback: bool = False
    """Overall was missing and is the mean of the five other scores."""
    error: str = ""


def parse_judgement(text: str) -> Judgement:
    """Read the six scores of a judge's answer by the rule in this module's docstring."""
    scores: dict[str, float] = {}
    for metric, pattern in _PATTERNS.items():
        m = pattern.search(text)
        if m is None:
            continue
        value = float(m.group("value"))
        if m.group("scale") is not None and float(m.group("scale")) != 10:
            return Judgement(False, error=f"{LABELS[metric]} is scored out of {m.group('scale')}, not 10")
        if not 0.0 <= value <= 10.0:
            return Judgement(False, error=f"{LABELS[metric]} score {m.group('value')} is outside 0-10")
        scores[metric] = value
    if "overall" in scores:
        return Judgement(True, scores)
    missing = [LABELS[m] for m in RUBRIC if m not in scores]
    if missing:
        return Judgement(False, scores, error=f"no Overall score, and no {', '.join(missing)} to average instead")
    scores["overall"] = sum(scores[m] for m in RUBRIC) / len(RUBRIC)
    return Judgement(True, scores, overall_fallback=True)


# ----------------------------------------------------------------------------------------------- config, cache


@dataclass
class JudgeConfig(BackendConfig):
    """The LLM judge (000 App. E.3): a backend (by default GPT-4o, as in 000) and how it is sampled and cached."""

    backend: str = "openai"
    """hf, vllm or openai (any OpenAI-compatible endpoint: see docs/judge-and-endpoints.md)."""
    model: str = "gpt-4o"
    enabled: bool = False
    """Judge every conversation even when no judge_* component is in the reward (to report the R-metrics)."""
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    retries: int = 2
    """Fresh samples asked for after an unparseable answer, before it is recorded as a failure."""
    retry_temperature: float = 0.7
    """Temperature of those fresh samples (at least the judge's own temperature)."""
    cache_dir: str = ""
    """Where judge calls are cached (default: $TURNRL_CACHE/judge)."""
    second: Optional[BackendConfig] = None
    """A second judge for agreement statistics (000 Table 19), scored as judge_second_* with the same settings."""


def default_cache_dir() -> Path:
    from turnrl.models import cache_dir

    return cache_dir() / "judge"


class CallCache:
    """Generation results stored on disk under the SHA-256 of everything that determines them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def key(content: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> GenResult | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return GenResult(**json.loads(path.read_text(encoding="utf-8"))["result"])
        except (ValueError, KeyError, TypeError):
            return None  # a damaged entry is a miss: the call is made again and the entry rewritten

    def put(self, key: str, content: dict[str, Any], result: GenResult) -> None:
        atomic_write_text(self.path(key), json.dumps({"call": content, "result": asdict(result)}, ensure_ascii=False))


class Judge:
    """Scores conversations with one judge model; calls go through the on-disk cache, misses in one batch."""

    def __init__(self, cfg: JudgeConfig, backend: BackendConfig | None = None, generator: Any = None):
        self.cfg = cfg
        self.backend = backend or BackendConfig(**{f: getattr(cfg, f) for f in BackendConfig.__dataclass_fields__})
        if cfg.retries < 0:
            raise ConfigError(f"reward.judge.retries: {cfg.retries}; expected 0 or more")
        self.cache = CallCache(cfg.cache_dir or default_cache_dir())
        self._generator = generator
        self.calls = 0
        """Requests sent to the backend (cache misses) by this judge."""

    @functools.cached_property
    def identity(self) -> dict[str, str]:
        """What the cache keys a call by: the engine that answers, the model and its weights' revision (fixed for
        the judge's life, so worked out once)."""
        ident = {"backend": engine(self.backend), "model": self.backend.model}
        if ident["backend"] in ("hf", "llamacpp", "vllm"):
            from turnrl.models import resolve

            ident["revision"] = resolve(self.backend.model).revision
        return ident

    def sampling(self, attempt: int) -> Sampling:
        if attempt == 0:
            return Sampling(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                            max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
        return Sampling(temperature=max(self.cfg.temperature, self.cfg.retry_temperature), top_p=self.cfg.top_p,
                        max_new_tokens=self.cfg.max_new_tokens, seed=derive_seed(self.cfg.seed, "retry", attempt))

    def generate(self, requests: list[GenRequest], desc: str | None = None,
                 reuse: Callable[[GenResult], bool] | None = None) -> list[GenResult]:
        """Results in request order, from the cache or the backend. With ``reuse``, only results it accepts are
        taken from the cache or written to it; the others are asked for (again) on every call."""
        identity = self.identity
        contents = [{**identity, "messages": r.messages, "sampling": asdict(r.sampling)} for r in requests]
        keys = [self.cache.key(c) for c in contents]
        found = {k: self.cache.get(k) for k in dict.fromkeys(keys)}
        if reuse is not None:
            found = {k: res if res is not None and reuse(res) else None for k, res in found.items()}
        misses, asked = [], set()
        for i, k in enumerate(keys):
            if found[k] is None and k not in asked:  # identical calls within a batch are made once
                asked.add(k)
                misses.append(i)
        if misses and self._generator is None:
            self._generator = make_generator(self.backend)
        # In chunks, each cached as soon as it is back: an interrupted or failed run loses at most one chunk.
        for start in range(0, len(misses), CHUNK):
            chunk = misses[start: start + CHUNK]
            label = f"{desc} [{start + len(chunk)}/{len(misses)}]" if desc else None
            for i, res in zip(chunk, self._generator.generate([requests[i] for i in chunk], desc=label)):
                if reuse is None or reuse(res):
                    self.cache.put(keys[i], contents[i], res)
                found[keys[i]] = res
            self.calls += len(chunk)
        return [found[k] for k in keys]  # type: ignore[misc]

    def judge(self, trajectories: list[Trajectory], tasks: dict[str, Task],
              desc: str | None = None) -> list[dict[str, Any]]:
        """One record per trajectory: ``ok``, ``scores`` (0-10), ``overall_fallback``, ``attempts``, the judge's
        ``text`` and, for answers that could not be parsed, ``failed`` (their raw texts) and ``error``."""
        prompts = [judge_messages(shown_task(tasks[t.task_id], t), t) for t in trajectories]
        records: list[dict[str, Any]] = [{"model": self.backend.model, "ok": False, "attempts": 0, "failed": []}
                                         for _ in trajectories]
        todo = list(range(len(trajectories)))
        for attempt in range(self.cfg.retries + 1):
            if not todo:
                break
            sampling = self.sampling(attempt)
            results = self.generate([GenRequest(prompts[i], sampling) for i in todo],
                                    desc=f"{desc} (retry {attempt})" if desc and attempt else desc,
                                    reuse=lambda res: parse_judgement(res.text).ok)
            still = []
            for i, res in zip(todo, results):
                rec, parsed = records[i], parse_judgement(res.text)
                rec["attempts"] = attempt + 1
                if parsed.ok:
                    rec.update(ok=True, scores=parsed.scores, overall_fallback=parsed.overall_fallback, text=res.text)
                else:
                    rec["failed"].append(res.text)
                    rec["error"] = parsed.error
                    still.append(i)
            todo = still
        return records


def score_with_judges(trajectories: list[Trajectory], tasks: dict[str, Task], cfg: JudgeConfig,
                      desc: str | None = None) -> dict[str, Any]:
    """Judge every trajectory (and with the second judge, if configured): fill ``judge_*`` (and
    ``judge_second_*``) components with score / 10 and ``meta["judge"]`` (``meta["judge_second"]``) with the
    records. Returns :func:`summary`."""
    judges = [(PRIMARY, Judge(cfg))] + ([(SECOND, Judge(cfg, backend=cfg.second))] if cfg.second else [])
    for prefix, judge in judges:
        records = judge.judge(trajectories, tasks, desc=f"{desc} {prefix}" if desc else None)
        for traj, rec in zip(trajectories, records):
            for m in METRICS:
                traj.rewards.pop(f"{prefix}_{m}", None)
            traj.rewards.update({f"{prefix}_{m}": v / 10.0 for m, v in rec.get("scores", {}).items()})
            traj.meta[prefix] = rec
    return summary(trajectories)


def summary(trajectories: list[Trajectory]) -> dict[str, Any]:
    """Failure counts per judge and, with two judges, their agreement."""
    out: dict[str, Any] = {}
    for prefix in (PRIMARY, SECOND):
        recs = [t.meta[prefix] for t in trajectories if isinstance(t.meta.get(prefix), dict)]
        if recs:
            out[prefix] = {"model": recs[0].get("model"), "n": len(recs),
                           "failures": sum(not r.get("ok") for r in recs),
                           "retried": sum(r.get("attempts", 1) > 1 for r in recs),
                           "overall_fallback": sum(bool(r.get("overall_fallback")) for r in recs)}
    if SECOND in out:
        out["agreement"] = agreement(trajectories)
    return out


def agreement(trajectories: list[Trajectory]) -> dict[str, dict[str, float]]:
    """Per metric, over conversations both judges scored: Pearson and Spearman correlation, Kendall's tau-b and
    quadratic-weighted kappa of the two judges' 0-10 scores (:func:`turnrl.stats.rater_agreement`), their mean
    absolute difference, and n. A correlation is NaN when either judge's scores are all equal. (``turnrl
    compare`` adds bootstrap intervals: :mod:`turnrl.stages.rejudge`.)"""
    from scipy import stats

    from turnrl.stats import rater_agreement

    out = {}
    for m in METRICS:
        pairs = [(10 * t.rewards[f"{PRIMARY}_{m}"], 10 * t.rewards[f"{SECOND}_{m}"]) for t in trajectories
                 if f"{PRIMARY}_{m}" in t.rewards and f"{SECOND}_{m}" in t.rewards]
        a, b = [p[0] for p in pairs], [p[1] for p in pairs]
        varied = len(pairs) >= 2 and len(set(a)) > 1 and len(set(b)) > 1
        rated = rater_agreement(a, b, n_boot=0)
        out[m] = {
            "pearson": float(stats.pearsonr(a, b).statistic) if varied else math.nan,
            "spearman": float(stats.spearmanr(a, b).statistic) if varied else math.nan,
            "kendall": rated.kendall.value if varied else math.nan,
            "kappa": rated.kappa.value,
            "mean_abs_diff": float(sum(abs(x - y) for x, y in pairs) / len(pairs)) if pairs else math.nan,
            "n": len(pairs),
        }
    return out


def summary_markdown(info: dict[str, Any]) -> str:
    lines = []
    for prefix in (PRIMARY, SECOND):
        if prefix in info:
            s = info[prefix]
            lines.append(f"- {'second judge' if prefix == SECOND else 'judge'} {s['model']}: {s['n']} conversations, "
                         f"{s['failures']} parse failures (no score), {s['retried']} needed a retry, "
                         f"{s['overall_fallback']} Overall from the mean of the five")
    if "agreement" in info:
        lines += ["", "| metric | Pearson | Spearman | Kendall tau-b | quadratic kappa | mean abs. diff. (0-10) | n |",
                  "|---|---|---|---|---|---|---|"]
        for m, a in info["agreement"].items():
            lines.append(f"| {LABELS[m]} | {a['pearson']:.3f} | {a['spearman']:.3f} | {a.get('kendall', math.nan):.3f} "
                         f"| {a.get('kappa', math.nan):.3f} | {a['mean_abs_diff']:.2f} | {a['n']} |")
    return "\n".join(lines) + "\n"
