"""The verifier of 004 Sec. 2: what one assistant turn answers and whether it is right, for choice and math tasks.

The feedback environment uses it to decide when to stop and what to say; DRIFT's return (:mod:`.drift_return`)
and the multi@k metrics read the same verdicts, so the environment and the reward cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnrl.records import Task, Trajectory, shown_task
from turnrl.rewards.answers import extract_choice
from turnrl.rewards.math_answers import extract_math_answer, math_equal


@dataclass(frozen=True)
class Verdict:
    answer: str | None
    """The answer the turn states (an option letter or a math expression), None when it states none."""
    correct: bool


def verify(text: str, task: Task) -> Verdict:
    """The verifier V(y_t) of 004 Sec. 2: read one assistant turn's answer and check it against the gold one."""
    if task.choices:
        letter = extract_choice(text, task.letters, "the answer is", task.choices).letter
        return Verdict(letter, letter is not None and letter == task.answer)
    answer = extract_math_answer(text)
    return Verdict(answer, answer is not None and math_equal(answer, task.answer))


def same_answer(a: str, b: str, task: Task) -> bool:
    """Two stated answers are the same: equal letters, or equivalent math answers ("0.5" and "\\frac{1}{2}")."""
    if task.choices:
        return a == b
    return a.strip() == b.strip() or math_equal(a, b)


def distinct_answers(answers: list[str | None], task: Task) -> int:
    """E(tau) of 004 eq. 12: how many different answers the turns state (turns stating none add nothing)."""
    seen: list[str] = []
    for a in answers:
        if a is not None and not any(same_answer(a, s, task) for s in seen):
            seen.append(a)
    return len(seen)


def turn_verdicts(trajectory: Trajectory, task: Task) -> list[Verdict]:
    """Each assistant turn's verdict, read in the option order that turn was shown (a retry may show a new one);
    the answers are given in ``task``'s own letters, so answers of differently ordered turns compare."""
    out = []
    for k, i in enumerate(trajectory.assistant_indices()):
        v = verify(trajectory.messages[i]["content"], shown_task(task, trajectory, k))
        out.append(Verdict(task.original_letter(v.answer, trajectory.order_at(k)) if task.choices else v.answer,
                           v.correct))
    return out


def solved_at(verdicts: list[Verdict]) -> int | None:
    """The 1-based turn of the first correct answer, or None."""
    return next((t for t, v in enumerate(verdicts, start=1) if v.correct), None)
