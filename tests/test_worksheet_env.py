"""The worksheet environment: the answer must be earned by asking the right question and using the reply.

Degenerate and scripted policies are run on every question of the offline SciQ pool, options shuffled per
conversation as in every run, and their outcomes compared with what each must score by construction.
"""

from __future__ import annotations

import re

import pytest

from turnrl.envs import EnvConfig, make_env
from turnrl.envs.worksheet import ASK_FOR_ANSWER, NON_ANSWER, crossed_out, is_informed
from turnrl.generation import GenResult
from turnrl.records import Task
from turnrl.rollout import build_jobs, episode_to_trajectory, run_episodes

GENERIC_QUESTIONS = [
    "Hmm?", "Can you help?", "What?", "Could you clarify?", "Can you tell me more?", "What do you mean?",
    "Any hints?", "What is the answer?", "Which option is correct?", "Is it A?", "Are you sure?",
    "Can you repeat the question?", "What are the options?", "Do you know the answer?",
    "Could you give me more context?", "The answer is B. Is that right?", "D?", "Which one do you think?",
]
ABOUT_THE_WORKSHEET = [
    "Which options did your teacher cross out?", "What did your teacher mark on the worksheet?",
    "Which options are wrong?", "Can you tell me which ones were crossed out?",
    "Which choices did the teacher rule out?", "Could you read me what is crossed out on your worksheet?",
]


class FunctionPolicy:
    """A scripted policy: ``turn(messages) -> text``."""

    name = "scripted"

    def __init__(self, turn):
        self.turn = turn

    def generate(self, requests, desc=None):
        return [GenResult(text=(t := self.turn(r.messages)), tokens=len(t.split()), finish="stop") for r in requests]


def shown_options(messages) -> dict[str, str]:
    return dict(re.findall(r"^([A-J])\. (.*)$", messages[1]["content"], re.MULTILINE))


def eliminate(messages) -> str | None:
    """The option left when every option named in quotes by the user is struck off, if exactly one is left."""
    named = {n for m in messages if m["role"] == "user" for n in re.findall(r'"([^"]*)"', m["content"])}
    left = [letter for letter, text in shown_options(messages).items() if text not in named]
    return left[0] if len(left) == 1 else None


def told(messages) -> bool:
    return '"' in messages[1]["content"].split("\n\n")[-1]


def oracle(ask_always: bool):
    def turn(messages):
        if len(messages) == 2 and (ask_always or not told(messages)):
            return "Which options did your teacher cross out?"
        return f"The answer is {eliminate(messages) or 'A'}."
    return turn


@pytest.fixture(scope="module")
def pool() -> list[Task]:
    from turnrl.tasks import _sciq

    return _sciq("offline", support=False)


def run(tasks, turn, **env_settings):
    env = make_env(EnvConfig(name="worksheet", **env_settings))
    jobs = build_jobs(tasks, env.settings(), samples=1, temperatures=[0.0], top_p=1.0, top_k=0, seed=0)
    episodes = run_episodes(env, jobs, FunctionPolicy(turn))
    trajs = [episode_to_trajectory(j, e, env.settings(), {}, 0.0) for j, e in zip(jobs, episodes)]
    by_id = {t.id: t for t in tasks}
    rows = [env.metrics(t, by_id[t.task_id]) for t in trajs]
    return env, trajs, rows


def mean(rows, key):
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values)


def test_the_opening_names_the_crossed_out_options_on_the_informed_share_only(pool):
    informed = [is_informed(t, 0.4) for t in pool]
    assert 0.4 - 4 * 0.0155 < sum(informed) / len(pool) < 0.4 + 4 * 0.0155  # Binomial(1000, 0.4), 4 SE
    env, trajs, _ = run(pool[:50], lambda m: "The answer is A.")
    for traj, task in zip(trajs, pool[:50]):
        opening = traj.messages[1]["content"]
        assert all(f'"{text}"' in opening for text in crossed_out(task)) == is_informed(task, 0.4)


def test_a_constant_letter_earns_one_in_four(pool):
    _, trajs, rows = run(pool, lambda m: "The answer is A.")
    assert mean(rows, "earned") == 0.25  # gold positions balanced over the pool: exactly 250 of 1000
    assert mean(rows, "accuracy_when_needed") == pytest.approx(0.25, abs=4 * 0.018)  # ~600 items, 4 SE
    assert mean(rows, "asked") == 0.0


def test_generic_questions_reveal_nothing(pool):
    for question in GENERIC_QUESTIONS:
        _, trajs, rows = run(pool[:40], lambda m, q=question: q if len(m) == 2 else "The answer is A.")
        assert mean(rows, "revealed") == 0.0, question
        # A question the prompt already holds ("... is called what?") is not the assistant's own: asked to answer.
        assert {t.messages[3]["content"] for t in trajs} <= {NON_ANSWER, ASK_FOR_ANSWER}, question
        assert [r["asked"] for r in rows] == [float(t.messages[3]["content"] == NON_ANSWER) for t in trajs]


def test_questions_about_the_worksheet_get_the_crossed_out_options_and_never_the_answer(pool):
    for question in ABOUT_THE_WORKSHEET:
        _, trajs, rows = run(pool[:40], lambda m, q=question: q if len(m) == 2 else "The answer is A.")
        assert mean(rows, "revealed") == 1.0, question
    _, trajs, _ = run(pool, oracle(ask_always=True))
    for traj, task in zip(trajs, pool):
        reply = traj.messages[3]["content"]
        gold = task.choices[task.letters.index(task.answer)]
        names = re.findall(r'"([^"]*)"', reply)
        assert gold not in names and set(names) == set(crossed_out(task))
        assert not re.search(r"(?<!\w)" + re.escape(gold.lower()) + r"(?!\w)", reply.lower()), (task.id, reply)
        assert not re.search(r"\b[A-D]\b", re.sub(r'"[^"]*"', "", reply)), reply  # no letter outside the names


def test_copying_the_reply_scores_nothing(pool):
    def copy(messages):
        return "Which options did your teacher cross out?" if len(messages) == 2 else messages[-1]["content"]

    _, _, rows = run(pool, copy)
    assert mean(rows, "accuracy_when_needed") == 0.0 and mean(rows, "accuracy_when_told") == 0.0


def test_asking_and_using_the_reply_succeeds_and_asking_only_when_needed_earns_most(pool):
    _, _, always = run(pool, oracle(ask_always=True))
    _, _, when_needed = run(pool, oracle(ask_always=False))
    _, _, never = run(pool, lambda m: f"The answer is {eliminate(m) or 'A'}.")
    # Two SciQ items keep a second candidate ("oil/gas" beside "gas"), which the oracle answers with A.
    assert mean(always, "accuracy_when_needed") > 0.995 and mean(always, "accuracy_when_told") > 0.995
    assert mean(always, "earned") == pytest.approx(0.8 * mean(always, "accuracy_when_needed"), abs=0.003)
    assert mean(when_needed, "asked_when_told") == 0.0 and mean(when_needed, "asked_when_needed") == 1.0
    informed = mean([{"x": float(is_informed(t, 0.4))} for t in pool], "x")
    assert mean(when_needed, "earned") == pytest.approx(informed + 0.8 * (1 - informed), abs=0.005)
    # Not asking leaves the uninformed items at chance.
    assert mean(never, "accuracy_when_needed") == pytest.approx(0.25, abs=0.05)
    assert mean(when_needed, "earned") > mean(always, "earned") > mean(never, "earned")


def test_conversation_shapes_and_the_earned_reward_component():
    from turnrl.rewards.scoring import RewardConfig, Scorer

    task = Task(id="mc/1", source="sciq", question="Which gas do plants absorb for photosynthesis?",
                choices=["oxygen", "nitrogen", "carbon dioxide", "helium"], answer="C")
    env = make_env(EnvConfig(name="worksheet", informed_share=0.0, shuffle_options=False))
    scripts = {"asks": ["Which options did your teacher cross out?", "The answer is C."],
               "answers": ["The answer is C.", "unused"], "stalls": ["Let me think.", "The answer is C."]}
    scorer = Scorer(RewardConfig(weights={"earned": 1.0}))
    outcomes = {}
    for name, script in scripts.items():
        policy = FunctionPolicy(lambda m, s=script: s[sum(x["role"] == "assistant" for x in m)])
        jobs = build_jobs([task], env.settings(), samples=1, temperatures=[0.0], top_p=1.0, top_k=0, seed=0)
        traj = episode_to_trajectory(jobs[0], run_episodes(env, jobs, policy)[0], env.settings(), {}, 0.0)
        scorer.score([traj], {task.id: task})
        outcomes[name] = (len(traj.messages), traj.messages[3]["content"] if len(traj.messages) > 3 else None,
                          traj.reward)
    assert outcomes["asks"] == (5, 'My teacher crossed out "oxygen", "nitrogen" and "helium". What is your final '
                                   'answer?', pytest.approx(0.8))
    assert outcomes["answers"] == (3, None, 1.0)
    assert outcomes["stalls"] == (5, ASK_FOR_ANSWER, 1.0)


def test_a_wrong_option_containing_the_answer_is_not_named():
    task = Task(id="mc/9", source="sciq", question="What is natural gas?",
                choices=["oil/gas", "gas", "coal", "rock"], answer="B")
    assert crossed_out(task) == ["coal", "rock"]


def test_behaviour_prompt_is_shown_to_the_logging_policy_and_not_recorded(tmp_path):
    from turnrl.generation import BackendConfig
    from turnrl.rollout import log_rollouts
    from turnrl.records import read_trajectories

    task = Task(id="mc/1", source="sciq", question="Which gas do plants absorb?",
                choices=["oxygen", "nitrogen", "carbon dioxide", "helium"], answer="C")
    env = make_env(EnvConfig(name="worksheet"))
    seen = []

    def turn(messages):
        seen.append(messages[0]["content"])
        return "The answer is C."

    jobs = build_jobs([task], env.settings(), samples=2, temperatures=[0.7], top_p=1.0, top_k=0, seed=0)
    out = tmp_path / "log.jsonl"
    log_rollouts(out, env, jobs, BackendConfig(), chunk_size=8, desc="t", generator=FunctionPolicy(turn),
                 behaviour_prompt="Always ask the user about the worksheet first.")
    assert seen == ["Always ask the user about the worksheet first."] * 2
    logged = read_trajectories(out)
    assert all(t.messages[0]["content"].startswith("You are a helpful assistant.") for t in logged)
    assert all(t.policy["behaviour_prompt"] == "Always ask the user about the worksheet first." for t in logged)


def test_open_answer_tasks_are_refused():
    env = make_env(EnvConfig(name="worksheet"))
    with pytest.raises(ValueError, match="multiple-choice"):
        next(env.episode(Task(id="g/1", source="gsm8k", question="1+1?", answer="2")))


def test_the_letter_variant_names_the_crossed_out_options_by_their_shown_letters_never_the_answer(pool):
    def by_letters(messages):
        if len(messages) == 2:
            return "Which options did your teacher cross out?"
        struck = set(re.findall(r"\b([A-D])\b", messages[-1]["content"].split("crossed out")[1]))
        left = sorted(set(shown_options(messages)) - struck)
        return f"The answer is {left[0] if len(left) == 1 else 'A'}."

    _, trajs, rows = run(pool, by_letters, names_by="letter")
    for traj, task in zip(trajs[:200], pool):
        gold = task.choices[task.letters.index(task.answer)]
        gold_letter = next(k for k, v in shown_options(traj.messages).items() if v == gold)
        named = set(re.findall(r"\b[A-D]\b", traj.messages[3]["content"].split("crossed out")[1]))
        assert len(named) == len(crossed_out(task)) and gold_letter not in named and '"' not in traj.messages[3]["content"]
    assert mean(rows, "accuracy_when_needed") > 0.995 and mean(rows, "accuracy_when_told") > 0.995


def test_scripted_exploratory_turns_condition_but_are_never_trained(tokenizer):
    """rollout.explore opens a conversation with a scripted question; the weighted and preference trainers mask it
    (the policy's own final turn alone carries the loss), checked on the token masks of SmolLM2's chat template."""
    from turnrl.algorithms.preference import whole
    from turnrl.algorithms.weighted import WeightedExample
    from turnrl.chat import encode_conversation
    from turnrl.records import TurnInfo, Trajectory
    from turnrl.stages.simulate import _exploratory_jobs
    from turnrl.train.config import OptimConfig
    from turnrl.train.weighted import tokenize_examples

    task = Task(id="mc/1", source="sciq", question="Which gas do plants absorb?",
                choices=["oxygen", "nitrogen", "carbon dioxide", "helium"], answer="C")
    env = make_env(EnvConfig(name="worksheet", informed_share=0.0, names_by="letter"))
    jobs = build_jobs([task], env.settings(), samples=1, temperatures=[0.7], top_p=1.0, top_k=0, seed=0)
    explored, to_trajectory = _exploratory_jobs(env, jobs, share=1.0, seed=0)
    episode = run_episodes(env, explored, FunctionPolicy(lambda m: f"The answer is {eliminate_letters(m)}."))[0]
    traj = to_trajectory(explored[0], episode, env.settings(), {}, 0.0)
    traj.reward = 0.8
    assert traj.meta["scripted_turns"] == [0] and traj.messages[2]["content"] == env.EXPLORATORY_QUESTION
    assert traj.messages[3]["content"].startswith("My teacher crossed out")
    eot = tokenizer.convert_tokens_to_ids(["<|im_end|>"])
    items, _ = tokenize_examples([WeightedExample(traj, 1.0)], tokenizer, eot, OptimConfig())
    enc = encode_conversation(tokenizer, traj.messages, eot)
    trained = tokenizer.decode([t for t, m in zip(items[0].seq.input_ids, items[0].seq.label_mask) if m])
    assert trained.startswith(traj.messages[4]["content"]) and env.EXPLORATORY_QUESTION not in trained
    assert len(enc.assistant_spans) == 2 and whole(traj).train_turns == [1]
    untouched = Trajectory(id="t#0", task_id="t", group_id="t", messages=traj.messages, reward=0.5,
                           turns=[TurnInfo(tokens=3, truncated=False)] * 2)
    assert whole(untouched).train_turns == [0, 1]


def eliminate_letters(messages) -> str:
    struck = set(re.findall(r"\b([A-D])\b", messages[-1]["content"].split("crossed out")[1]))
    left = sorted(set(shown_options(messages)) - struck)
    return left[0]
