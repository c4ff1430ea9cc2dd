"""The scripted-teacher reasoning protocol of 000 App. E (E.1 thinking mode, E.2 standard mode).

Turn 1 presents the question, turn 2 asks why some options might be wrong, turns 3..n-1 (when n > 3) ask to
elaborate on key concepts, and turn n asks for the final answer as "The answer is X". With n = 1 the question and
the final-answer request share one message (a single-turn control). The prompts are 000's, verbatim, except that
the option letters follow the question's options (ARC has a few items with 3 or 5).
"""

from __future__ import annotations

from typing import Any

from turnrl.envs.base import Environment, Episode, EpisodeCoroutine, Prefix
from turnrl.records import Task, TurnInfo
from turnrl.tasks import INSTRUCTIONS


def letters_phrase(letters: list[str]) -> str:
    """"A, B, C, or D" for four options."""
    return ", ".join(letters[:-1]) + f", or {letters[-1]}" if len(letters) > 2 else " or ".join(letters)


def system_prompt(mode: str, letters: list[str]) -> str:
    choices = letters_phrase(letters)
    if mode == "thinking":
        return (
            "You are a helpful, accurate assistant who is an expert at answering multiple-choice questions. "
            "When you think through a problem, wrap your thinking in <thinking></thinking> tags. You MUST first "
            f"state your final answer in the format: 'The answer is X' where X is {choices}. The final answer "
            "must be outside the thinking tags. Then show your thinking in <thinking></thinking> tags for your "
            "step-by-step reasoning."
        )
    return (
        "You are a helpful, accurate assistant who is an expert at answering multiple-choice questions. You MUST "
        f"first state your final answer in the format: 'The answer is X' where X is {choices}. After the final "
        "answer clearly explain your reasoning."
    )


def instruction(task: Task) -> str:
    line = INSTRUCTIONS.get(task.source, "")
    if "{subject}" in line:
        line = line.format(subject=task.meta.get("subject", "this subject").replace("_", " "))
    return line


def question_block(task: Task) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(task.letters, task.choices))
    return f"Question: {task.question}\nChoices:\n{options}"


def first_turn(task: Task, mode: str) -> str:
    ask = (
        "Please use <thinking></thinking> tags to show your step-by-step reasoning, then provide your initial "
        "thoughts outside of these tags."
        if mode == "thinking"
        else "Please think through this step by step and explain your initial thoughts about the question."
    )
    lead = instruction(task)
    return f"{question_block(task)}\n\n{lead} {ask}" if lead else f"{question_block(task)}\n\n{ask}"


def second_turn(mode: str) -> str:
    if mode == "thinking":
        return ("That's a good start. Can you explain more about why some options might be incorrect? Use "
                "<thinking></thinking> tags for your analysis.")
    return ("That's a good start. Can you explain more about why some options might be incorrect? Also, are there "
            "any key concepts or facts that are relevant to answering this question?")


def intermediate_turn(mode: str, turn: int) -> str:
    text = (f"Thank you for your explanation. Let's explore this further (turn {turn}). Could you elaborate on the "
            "key concepts relevant to this question?")
    return text + " Continue using <thinking></thinking> tags for your analysis." if mode == "thinking" else text


def final_turn(mode: str, letters: list[str], after_explanations: bool = True) -> str:
    choices = letters_phrase(letters)
    lead = "Thank you for your detailed explanations. " if after_explanations else ""
    ask = f"What is your final answer ({choices})?"
    if mode == "thinking":
        return (f"{lead}{ask} Please provide a justification for your choice. You MUST first state your final answer "
                f"in the format: 'The answer is X' where X is {choices}. The final answer must be outside the "
                "thinking tags. Then show your thinking in <thinking></thinking> tags for your step-by-step reasoning.")
    return (f"{lead}{ask} You MUST first state your final answer in the format: 'The answer is X' where X is "
            f"{choices}. After the final answer clearly explain your reasoning.")


class ReasoningEnv(Environment):
    name = "reasoning"

    def __init__(self, mode: str = "standard", turns: int = 3, max_new_tokens: int = 96,
                 final_max_new_tokens: int | None = None):
        if mode not in ("standard", "thinking"):
            raise ValueError(f"mode must be standard or thinking, got {mode!r}")
        if not 1 <= turns <= 10:
            raise ValueError(f"turns must be between 1 and 10, got {turns}")
        self.mode, self.turns = mode, turns
        self.max_new_tokens = max_new_tokens
        self.final_max_new_tokens = final_max_new_tokens or max_new_tokens

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "turns": self.turns, "max_new_tokens": self.max_new_tokens,
                "final_max_new_tokens": self.final_max_new_tokens,
                "shuffle_options": self.shuffle_options}

    def user_turn(self, task: Task, t: int) -> str:
        """The teacher's message before assistant turn ``t`` (1-based)."""
        if self.turns == 1:
            return f"{first_turn(task, self.mode)}\n\n{final_turn(self.mode, task.letters, after_explanations=False)}"
        if t == 1:
            return first_turn(task, self.mode)
        if t == self.turns:
            return final_turn(self.mode, task.letters)
        if t == 2:
            return second_turn(self.mode)
        return intermediate_turn(self.mode, t)

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        if not task.choices:
            raise ValueError(f"task {task.id}: the reasoning environment needs a multiple-choice task")
        if prefix is None:
            messages = [{"role": "system", "content": system_prompt(self.mode, task.letters)},
                        {"role": "user", "content": self.user_turn(task, 1)}]
            turns: list[TurnInfo] = []
        else:
            messages, turns = list(prefix.messages), list(prefix.turns)
        for t in range(len(turns) + 1, self.turns + 1):
            if messages[-1]["role"] == "assistant":
                messages.append({"role": "user", "content": self.user_turn(task, t)})
            cap = self.final_max_new_tokens if t == self.turns else self.max_new_tokens
            yield from self.policy_turn(messages, turns, cap)
        return Episode(messages=messages, turns=turns, finish="done")
