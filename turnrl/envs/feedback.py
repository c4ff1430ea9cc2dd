"""004's retry-with-feedback protocol: a verifier checks every answer, a wrong one gets a fixed message.

Turn t = 1..T: the policy answers; a correct answer ends the conversation (a success after L = t turns); a wrong
or missing one is answered with the fixed feedback message f (004 Sec. 5.5: "Incorrect. Please think again.")
and turn t + 1 follows, up to T turns (004: T = 5). So only the last assistant turn of a conversation can be
correct (004 Sec. 2), and a conversation of T wrong turns is a failure.

The verifier (:func:`turnrl.rewards.verdicts.verify`, shared with DRIFT's return) reads one assistant turn:

- multiple choice: the answer letter by the project's one rule (:func:`turnrl.rewards.answers.extract_choice`:
  "The answer is X"; a turn naming two different letters is ambiguous and wrong);
- open answers (GSM8K, MATH): the math checker's :func:`extract_math_answer` and :func:`math_equal`.

Prompts. 004's released code has two templates: "full" for training rollouts (Turn/State/actions-left/Reward
lines) and "simple" for evaluation (the problem, then the bare feedback message). Here one template serves both,
so the policy is trained in the conversations it is evaluated in: 004's "simple" prompts (App. D.7), with the
system message "You're a helpful assistant." and the bare feedback as the user's reply. Two choices differ from
004, whose prompts ask for "<think> ... </think> <answer> ... </answer>": a multiple-choice turn states its answer
as "The answer is X" (the project's answer rule), and a math turn puts its answer in \\boxed{} (the math
checker's primary form; the closing line is 003's "Please reason step by step, and put your final answer within
\\boxed{}.", which names no placeholder a small model could copy as its answer). The token cap of a turn is
``max_new_tokens`` (004: 512 in rollouts, 1024 in evaluation).

Option order. Where the task's options are shuffled (``env.shuffle_options``, the default), every retry shows the
options again in a new order drawn from the conversation's seed, after the feedback message, and the verifier
reads the retry's letter in that order: a policy that keeps stating one letter, or walks through the letters,
gains nothing from the order. Each turn's order is recorded in the trajectory (``option_orders``).

The default T is 5 (004) where the reasoning environment's n is 3 (000): ``EnvConfig.max_turns = 0`` means "the
environment's own default", so ``env.name: feedback`` alone gives 004's protocol.
"""

from __future__ import annotations

from typing import Any

from turnrl.envs.base import Environment, Episode, EpisodeCoroutine, Prefix
from turnrl.generation import derive_seed
from turnrl.records import Task, Trajectory, TurnInfo
from turnrl.rewards.verdicts import distinct_answers, solved_at, turn_verdicts, verify
from turnrl.tasks import option_order

DEFAULT_TURNS = 5
DEFAULT_FEEDBACK = "Incorrect. Please think again."
SYSTEM_PROMPT = "You're a helpful assistant."


def letter_range(letters: list[str]) -> str:
    """"A-D" for four options."""
    return f"{letters[0]}-{letters[-1]}"


def letters_phrase(letters: list[str]) -> str:
    """"A, B, C, or D" for four options."""
    return ", ".join(letters[:-1]) + f", or {letters[-1]}" if len(letters) > 2 else " or ".join(letters)


def options_block(task: Task) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(task.letters, task.choices))


def retry_view(task: Task, t: int) -> tuple[Task, list[int]]:
    """The task as turn ``t`` (1-based) shows it, and that order relative to ``task``: turn 1 as given, every
    retry in an order drawn from the conversation's options seed (none: no re-ordering)."""
    n = len(task.choices)
    if t == 1 or not n or "options_seed" not in task.meta:
        return task, list(range(n))
    order = option_order(n, derive_seed(task.meta["options_seed"], "retry", t))
    return task.shown_in(order), order


def retry_message(feedback: str, shown: Task) -> str:
    """The feedback, then (where the options were re-ordered) the options in their new order."""
    if "options_seed" not in shown.meta or not shown.choices:
        return feedback
    return (f"{feedback}\n\nThe options, in a new order:\n{options_block(shown)}\n\n"
            f"End your reply with 'The answer is X', where X is {letters_phrase(shown.letters)}.")


def first_prompt(task: Task) -> str:
    """004 App. D.7's evaluation prompt, with the answer format of this project (see the module docstring)."""
    if task.choices:
        options = options_block(task)
        return (f"You are solving multiple-choice questions. Give the final answer letter "
                f"({letter_range(task.letters)}) in the form 'The answer is X'.\n\n"
                f"Problem:\n{task.question}\n{options}\n\n"
                f"Always end your reply with 'The answer is X', where X is {letters_phrase(task.letters)}.")
    return ("You are solving math problems. Give the final answer within \\boxed{}.\n\n"
            f"Problem:\n{task.question}\n\n"
            "Please reason step by step, and put your final answer within \\boxed{}.")


class FeedbackEnv(Environment):
    name = "feedback"

    def __init__(self, turns: int = DEFAULT_TURNS, max_new_tokens: int = 128,
                 feedback_message: str = DEFAULT_FEEDBACK):
        if not 1 <= turns <= 20:
            raise ValueError(f"turns must be between 1 and 20, got {turns}")
        if not feedback_message.strip():
            raise ValueError("feedback_message must not be empty")
        self.turns, self.max_new_tokens, self.feedback_message = turns, max_new_tokens, feedback_message

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "turns": self.turns, "max_new_tokens": self.max_new_tokens,
                "feedback_message": self.feedback_message,
                "shuffle_options": self.shuffle_options}

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        if prefix is None:
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": first_prompt(task)}]
            turns: list[TurnInfo] = []
            answers: list[str | None] = []
        else:
            messages, turns = list(prefix.messages), list(prefix.turns)
            said = [m["content"] for m in messages if m["role"] == "assistant"]
            answers = [verify(text, retry_view(task, t)[0]).answer for t, text in enumerate(said, start=1)]
        orders = [retry_view(task, t)[1] for t in range(1, len(turns) + 1)]
        for t in range(len(turns) + 1, self.turns + 1):
            shown, order = retry_view(task, t)
            if messages[-1]["role"] == "assistant":
                messages.append({"role": "user", "content": retry_message(self.feedback_message, shown)})
            result = yield from self.policy_turn(messages, turns, self.max_new_tokens)
            orders.append(order)
            verdict = verify(result.text, shown)
            answers.append(verdict.answer)
            if verdict.correct:
                return Episode(messages=messages, turns=turns, finish="solved",
                               meta={"answers": answers, "solved_at": t, **self._orders(task, orders)})
        return Episode(messages=messages, turns=turns, finish="turn_limit",
                       meta={"answers": answers, "solved_at": None, **self._orders(task, orders)})

    @staticmethod
    def _orders(task: Task, orders: list[list[int]]) -> dict[str, Any]:
        """Each turn's option order (relative to the task as given), where the retries re-ordered them."""
        return {"option_orders": orders} if "options_seed" in task.meta and task.choices else {}

    metric_descriptions = {"multi": (True, "solved by turn k (004 eq. 21)"),
                           "turns_used": (False, "assistant turns in the conversation (L)"),
                           "distinct_answers": (False, "distinct answers stated (E)")}

    def metrics(self, trajectory: Trajectory, task: Task) -> dict[str, float]:
        """multi@k (004 eq. 21): solved within k turns, for k = 1..T; the turns used; the distinct answers."""
        verdicts = turn_verdicts(trajectory, task)
        first = solved_at(verdicts)
        out = {f"multi@{k}": float(first is not None and first <= k) for k in range(1, self.turns + 1)}
        out["turns_used"] = float(len(verdicts))
        out["distinct_answers"] = float(distinct_answers([v.answer for v in verdicts], task))
        return out
