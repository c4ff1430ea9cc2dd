"""The LLM judge: 000 App. E.3's prompts, the parse rule on real-looking answers, retries, failures, the cache, the
reward components, and the agreement statistics of two judges."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from turnrl import judge as judge_mod
from turnrl.errors import ConfigError
from turnrl.generation import GenResult
from turnrl.judge import Judge, JudgeConfig, agreement, parse_judgement, score_with_judges, user_prompt
from turnrl.records import Task, Trajectory
from turnrl.rewards.scoring import RewardConfig, Scorer

EXACT = """Accuracy: 8
The assistant identified the correct answer (C) early and kept to it.

Reasoning ability: 7
The reasoning is logical, though the second turn repeats the first.

Comprehensiveness: 6
Xylem is mentioned, but the other options are dismissed quickly.

Pedagogical value: 7
A learner would understand why tubes carry water.

Confidence calibration: 6
Confident, appropriately so, but it never states uncertainty about B.

Overall: 7
A solid, correct conversation with room for more depth."""

AROUND = """Here is my evaluation of the conversation.

Accuracy: 9
Correct answer, stated clearly.

Reasoning ability: 8
Sound.

Comprehensiveness: 8
Covers all options.

Pedagogical value: 8
Helpful.

Confidence calibration: 9
Well calibrated.

Overall: 8.5
Very good overall.

I hope this evaluation is useful. Let me know if you need anything else."""

BOLD = """**Accuracy:** 4
Wrong answer (A); the passage points to B.

**Reasoning ability:** 5
It notes that the passage does not mention trade routes, then picks A anyway.

**Comprehensiveness: 4**
Misses the link from food supply to population.

**Pedagogical value**: 5
Limited.

**Confidence calibration:** 3
Too confident.

**Overall: 4.2**
The assistant misread the passage."""

SLASH_TEN = """Accuracy: 7/10
Mostly right.
Reasoning ability: 6/10
Some gaps.
Comprehensiveness: 5 / 10
Brief.
Pedagogical value: 6 out of 10
Some value.
Confidence calibration: 7/10
Reasonable.
Overall: 6.6/10
Fair."""

TABLE_001 = """### Evaluation Scores

| Criteria | Score |
|---|---|
| Accuracy | 4/10 |
| Reasoning Ability | 5/10 |
| Comprehensiveness | 4/10 |
| Pedagogical Value | 5/10 |
| Confidence Calibration | 3/10 |

### Overall Assessment by GPT4o

## Final Score: 4.2/10

#### Accuracy: 4/10
Wrong answer (A)."""

NO_OVERALL = """Accuracy: 8
Right.

Reasoning ability: 7
Clear.

Comprehensiveness: 6
Partial.

Pedagogical value: 5
Some.

Confidence calibration: 7
Fine."""

MISSING_METRIC = """Accuracy: 8
Right.

Reasoning ability: 7
Clear.

Pedagogical value: 6
Some.

Confidence calibration: 7
Fine.

Overall: 7
Good."""

VARIANTS = """1. Accuracy (0-10): 10
The answer is correct.
2. Reasoning Ability: 9
Logical.
3. Comprehensive: 9
Thorough.
4. Pedagogical: 10
Very clear.
5. Confidence: [9]
Appropriate.
### Overall: 9.5
Excellent."""


@pytest.mark.parametrize("text, expected, fallback", [
    (EXACT, {"accuracy": 8, "reasoning": 7, "comprehensiveness": 6, "pedagogical": 7, "confidence": 6,
             "overall": 7}, False),
    (AROUND, {"accuracy": 9, "reasoning": 8, "comprehensiveness": 8, "pedagogical": 8, "confidence": 9,
              "overall": 8.5}, False),
    (BOLD, {"accuracy": 4, "reasoning": 5, "comprehensiveness": 4, "pedagogical": 5, "confidence": 3,
            "overall": 4.2}, False),
    (SLASH_TEN, {"accuracy": 7, "reasoning": 6, "comprehensiveness": 5, "pedagogical": 6, "confidence": 7,
                 "overall": 6.6}, False),
    # No "Overall:" line ("Overall Assessment" / "Final Score" are not it): the mean of the five, (4+5+4+5+3)/5.
    (TABLE_001, {"accuracy": 4, "reasoning": 5, "comprehensiveness": 4, "pedagogical": 5, "confidence": 3,
                 "overall": 4.2}, True),
    (NO_OVERALL, {"accuracy": 8, "reasoning": 7, "comprehensiveness": 6, "pedagogical": 5, "confidence": 7,
                  "overall": 6.6}, True),
    (MISSING_METRIC, {"accuracy": 8, "reasoning": 7, "pedagogical": 6, "confidence": 7, "overall": 7}, False),
    (VARIANTS, {"accuracy": 10, "reasoning": 9, "comprehensiveness": 9, "pedagogical": 10, "confidence": 9,
                "overall": 9.5}, False),
])
def test_parse_reads_the_scores(text, expected, fallback):
    j = parse_judgement(text)
    assert j.ok, j.error
    assert j.scores == pytest.approx(expected)
    assert set(j.scores) == set(expected)
    assert j.overall_fallback is fallback


@pytest.mark.parametrize("text, reason", [
    ("I cannot evaluate this conversation without more context.", "no Overall"),
    ("Accuracy: [score]\n[justification]\n\nOverall: [score]\n[justification]", "no Overall"),
    (MISSING_METRIC.replace("Overall: 7", "In sum: 7"), "Comprehensiveness"),
    (EXACT.replace("Accuracy: 8", "Accuracy: 12"), "outside 0-10"),
    (EXACT.replace("Overall: 7", "Overall: 85"), "outside 0-10"),
    (EXACT.replace("Overall: 7", "Overall: -2"), "outside 0-10"),
    (EXACT.replace("Accuracy: 8", "Accuracy: 4/5"), "out of 5"),
    ("", "no Overall"),
])
def test_parse_failures(text, reason):
    j = parse_judgement(text)
    assert not j.ok
    assert reason in j.error


def test_prompts_are_000s():
    system = judge_mod.SYSTEM_PROMPT
    assert system.startswith("You are an expert evaluator of educational conversations about multiple-choice "
                             "questions. Your job is to rate the quality and progress of a conversation on a scale "
                             "from 0 to 10 for several metrics.")
    for line in ["1. Accuracy - Is the assistant moving toward the correct answer?",
                 "2. Reasoning ability - Is the reasoning logical, clear, and precise?",
                 "3. Comprehensiveness - Are key concepts being properly explained?",
                 "4. Pedagogical value - Is this explanation helping someone learn?",
                 "5. Confidence calibration - Is the assistant appropriately confident in their analysis?"]:
        assert f"\n{line}\n" in system
    assert system.endswith("IMPORTANT: You MUST format your response EXACTLY as follows with these exact labels and "
                           "line breaks:\n\nAccuracy: [score]\n[justification]\n\nReasoning ability: [score]\n"
                           "[justification]\n\nComprehensiveness: [score]\n[justification]\n\nPedagogical value: "
                           "[score]\n[justification]\n\nConfidence calibration: [score]\n[justification]\n\n"
                           "Overall: [score]\n[justification]")
    task = Task(id="t1", source="arc-easy", question="Which of the following best explains how stems transport "
                "water to other parts of the plant?", answer="C",
                choices=["through a chemical called chlorophyll", "by using photosynthesis",
                         "through a system of tubes", "by converting water to food"])
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Question: ..."},
                {"role": "assistant", "content": "The answer is C."}]
    assert user_prompt(task, messages) == (
        "Please evaluate this educational conversation about a multiple-choice question up to this point.\n\n"
        "Original Question: Which of the following best explains how stems transport water to other parts of the "
        "plant?\n\n"
        "Choices: A. through a chemical called chlorophyll, B. by using photosynthesis, C. through a system of tubes, "
        "D. by converting water to food\n\n"
        "Correct Answer: C\n\n"
        "— CONVERSATION TRANSCRIPT SO FAR —\n"
        "Teacher: Question: ...\n\n"
        "Assistant: The answer is C.\n"
        "— END CONVERSATION TRANSCRIPT —\n\n"
        "Please provide your evaluation following the exact format specified in your system prompt.")


# ------------------------------------------------------------------------------------- the judge with a script

TASKS = {f"q{i}": Task(id=f"q{i}", source="sciq", question=f"Question {i}?", answer="B",
                       choices=["one", "two", "three", "four"]) for i in range(3)}


def _trajectories() -> list[Trajectory]:
    return [Trajectory(id=f"q{i}#0", task_id=f"q{i}", group_id=f"q{i}",
                       messages=[{"role": "user", "content": f"Question {i}?"},
                                 {"role": "assistant", "content": f"The answer is B, says conversation {i}."}])
            for i in range(3)]


class ScriptedJudge:
    """A judge backend that answers from a script keyed by the conversation, and records every request."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.requests = []

    def generate(self, requests, desc=None):
        self.requests += requests
        return [GenResult(text=self.script(r), tokens=5, finish="stop") for r in requests]


def _script(request) -> str:
    prompt = request.messages[-1]["content"]
    if "conversation 0" in prompt:
        return EXACT
    if "conversation 1" in prompt:  # garbage when greedy; parseable on a fresh sample
        return "Great conversation!" if request.sampling.temperature == 0 else NO_OVERALL
    return "I refuse to grade this."  # always garbage


@pytest.fixture()
def scripted(monkeypatch):
    backends = {}

    def make(cfg):
        backends[cfg.model] = ScriptedJudge(_script)
        return backends[cfg.model]

    monkeypatch.setattr(judge_mod, "make_generator", make)
    return backends


def test_retry_failure_and_cache(tmp_path, scripted):
    cfg = JudgeConfig(backend="openai", model="judge-a", cache_dir=str(tmp_path), retries=2)
    trajectories = _trajectories()
    info = score_with_judges(trajectories, TASKS, cfg)
    first = scripted["judge-a"]
    # 3 first attempts, then 2 fresh samples for each of the 2 unparseable answers... conversation 1 succeeds on
    # its first retry, conversation 2 never: 3 + 2 (retry 1) + 1 (retry 2) = 6 calls.
    assert len(first.requests) == 6
    assert [r.sampling.temperature for r in first.requests] == [0.0, 0.0, 0.0, 0.7, 0.7, 0.7]
    retry_seeds = [r.sampling.seed for r in first.requests[3:]]
    assert retry_seeds[0] == retry_seeds[1] != retry_seeds[2]  # one fresh seed per retry round
    t0, t1, t2 = trajectories
    assert t0.rewards["judge_overall"] == pytest.approx(0.7) and t0.rewards["judge_accuracy"] == pytest.approx(0.8)
    assert t0.meta["judge"]["attempts"] == 1 and t0.meta["judge"]["text"] == EXACT
    assert t1.rewards["judge_overall"] == pytest.approx(0.66)  # fallback: (8+7+6+5+7)/5 = 6.6
    assert t1.meta["judge"]["overall_fallback"] and t1.meta["judge"]["failed"] == ["Great conversation!"]
    assert not any(k.startswith("judge_") for k in t2.rewards)  # a failure is missing, not 0
    assert t2.meta["judge"]["ok"] is False and t2.meta["judge"]["failed"] == ["I refuse to grade this."] * 3
    assert info["judge"] == {"model": "judge-a", "n": 3, "failures": 1, "retried": 2, "overall_fallback": 1}

    # A rerun with the same content takes every answer that parsed from the cache and asks again only those that
    # did not: conversation 1's greedy answer, and conversation 2's three.
    scripted.clear()
    again = _trajectories()
    score_with_judges(again, TASKS, cfg)
    rerun = scripted["judge-a"].requests
    assert len(rerun) == 4 and not any("conversation 0" in r.messages[-1]["content"] for r in rerun)
    assert [t.rewards for t in again] == [t.rewards for t in trajectories]
    # A conversation whose answer parsed is all from the cache: the backend is never even created.
    scripted.clear()
    score_with_judges(_trajectories()[:1], TASKS, cfg)
    assert "judge-a" not in scripted
    # Another judge model, or other sampling settings, are other content: new calls.
    score_with_judges(_trajectories(), TASKS, JudgeConfig(backend="openai", model="judge-b", cache_dir=str(tmp_path)))
    assert len(scripted["judge-b"].requests) == 6
    score_with_judges(_trajectories(), TASKS, JudgeConfig(backend="openai", model="judge-a", cache_dir=str(tmp_path),
                                                          max_new_tokens=300, retries=0))
    assert len(scripted["judge-a"].requests) == 3


def test_answers_that_did_not_parse_are_asked_again_on_the_next_run(tmp_path, monkeypatch):
    """An unparseable answer is not reused from the cache -- neither one this version kept out of it, nor one an
    older version wrote there: the next run asks again, and a judge that now answers properly scores it."""
    cfg = JudgeConfig(backend="openai", model="j", cache_dir=str(tmp_path), retries=0)
    garbage = ScriptedJudge(lambda r: "Sorry, the upstream model is overloaded.")
    monkeypatch.setattr(judge_mod, "make_generator", lambda c: garbage)
    first = _trajectories()
    score_with_judges(first, TASKS, cfg)
    assert len(garbage.requests) == 3 and not any(t.meta["judge"]["ok"] for t in first)

    # What an older version left behind: the unparseable answer of conversation 0 stored under its key.
    judge = Judge(cfg, generator=garbage)
    request = garbage.requests[0]
    content = {**judge.identity, "messages": request.messages, "sampling": dataclasses.asdict(request.sampling)}
    judge.cache.put(judge.cache.key(content), content, GenResult(text="not a judgement", tokens=3, finish="stop"))

    fixed = ScriptedJudge(lambda r: EXACT)
    monkeypatch.setattr(judge_mod, "make_generator", lambda c: fixed)
    second = _trajectories()
    score_with_judges(second, TASKS, cfg)
    assert len(fixed.requests) == 3
    assert all(t.meta["judge"]["ok"] and t.rewards["judge_overall"] == pytest.approx(0.7) for t in second)
    # Now they parsed, they are cached: a third run asks nothing.
    score_with_judges(_trajectories(), TASKS, cfg)
    assert len(fixed.requests) == 3


def test_identical_calls_in_a_batch_are_made_once(tmp_path, scripted):
    original = _trajectories()[0]
    duplicate = copy.deepcopy(original)
    duplicate.id = "copy"
    trajectories = [original, duplicate]
    score_with_judges(trajectories, TASKS, JudgeConfig(backend="openai", model="j", cache_dir=str(tmp_path)))
    assert len(scripted["j"].requests) == 1
    assert trajectories[0].rewards == trajectories[1].rewards


def test_reward_is_overall_over_ten_and_unset_on_failure(tmp_path, scripted):
    cfg = RewardConfig(weights={"judge_overall": 1.0}, judge=JudgeConfig(backend="openai", model="j",
                                                                         cache_dir=str(tmp_path)))
    trajectories = _trajectories()
    scorer = Scorer(cfg)
    scorer.score(trajectories, TASKS)
    assert [t.reward for t in trajectories] == [pytest.approx(0.7), pytest.approx(0.66), None]
    assert scorer.judge_summary["judge"]["failures"] == 1
    mixed = RewardConfig(weights={"accuracy": 0.5, "judge_overall": 0.5}, judge=cfg.judge)
    trajectories = _trajectories()
    Scorer(mixed).score(trajectories, TASKS)
    assert trajectories[0].reward == pytest.approx(0.5 * 1.0 + 0.5 * 0.7)


def test_judge_config_errors():
    with pytest.raises(ConfigError, match="judge_second"):
        Scorer(RewardConfig(weights={"judge_second_overall": 1.0}))
    with pytest.raises(ConfigError, match="unknown component 'judge_overal'"):
        Scorer(RewardConfig(weights={"judge_overal": 1.0}))
    with pytest.raises(ConfigError, match="retries"):
        Judge(JudgeConfig(retries=-1))


def test_second_judge_and_agreement(tmp_path, monkeypatch):
    overall = {"a": [2, 4, 6, 8, 5], "b": [1, 3, 5, 9, 5]}

    def make(cfg):
        def script(request):
            i = int(request.messages[-1]["content"].split("Assistant: conversation ")[1][0])
            return f"Accuracy: {overall[cfg.model][i]}\nOverall: {overall[cfg.model][i]}\n"
        return ScriptedJudge(script)

    monkeypatch.setattr(judge_mod, "make_generator", make)
    tasks = {f"q{i}": Task(id=f"q{i}", source="sciq", question="Q?", answer="A", choices=["x", "y"])
             for i in range(5)}
    trajectories = [Trajectory(id=f"q{i}#0", task_id=f"q{i}", group_id=f"q{i}",
                               messages=[{"role": "user", "content": "Q?"},
                                         {"role": "assistant", "content": f"conversation {i}"}]) for i in range(5)]
    from turnrl.generation import BackendConfig

    cfg = JudgeConfig(backend="openai", model="a", cache_dir=str(tmp_path),
                      second=BackendConfig(backend="openai", model="b"))
    info = score_with_judges(trajectories, tasks, cfg)
    assert trajectories[3].rewards["judge_second_overall"] == pytest.approx(0.9)
    got = info["agreement"]["overall"]
    a, b = np.array(overall["a"], float), np.array(overall["b"], float)
    # Pearson by its definition; Spearman on hand-ranked values (a: 1,2,4,5,3; b: 1,2,3,5,3.5 -> ties averaged).
    pearson = ((a - a.mean()) * (b - b.mean())).sum() / math.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum())
    ra, rb = np.array([1, 2, 4, 5, 3.0]), np.array([1, 2, 3.5, 5, 3.5])
    spearman = ((ra - ra.mean()) * (rb - rb.mean())).sum() / math.sqrt(((ra - ra.mean()) ** 2).sum()
                                                                       * ((rb - rb.mean()) ** 2).sum())
    assert got["pearson"] == pytest.approx(pearson)
    assert got["spearman"] == pytest.approx(spearman)
    assert got["mean_abs_diff"] == pytest.approx((1 + 1 + 1 + 1 + 0) / 5)
    assert got["n"] == 5
    # Metrics a judge did not give have no pairs.
    assert info["agreement"]["reasoning"]["n"] == 0 and math.isnan(info["agreement"]["reasoning"]["pearson"])
    assert agreement(trajectories[:1])["overall"]["n"] == 1


def test_evaluation_reports_judge_scores_on_0_to_10():
    from turnrl.stages.evaluate import metrics_markdown, summarise

    rows = [{"task_id": str(i), "gold": "A", "runs": 1, "answers": ["A"], "judge_overall": v}
            for i, v in enumerate([0.0, 1.0, 1.0, 0.0])]
    est = summarise(rows)["judge_overall"]
    # A sample SE (std 0.5774 / sqrt 4), not a binomial one (0.25): judge scores are not 0/1 outcomes.
    assert est["se"] == pytest.approx(0.57735 / 2, rel=1e-4)
    md = metrics_markdown("m", {"judge_overall": {"mean": 0.72, "se": 0.031, "n": 10}})
    assert "| judge_overall | 7.20 ± 0.31 | 10 | judge: Overall (0-10) |" in md


def test_answers_already_back_are_kept_when_a_run_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(judge_mod, "CHUNK", 2)

    class FailsOnSecondChunk(ScriptedJudge):
        def generate(self, requests, desc=None):
            if self.requests:
                raise RuntimeError("endpoint went away")
            return super().generate(requests, desc)

    failing = FailsOnSecondChunk(lambda r: EXACT)
    monkeypatch.setattr(judge_mod, "make_generator", lambda cfg: failing)
    cfg = JudgeConfig(backend="openai", model="j", cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="went away"):
        score_with_judges(_trajectories(), TASKS, cfg)
    working = ScriptedJudge(lambda r: EXACT)
    monkeypatch.setattr(judge_mod, "make_generator", lambda cfg: working)
    score_with_judges(_trajectories(), TASKS, cfg)
    assert len(working.requests) == 1  # the first chunk's two answers came from the cache
