"""A clarifying-question task whose answer must be earned (000 Sec. 2 and App. F, in STaR-GATE's setting of a
user who holds information the assistant needs).

The user brings a real multiple-choice question (SciQ, ARC, ...) from a worksheet on which their teacher crossed
out the wrong options. On a share of the items (``informed_share``, drawn per question from its id) the user says
in the opening which options were crossed out; on the rest they only say that they have the worksheet. The
assistant may ask one question before it answers:

- a question about the missing information (it mentions the teacher, the worksheet, crossing or marking out,
  ruling out, eliminating, excluding, or wrong options) gets the crossed-out options' texts,
  'My teacher crossed out "wood", "glass" and "stone". What is your final answer?';
- any other question ("Hmm?", "Can you help?", "Which option is correct?") gets a non-answer;
- a first turn that states an answer and asks nothing ends the conversation; one that does neither is asked for
  the final answer.

The reply never contains the answer's letter or text: it names the other options by their texts, whose letters
the assistant must find in the order this conversation shows (options are shuffled per conversation), and keeps
the one left (``names_by: letter`` names them by those letters instead, an easier variant).
(Where a wrong option's text contains the answer's text as a word, e.g. "oil/gas" beside "gas", that option is
not named, so the reply leaves two candidates.) Asking has a declared cost: the ``earned`` reward component is
accuracy x (1 - ``ask_cost``) after a question, accuracy otherwise, so the policy to learn is to ask exactly when
the opening lacks the crossed-out options, and to use the reply. Degenerate policies are measured against it in
tests/test_worksheet_env.py: a constant letter earns 1/k, generic questions reveal nothing, copying the reply
scores nothing.
"""

from __future__ import annotations

import re
from typing import Any

from turnrl.envs.base import AskThenAnswer, Prefix
from turnrl.envs.clarify import own_questions
from turnrl.envs.reasoning import letters_phrase, question_block
from turnrl.generation import derive_seed
from turnrl.records import Task, TurnInfo, Trajectory, shown_task
from turnrl.rewards.answers import extract_choice
from turnrl.rewards.verdicts import verify

ABOUT_THE_WORKSHEET = re.compile(
    r"\b(?:cross\w*|teacher\w*|worksheet\w*|mark\w*|rul\w*\s+out|eliminat\w*|exclud\w*|wrong|incorrect|"
    r"strike|struck|strik\w*)\b", re.IGNORECASE)
"""What a question about the missing information mentions (the user's situation, not the answer)."""

NON_ANSWER = "I'm not sure what you mean. What is your final answer?"
ASK_FOR_ANSWER = "Please give your final answer now."


def system_prompt(letters: list[str]) -> str:
    return ("You are a helpful assistant. If you need information that only the user has, ask the user one short "
            "question before you answer; each question costs the user time, so ask only when you need to. State "
            f"your final answer in the format: 'The answer is X' where X is {letters_phrase(letters)}.")


def is_informed(task: Task, share: float) -> bool:
    """Whether the opening of ``task`` already names the crossed-out options: a draw from the question's id, so it
    is the same for every sample, seed and option order of the question."""
    return derive_seed("worksheet-informed", task.id) % 1_000_000 < share * 1_000_000


def crossed_out(task: Task) -> list[str]:
    """The texts of the wrong options the teacher crossed out, in the order shown; an option whose text contains
    the answer's text as a word is left out, so that no reply contains the answer."""
    gold = task.choices[task.letters.index(task.answer)]
    contains_gold = re.compile(r"(?<!\w)" + re.escape(gold.lower()) + r"(?!\w)")
    return [c for letter, c in zip(task.letters, task.choices)
            if letter != task.answer and not contains_gold.search(c.lower())]


def spoken_list(items: list[str]) -> str:
    """"a, b and c"."""
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else items[0]


def named(task: Task, by: str) -> str:
    """The crossed-out options as the user names them: by their texts ("wood", "glass" and "stone"), or by the
    letters this conversation shows them under (A, C and D)."""
    if by == "letter":
        return spoken_list([task.letters[task.choices.index(c)] for c in crossed_out(task)])
    return spoken_list([f'"{c}"' for c in crossed_out(task)])


def first_turn(task: Task, informed: bool, by: str = "text") -> str:
    told = (f"My teacher crossed out the wrong options on my worksheet: {named(task, by)}."
            if informed else "My teacher crossed out the wrong options on my worksheet, which I have here.")
    return f"{question_block(task)}\n\n{told} Which option is the answer?"


def reveal(task: Task, informed: bool, by: str = "text") -> str:
    said = "As I said, my teacher" if informed else "My teacher"
    return f"{said} crossed out {named(task, by)}. What is your final answer?"


class WorksheetEnv(AskThenAnswer):
    name = "worksheet"

    def __init__(self, max_new_tokens: int = 48, final_max_new_tokens: int | None = None,
                 informed_share: float = 0.4, ask_cost: float = 0.2, names_by: str = "text"):
        if not 0.0 <= informed_share <= 1.0 or not 0.0 <= ask_cost <= 1.0:
            raise ValueError(f"informed_share ({informed_share}) and ask_cost ({ask_cost}) must lie in [0, 1]")
        if names_by not in ("text", "letter"):
            raise ValueError(f"names_by: {names_by!r}; expected text or letter")
        self.names_by = names_by
        self.max_new_tokens = max_new_tokens
        self.final_max_new_tokens = final_max_new_tokens or max_new_tokens
        self.informed_share = informed_share
        self.ask_cost = ask_cost

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "turns": self.turns, "max_new_tokens": self.max_new_tokens,
                "final_max_new_tokens": self.final_max_new_tokens, "informed_share": self.informed_share,
                "ask_cost": self.ask_cost, "names_by": self.names_by, "shuffle_options": self.shuffle_options}

    def opening(self, task: Task) -> list[dict[str, str]]:
        if not task.choices or task.answer not in task.letters:
            raise ValueError(f"task {task.id}: the worksheet environment needs a multiple-choice task")
        return [{"role": "system", "content": system_prompt(task.letters)},
                {"role": "user", "content": first_turn(task, is_informed(task, self.informed_share), self.names_by)}]

    EXPLORATORY_QUESTION = "Which options did your teacher cross out?"

    def exploratory_opening(self, task: Task, draw: int) -> Prefix:
        """``rollout.explore``: a scripted question about the worksheet as the first turn, so that the log holds
        conversations in which the policy's own final turn uses the reply. The trainers never train on it
        (``meta.scripted_turns``)."""
        return Prefix(messages=[*self.opening(task), {"role": "assistant", "content": self.EXPLORATORY_QUESTION}],
                      turns=[TurnInfo(tokens=0, truncated=False)])

    def user_reply(self, task: Task, first: str, prompt: str) -> str | None:
        """The scripted user's reply to the first assistant turn; None ends the conversation."""
        questions = own_questions(first, prompt)
        if questions:
            if any(ABOUT_THE_WORKSHEET.search(q) for q in questions):
                return reveal(task, is_informed(task, self.informed_share), self.names_by)
            return NON_ANSWER
        if extract_choice(first, task.letters, choices=task.choices).status != "none":
            return None
        return ASK_FOR_ANSWER

    metric_descriptions = {
        "asked": (True, "the first turn asks the user a question of its own (each question costs ask_cost)"),
        "revealed": (True, "the question was about the worksheet, so the user named the crossed-out options"),
        "asked_when_needed": (True, "asked, among items whose opening does not name the crossed-out options"),
        "asked_when_told": (True, "asked, among items whose opening already names them (a wasted question)"),
        "accuracy_when_needed": (True, "accuracy among items whose opening does not name the crossed-out options"),
        "accuracy_when_told": (True, "accuracy among items whose opening names them"),
        "earned": (True, "accuracy x (1 - ask_cost) after a question, accuracy otherwise: the task's success"),
    }

    def metrics(self, trajectory: Trajectory, task: Task) -> dict[str, float]:
        idx = trajectory.assistant_indices()
        asked = asked_question(trajectory)
        revealed = asked and len(trajectory.messages) > idx[0] + 1 and \
            trajectory.messages[idx[0] + 1]["content"] not in (NON_ANSWER, ASK_FOR_ANSWER)
        correct = answered_right(trajectory, task)
        informed = is_informed(task, trajectory.env.get("informed_share", self.informed_share))
        where = "told" if informed else "needed"
        return {"asked": float(asked), "revealed": float(revealed), f"asked_when_{where}": float(asked),
                f"accuracy_when_{where}": correct, "earned": earned(correct, asked, trajectory.env)}


def asked_question(trajectory: Trajectory) -> bool:
    """The first assistant turn asks the user a question of its own."""
    idx = trajectory.assistant_indices()
    return bool(idx) and bool(own_questions(trajectory.messages[idx[0]]["content"],
                                            trajectory.messages[idx[0] - 1]["content"]))


def answered_right(trajectory: Trajectory, task: Task) -> float:
    """The final answer is right, read in the option order the final turn was shown."""
    return float(verify(trajectory.final_assistant(), shown_task(task, trajectory)).correct)


def reward_components(trajectory: Trajectory, task: Task) -> dict[str, float]:
    """``earned``, the reward component this environment adds (``reward.weights: {earned: 1.0}``)."""
    return {"earned": earned(answered_right(trajectory, task), asked_question(trajectory), trajectory.env)}


def earned(correct: float, asked: bool, env_settings: dict[str, Any]) -> float:
    """The task's success: a right answer, discounted by the declared cost of the question asked for it."""
    return correct * (1.0 - float(env_settings.get("ask_cost", 0.0))) if asked else correct
