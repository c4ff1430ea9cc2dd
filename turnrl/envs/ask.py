"""A clarifying-question task with a scripted user who holds the deciding information (000 Sec. 2's "clarifying an
ambiguous x with n questions", in STaR-GATE's setting of a user with a hidden preference).

The user brings a real multiple-choice question (SciQ, ARC, ...) and says that their teacher marked one option on
the worksheet; which one is what they want to know. The question can be answered two ways: from what the
assistant knows (for the offline default about as good as chance) or by asking the user, who answers any question
truthfully with the option the teacher marked, and never volunteers it. So guessing succeeds at about the model's
knowledge, asking and using the reply succeeds always; the policy to learn is to ask first.

The conversation (at most two assistant turns):

1. user: the question, its options, the worksheet, "You may ask me one question before you answer";
2. assistant: a question (or an answer, or anything else);
3. user, scripted:
   - the assistant asked a question of its own (a sentence ending in '?' not copied from the prompt): the marked
     option, 'My teacher marked C ("carpet"). What is your final answer?';
   - the assistant stated an answer and asked nothing: the conversation ends (one turn used);
   - otherwise: 'Please give your final answer now.' (nothing revealed);
4. assistant: the final answer, "The answer is X".

Scored like every multiple-choice task (:mod:`turnrl.rewards.answers`); reported with asked-a-question % and
turns used.
"""

from __future__ import annotations

from typing import Any

from turnrl.envs.base import Environment, Episode, EpisodeCoroutine, Prefix
from turnrl.envs.clarify import asks_own_question
from turnrl.envs.reasoning import letters_phrase, question_block
from turnrl.records import Task, TurnInfo, Trajectory
from turnrl.rewards.answers import extract_choice


def system_prompt(letters: list[str]) -> str:
    return ("You are a helpful assistant. When a request depends on something only the user knows, ask the user "
            "before you answer. State your final answer in the format: 'The answer is X' where X is "
            f"{letters_phrase(letters)}.")


def first_turn(task: Task) -> str:
    return (f"{question_block(task)}\n\nMy teacher marked one of these options as the answer on my worksheet, and "
            "I want to know which one it is. You may ask me one question before you answer.")


def reveal(task: Task) -> str:
    """The scripted user's truthful answer to any question: the option the teacher marked."""
    text = task.choices[task.letters.index(task.answer)]
    return f'My teacher marked {task.answer} ("{text}"). What is your final answer?'


NO_REVEAL = "Please give your final answer now."


class AskEnv(Environment):
    name = "ask"
    turns = 2

    def __init__(self, max_new_tokens: int = 48, final_max_new_tokens: int | None = None):
        self.max_new_tokens = max_new_tokens
        self.final_max_new_tokens = final_max_new_tokens or max_new_tokens

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "turns": self.turns, "max_new_tokens": self.max_new_tokens,
                "final_max_new_tokens": self.final_max_new_tokens}

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        if not task.choices or task.answer not in task.letters:
            raise ValueError(f"task {task.id}: the ask environment needs a multiple-choice task")
        if prefix is None:
            messages = [{"role": "system", "content": system_prompt(task.letters)},
                        {"role": "user", "content": first_turn(task)}]
            turns: list[TurnInfo] = []
        else:
            messages, turns = list(prefix.messages), list(prefix.turns)
        if not turns:
            yield from self.policy_turn(messages, turns, self.max_new_tokens)
        if len(turns) == 1:
            first = messages[-1]["content"]
            if asks_own_question(first, messages[-2]["content"]):
                messages.append({"role": "user", "content": reveal(task)})
            elif extract_choice(first, task.letters, choices=task.choices).status != "none":
                return Episode(messages=messages, turns=turns, finish="answered")
            else:
                messages.append({"role": "user", "content": NO_REVEAL})
            yield from self.policy_turn(messages, turns, self.final_max_new_tokens)
        return Episode(messages=messages, turns=turns, finish="done")

    metric_descriptions = {
        "asked_question": (True, "first turn asks a question of its own (not copied from the prompt), so the user "
                                 "reveals the marked option"),
        "turns_used": (False, "assistant turns (1: answered at once; 2: asked first, or was asked for the answer)"),
    }

    def metrics(self, trajectory: Trajectory, task: Task) -> dict[str, float]:
        idx = trajectory.assistant_indices()
        asked = bool(idx) and asks_own_question(trajectory.messages[idx[0]]["content"],
                                                trajectory.messages[idx[0] - 1]["content"])
        return {"asked_question": float(asked), "turns_used": float(len(idx))}
