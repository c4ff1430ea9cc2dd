"""The feedback environment (004): turn logic with a scripted policy, multi@k, and its path through evaluate."""

from __future__ import annotations

import json
import math

import pytest

from turnrl.envs import EnvConfig, make_env
from turnrl.envs.base import Prefix
from turnrl.envs.feedback import DEFAULT_FEEDBACK, SYSTEM_PROMPT, FeedbackEnv
from turnrl.generation import GenResult, Sampling
from turnrl.records import Task, TurnInfo
from turnrl.rollout import Job, run_episodes

MC = Task(id="mc/1", source="sciq", question="Which gas do plants absorb for photosynthesis?",
          choices=["oxygen", "nitrogen", "carbon dioxide", "helium"], answer="C")


@pytest.fixture(scope="module")
def gsm8k_task() -> Task:
    """A real GSM8K test item from the offline data (Janet's ducks, gold 18)."""
    from turnrl.tasks import DatasetConfig, load_tasks

    task = load_tasks(DatasetConfig(name="gsm8k"))[0]
    assert task.answer == "18" and "Janet" in task.question
    return task


class ScriptedPolicy:
    """Answers turn t of a conversation with script[task question][t - 1]; records every request it saw."""

    name = "scripted"

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = scripts
        self.requests = []

    def generate(self, requests, desc=None):
        self.requests.extend(requests)
        out = []
        for r in requests:
            question = r.messages[1]["content"]
            script = next(s for q, s in self.scripts.items() if q in question)
            turn = sum(m["role"] == "assistant" for m in r.messages)
            text = script[turn]
            out.append(GenResult(text=text, tokens=len(text.split()), finish="stop"))
        return out


def roll(env, tasks: list[Task], policy) -> list:
    jobs = [Job(id=f"{t.id}#0", task=t, sampling=Sampling()) for t in tasks]
    return run_episodes(env, jobs, policy)


def roles(messages) -> list[str]:
    return [m["role"] for m in messages]


def test_defaults_differ_by_environment():
    assert make_env(EnvConfig(name="feedback")).settings()["turns"] == 5  # 004's T
    assert make_env(EnvConfig(name="reasoning")).settings()["turns"] == 3  # 000's n
    assert make_env(EnvConfig(name="feedback", max_turns=2)).settings()["turns"] == 2
    assert make_env(EnvConfig(name="feedback")).settings()["feedback_message"] == "Incorrect. Please think again."


def test_multiple_choice_stops_on_the_correct_answer():
    env = make_env(EnvConfig(name="feedback"))
    policy = ScriptedPolicy({MC.question: ["The answer is A. Oxygen.", "Let me reconsider. The answer is C.",
                                           "never asked"]})
    (episode,) = roll(env, [MC], policy)
    assert roles(episode.messages) == ["system", "user", "assistant", "user", "assistant"]
    assert episode.messages[0]["content"] == SYSTEM_PROMPT
    first = episode.messages[1]["content"]
    assert "C. carbon dioxide" in first and "The answer is X" in first and "A, B, C, or D" in first
    assert episode.messages[3]["content"] == DEFAULT_FEEDBACK
    assert episode.finish == "solved" and episode.meta == {"answers": ["A", "C"], "solved_at": 2}
    assert len(policy.requests) == 2 and len(episode.turns) == 2


def test_turn_limit_and_custom_feedback():
    env = make_env(EnvConfig(name="feedback", max_turns=3, feedback_message="Wrong. Try again."))
    # Turn 2 names two letters: ambiguous, so wrong (the project's answer rule), and answered with feedback.
    policy = ScriptedPolicy({MC.question: ["The answer is A.", "The answer is B. Or the answer is C.",
                                           "I do not know.", "never asked"]})
    (episode,) = roll(env, [MC], policy)
    assert roles(episode.messages) == ["system", "user"] + ["assistant", "user"] * 2 + ["assistant"]
    assert [m["content"] for m in episode.messages if m["role"] == "user"][1:] == ["Wrong. Try again."] * 2
    assert episode.finish == "turn_limit" and episode.meta == {"answers": ["A", None, None], "solved_at": None}


def test_first_turn_success_is_one_turn():
    env = make_env(EnvConfig(name="feedback"))
    (episode,) = roll(env, [MC], ScriptedPolicy({MC.question: ["The answer is C."]}))
    assert roles(episode.messages) == ["system", "user", "assistant"] and episode.meta["solved_at"] == 1


def test_numeric_task(gsm8k_task):
    env = make_env(EnvConfig(name="feedback", max_turns=4))
    policy = ScriptedPolicy({gsm8k_task.question: [
        "16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = \\boxed{16} dollars.",
        "Sorry, I cannot tell.",
        "She sells 16 - 3 - 4 = 9 eggs for $2 each, so \\boxed{18}.",
        "never asked",
    ]})
    (episode,) = roll(env, [gsm8k_task], policy)
    prompt = episode.messages[1]["content"]
    assert "Janet" in prompt and "\\boxed{" in prompt
    assert roles(episode.messages).count("assistant") == 3
    assert episode.finish == "solved" and episode.meta["solved_at"] == 3
    assert episode.meta["answers"][0] == "16" and episode.meta["answers"][2] == "18"


def test_conversations_in_one_batch_end_independently(gsm8k_task):
    env = make_env(EnvConfig(name="feedback", max_turns=3))
    policy = ScriptedPolicy({MC.question: ["The answer is C."],
                             gsm8k_task.question: ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"]})
    mc, math_ep = roll(env, [MC, gsm8k_task], policy)
    assert mc.meta["solved_at"] == 1 and math_ep.meta["solved_at"] is None
    assert [len(r.messages) for r in policy.requests] == [2, 2, 4, 6]  # round 2 holds only the math conversation


def test_continues_a_logged_prefix():
    env = make_env(EnvConfig(name="feedback", max_turns=3))
    prefix = Prefix(messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": MC.question},
                              {"role": "assistant", "content": "The answer is A."},
                              {"role": "user", "content": DEFAULT_FEEDBACK}],
                    turns=[TurnInfo(tokens=4, truncated=False)])
    policy = ScriptedPolicy({MC.question: ["unused", "The answer is B.", "The answer is C."]})
    (episode,) = run_episodes(env, [Job(id="j", task=MC, sampling=Sampling(), prefix=prefix)], policy)
    assert roles(episode.messages).count("assistant") == 3
    assert episode.meta == {"answers": ["A", "B", "C"], "solved_at": 3}


def test_metrics_multi_at_k(gsm8k_task):
    from turnrl.rollout import episode_to_trajectory

    env = make_env(EnvConfig(name="feedback"))
    policy = ScriptedPolicy({MC.question: ["The answer is A.", "The answer is A.", "The answer is C."],
                             gsm8k_task.question: ["\\boxed{9}", "\\boxed{9.0}"] + ["nothing"] * 3})
    jobs = [Job(id=f"{t.id}#0", task=t, sampling=Sampling()) for t in (MC, gsm8k_task)]
    mc, maths = [episode_to_trajectory(j, e, env.settings(), {}, 0.0)
                 for j, e in zip(jobs, run_episodes(env, jobs, policy))]
    assert env.metrics(mc, MC) == {"multi@1": 0.0, "multi@2": 0.0, "multi@3": 1.0, "multi@4": 1.0, "multi@5": 1.0,
                                   "turns_used": 3.0, "distinct_answers": 2.0}
    # 9 and 9.0 are one answer; the three turns without a number state none.
    assert env.metrics(maths, gsm8k_task) == {**{f"multi@{k}": 0.0 for k in range(1, 6)}, "turns_used": 5.0,
                                              "distinct_answers": 1.0}


def test_evaluate_reports_multi_at_k_with_standard_errors(tmp_path):
    """`turnrl evaluate` on four questions: solved at turns 1, 2, never, 3 -> multi@k by hand."""
    from turnrl.stages.evaluate import EvaluateConfig, evaluate
    from turnrl.rewards.scoring import RewardConfig
    from turnrl.tasks import DatasetConfig

    rows = [{"id": f"q{i}", "question": f"Question number {i}: which option?", "choices": ["w", "x", "y", "z"],
             "answer": "B"} for i in range(4)]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scripts = {"Question number 0": ["The answer is B."],
               "Question number 1": ["The answer is A.", "The answer is B."],
               "Question number 2": ["The answer is A."] * 3,
               "Question number 3": ["The answer is D.", "The answer is C.", "The answer is B."]}
    cfg = EvaluateConfig(run_dir=str(tmp_path / "run"), name="scripted", split="test",
                         env=EnvConfig(name="feedback", max_turns=3, shuffle_options=False),
                         dataset=DatasetConfig(name=str(data), n_train=0, n_test=4),
                         reward=RewardConfig(weights={"accuracy": 1.0}))
    result = evaluate(cfg, generator=ScriptedPolicy(scripts))
    metrics = result["metrics"]
    for k, p in ((1, 0.25), (2, 0.5), (3, 0.75)):
        assert metrics[f"multi@{k}"]["mean"] == pytest.approx(p)
        assert metrics[f"multi@{k}"]["se"] == pytest.approx(math.sqrt(p * (1 - p) / 4))
        assert metrics[f"multi@{k}"]["n"] == 4
    assert metrics["accuracy"]["mean"] == pytest.approx(0.75)  # final answer right = solved within T
    assert metrics["turns_used"]["mean"] == pytest.approx((1 + 2 + 3 + 3) / 4)
    per_question = [json.loads(line) for line in
                    (tmp_path / "run" / "eval" / "scripted" / "per_question.jsonl").read_text().splitlines()]
    assert sorted(r["multi@1"] for r in per_question) == [0, 0, 0, 1]


def test_metrics_markdown_describes_multi_at_k_as_percentages():
    from turnrl.stages.evaluate import metrics_markdown
    md = metrics_markdown("m", {"multi@3": {"mean": 0.67, "se": 0.047, "n": 100},
                                "distinct_answers": {"mean": 2.54, "se": 0.117, "n": 100}},
                          FeedbackEnv.metric_descriptions)
    assert "| multi@3 | 67.0 ± 4.7 % | 100 | solved by turn 3 (004 eq. 21) |" in md
    assert "| distinct_answers | 2.540 ± 0.117 | 100 | distinct answers stated (E) |" in md
