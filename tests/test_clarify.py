"""The clarifying-questions environment (000 App. F): turn structure and exact prompts, with a scripted policy and a
scripted teacher driven by the real rollout engine; continuation from a prefix; scoring and training masks."""

from __future__ import annotations

import pytest

from turnrl.envs import EnvConfig, Prefix, make_env
from turnrl.errors import ConfigError
from turnrl.generation import GenResult, Sampling
from turnrl.records import Task, TurnInfo
from turnrl.rollout import Job, run_episodes

TASK = Task(id="q1", source="sciq", question="Which gas do plants absorb?", answer="B",
            choices=["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"])

SYSTEM = ("You are a curious student learning through asking clarifying questions. Think carefully about what you "
          "need to understand, ask specific questions to clarify concepts, and use the teacher's guidance to arrive "
          "at well-reasoned answers. For thinking steps, use lowercase <thinking>your thoughts</thinking> tags "
          "exactly. For final answers, format as: Answer is X. <thinking>your reasoning</thinking> (lowercase "
          "thinking tags only).")
TEACHER_1 = ("Question: Which gas do plants absorb?\nA) Oxygen\nB) Carbon dioxide\nC) Nitrogen\nD) Helium\n\n"
             "Ask me ONE specific question about any ONE of the options (A, B, C, or D). What would you like to "
             "clarify?")
ASK = ("You are a student learning about this question. Ask ONE specific question about any ONE of the options "
       "(A, B, C, or D). Be crisp and focused - ask only one clear question about a specific option. Do NOT give any "
       "answers or explanations. Just ask ONE simple question. Keep your response to 50-60 words maximum.")
TEACHER_SYSTEM = ("You are an expert teacher helping a student learn through clarifying questions. Guide the student "
                  "by presenting questions clearly, answering their clarifications helpfully, and encouraging deeper "
                  "thinking. NEVER give away answers - let the student discover through questioning. Keep your "
                  "responses concise and focused.")
TEACHER_ASK = ("You are a helpful teacher. Answer the student's clarification question in 2-3 sentences. Do NOT give "
               "the final answer yet. Just address their question directly. Keep your response to 50-60 words "
               "maximum.")
REASON = ("You are a student. Based on the discussion so far, think step by step about all the options within "
          "lowercase <thinking></thinking> tags exactly. Write 2-3 sentences reasoning through each option "
          "systematically. Do NOT ask any questions. Keep your response to 50-60 words maximum.")
TEACHER_3 = ("Great. Based on the discussion so far think and reason more and give your final answer. You must give "
             "the answer first then explain your reasoning within thinking tags.")
FINAL = ("You are a student providing your final answer. Recall the question is: Which gas do plants absorb? with "
         "options A: Oxygen, B: Carbon dioxide, C: Nitrogen, D: Helium. You MUST first state your final answer in "
         "the format: 'Answer is X' where X is A, B, C, or D. Then show your reasoning in lowercase "
         "<thinking></thinking> tags exactly in 2-3 sentences. Keep your total response to 50-60 words maximum.")

QUESTION = "Does option B refer to the gas used in photosynthesis?"
TEACHER_REPLY = "Plants use one of these gases to build sugars. Think about what photosynthesis consumes."
REASONING = "<thinking>Photosynthesis consumes carbon dioxide, so B fits; oxygen is released.</thinking>"
ANSWER = "Answer is B. <thinking>Plants absorb carbon dioxide for photosynthesis.</thinking>"


class Scripted:
    """A backend that replies from a list by the number of assistant turns so far, and records its requests."""

    name = "scripted"

    def __init__(self, replies: list[GenResult]):
        self.replies, self.requests = replies, []

    def generate(self, requests, desc=None):
        self.requests += requests
        return [self.replies[sum(m["role"] == "assistant" for m in r.messages)] for r in requests]


def _policy():
    return Scripted([GenResult(QUESTION, 12, "stop"), GenResult(REASONING, 80, "length"),
                     GenResult(ANSWER, 20, "stop")])


def _teacher():
    # The teacher's view holds one assistant message (its own first turn); the reply has stray whitespace.
    return Scripted([None, GenResult(f"  {TEACHER_REPLY}\n", 17, "stop")])


def _env(mode="thinking"):
    return make_env(EnvConfig(name="clarify", mode=mode, shuffle_options=False, max_new_tokens=80, final_max_new_tokens=90,
                              teacher_max_new_tokens=70))


def test_turns_and_prompts_are_000s():
    env = _env()
    assert env.needs_teacher
    policy, teacher = _policy(), _teacher()
    [episode] = run_episodes(env, [Job("q1#0", TASK, Sampling(temperature=0.7, seed=3))], policy, teacher=teacher)
    assert episode.messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"{TEACHER_1}\n\n{ASK}"},
        {"role": "assistant", "content": QUESTION},
        {"role": "user", "content": f"{TEACHER_REPLY}\n\n{REASON}"},
        {"role": "assistant", "content": REASONING},
        {"role": "user", "content": f"{TEACHER_3}\n\n{FINAL}"},
        {"role": "assistant", "content": ANSWER},
    ]
    assert episode.turns == [TurnInfo(12, False), TurnInfo(80, True), TurnInfo(20, False)]
    assert [r.sampling.max_new_tokens for r in policy.requests] == [80, 80, 90]
    assert [r.sampling.temperature for r in policy.requests] == [0.7] * 3
    # The teacher: its own system prompt, its first message as the assistant, the student's question as the user.
    [teacher_request] = teacher.requests
    assert teacher_request.messages == [
        {"role": "system", "content": TEACHER_SYSTEM},
        {"role": "assistant", "content": TEACHER_1},
        {"role": "user", "content": f"{QUESTION}\n\n{TEACHER_ASK}"},
    ]
    assert teacher_request.sampling.max_new_tokens == 70
    assert episode.meta == {"teacher_turns": [{"tokens": 17, "truncated": False}]}


def test_continues_from_a_prefix():
    env = _env()
    full = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{TEACHER_1}\n\n{ASK}"},
            {"role": "assistant", "content": QUESTION}, {"role": "user", "content": f"{TEACHER_REPLY}\n\n{REASON}"},
            {"role": "assistant", "content": REASONING}]
    # Before the second assistant turn: the teacher has already answered, so only the policy is asked (twice).
    policy, teacher = _policy(), _teacher()
    [ep] = run_episodes(env, [Job("b", TASK, Sampling(), prefix=Prefix(full[:4], [TurnInfo(12, False)]))],
                        policy, teacher=teacher)
    assert teacher.requests == [] and len(policy.requests) == 2
    assert ep.messages[:4] == full[:4] and ep.messages[4:] == [
        {"role": "assistant", "content": REASONING}, {"role": "user", "content": f"{TEACHER_3}\n\n{FINAL}"},
        {"role": "assistant", "content": ANSWER}]
    # Before the final turn: one policy call with the final cap.
    policy = _policy()
    [ep] = run_episodes(env, [Job("c", TASK, Sampling(), prefix=Prefix(full + [
        {"role": "user", "content": f"{TEACHER_3}\n\n{FINAL}"}], [TurnInfo(12, False), TurnInfo(80, True)]))],
        policy, teacher=_teacher())
    assert [r.sampling.max_new_tokens for r in policy.requests] == [90]
    assert ep.messages[-1] == {"role": "assistant", "content": ANSWER} and len(ep.turns) == 3


def test_standard_mode_drops_only_the_tag_instructions():
    env = _env("standard")
    policy = _policy()
    [ep] = run_episodes(env, [Job("s", TASK, Sampling())], policy, teacher=_teacher())
    prompts = [m["content"] for m in ep.messages if m["role"] != "assistant"]
    assert not any("thinking" in p for p in prompts)
    assert ep.messages[0]["content"].endswith("For final answers, format as: Answer is X. Then your reasoning.")
    assert ep.messages[1]["content"] == f"{TEACHER_1}\n\n{ASK}"
    assert ep.messages[5]["content"].startswith("Great. Based on the discussion so far think and reason more and give "
                                                "your final answer. You must give the answer first then explain your "
                                                "reasoning.\n\n")


def test_needs_multiple_choice_and_a_known_mode():
    with pytest.raises(ConfigError, match="mode"):
        make_env(EnvConfig(name="clarify", mode="chatty"))
    open_task = Task(id="g", source="gsm8k", question="2+2?", answer="4")
    with pytest.raises(ValueError, match="multiple-choice"):
        next(_env().episode(open_task))


def test_logs_score_and_train_like_any_other(tokenizer):
    from turnrl.chat import encode_conversation
    from turnrl.stages.evaluate import outcome
    from turnrl.models import stop_token_ids
    from turnrl.rewards import cheap_components
    from turnrl.rollout import build_jobs, episode_to_trajectory

    env = _env()
    [job] = build_jobs([TASK], env.settings(), 1, [0.7], 0.95, 0, 0)
    [ep] = run_episodes(env, [job], _policy(), teacher=_teacher())
    traj = episode_to_trajectory(job, ep, env.settings(), {"model": "scripted"}, 0.0)
    # "Answer is B" is the clarify protocol's canonical form: correct and well formatted.
    assert cheap_components(traj, TASK)["accuracy"] == 1.0 and cheap_components(traj, TASK)["format"] == 1.0
    measured = outcome(traj, TASK, env)
    assert measured["asked_question"] == 1.0 and measured["thinking_asked"] == 1.0
    assert measured["thinking"] == 0.0  # the common Thinking % also asks it of the (tag-free) question
    enc = encode_conversation(tokenizer, traj.messages, stop_token_ids(tokenizer))
    assert len(enc.assistant_spans) == 3
    for (start, end), text in zip(enc.assistant_spans, [QUESTION, REASONING, ANSWER]):
        assert tokenizer.decode(enc.input_ids[start:end]) == text + "<|im_end|>"
    traj.messages[4]["content"] = "Photosynthesis consumes carbon dioxide."  # reasoning without the tags
    assert outcome(traj, TASK, env)["thinking_asked"] == 0.0


@pytest.mark.parametrize("text, asked", [
    ("Is fermentation done without oxygen?", True),
    ("A) fermentation\nB) condensation\n\nWhat would you like to clarify?", False),   # the prompt's own question
    ("A) fermentation B) condensation", False),
    ("what would you like to clarify?  Does option B need heat?", True),
])
def test_asked_question_ignores_questions_copied_from_the_prompt(text, asked):
    from turnrl.envs.clarify import asks_own_question
    prompt = "Question: ...\n\nAsk me ONE specific question. What would you like to clarify?"
    assert asks_own_question(text, prompt) is asked
