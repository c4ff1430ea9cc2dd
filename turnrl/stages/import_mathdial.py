"""MathDial's tutoring dialogues as conversations to import (``turnrl import --format mathdial``): the teacher is the
assistant, the reward the teacher's rating of the outcome (:func:`mathdial_row`).
"""

from __future__ import annotations

import re
from typing import Any

from turnrl.errors import InputError
from turnrl.stages.import_sources import Row


MATHDIAL_SEPARATOR = "|EOM|"
MATHDIAL_OUTCOMES = {"Yes": 1.0, "Yes, but I had to reveal the answer": 0.5, "No": 0.0}
"""The teacher's answer to "did the student get to the correct solution?" (MathDial's ``self-correctness``) ->
reward: solved, solved only once the teacher told the answer, not solved."""
MATHDIAL_REWARD = "self_correctness"
"""The reward component a MathDial import writes."""
MATHDIAL_FIELDS = ("qid", "question", "student_incorrect_solution", "conversation", "self-correctness")
MATHDIAL_SYSTEM = (
    "You are a math teacher tutoring a student one to one. The student tried to solve the problem below and made a "
    "mistake. Help the student find and fix the mistake: ask questions that make them think, and do not just tell "
    "them the answer.\n\nProblem: {question}")
MATHDIAL_OPENING = "Here is my solution:\n{solution}"
_MOVE = re.compile(r"^\(([A-Za-z_ -]+)\)\s*")


def mathdial_turns(row: Row) -> list[tuple[str, str, str]]:
    """(speaker, move, text) of each turn of a MathDial ``conversation``, the labels stripped."""
    text = row.data["conversation"]
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{row.where}: field 'conversation' is {text!r}; expected the dialogue as text, its turns "
                         f"separated by {MATHDIAL_SEPARATOR}")
    profile = row.data.get("student_profile")
    name = profile.split()[0] if isinstance(profile, str) and profile.split() else None
    turns = []
    for j, raw in enumerate(text.split(MATHDIAL_SEPARATOR)):
        label, sep, body = raw.partition(":")
        label = label.strip()
        if not sep or label not in ("Teacher", "Student", name):
            raise InputError(f"{row.where}: field 'conversation' turn {j + 1} starts {raw.strip()[:40]!r}; expected "
                             "'Teacher:', 'Student:' or the student's name from student_profile, then a colon")
        move = ""
        if label == "Teacher" and (m := _MOVE.match(body.strip())):
            move, body = m.group(1), body.strip()[m.end():]
        turns.append(("teacher" if label == "Teacher" else "student", move, body.strip()))
    return turns


def mathdial_row(row: Row, skip_unrated: bool = False) -> Row | None:
    """One MathDial row as a row of the ``messages`` format, or None for an unrated row that is skipped.

    - system: tutoring instructions with the problem (``question``); the student's incorrect solution is the first
      user message (MathDial's first recorded turn is the teacher's, and the prompt x is the system and user
      messages before the first assistant message);
    - then each ``Teacher:`` turn of ``conversation`` (split at ``|EOM|``) is an assistant message, each
      ``Student:`` (or student's name) turn a user message, their labels stripped; the teacher's move label
      (``(focus)``, ``(probing)``, ``(telling)``, ``(generic)``) goes to ``meta.teacher_moves``, one list per
      assistant message. Turns with no text after their labels are left out (their move too), and consecutive
      turns of one speaker are joined into one message with a blank line between them;
    - ``self_correctness``, the reward: :data:`MATHDIAL_OUTCOMES` of ``self-correctness``.

    The other fields but ``conversation`` stay in the row, so they end up in ``meta``.
    """
    for name in MATHDIAL_FIELDS:
        if name not in row.data:
            raise InputError(f"{row.where}: field {name!r} is missing; expected a MathDial row "
                             f"({', '.join(MATHDIAL_FIELDS)})")
    rating = row.data["self-correctness"]
    if rating is None or (isinstance(rating, str) and not rating.strip()):
        if skip_unrated:
            return None
        raise InputError(f"{row.where}: field 'self-correctness' is empty, so the conversation has no reward (pass "
                         "--skip_unrated true to leave such rows out)")
    if not isinstance(rating, str) or rating.strip() not in MATHDIAL_OUTCOMES:
        raise InputError(f"{row.where}: field 'self-correctness' is {rating!r}; expected one of "
                         f"{', '.join(repr(k) for k in MATHDIAL_OUTCOMES)}")
    for name in ("question", "student_incorrect_solution"):
        if not isinstance(row.data[name], str) or not row.data[name].strip():
            raise InputError(f"{row.where}: field {name!r} is {row.data[name]!r}; expected text")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": MATHDIAL_SYSTEM.format(question=row.data["question"].strip())},
        {"role": "user", "content": MATHDIAL_OPENING.format(solution=row.data["student_incorrect_solution"].strip())}]
    moves: list[list[str]] = []
    for speaker, move, text in mathdial_turns(row):
        if not text:
            continue
        role = "assistant" if speaker == "teacher" else "user"
        if messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + text
        else:
            messages.append({"role": role, "content": text})
            if role == "assistant":
                moves.append([])
        if role == "assistant" and move:
            moves[-1].append(move)
    if not moves:
        raise InputError(f"{row.where}: field 'conversation' has no teacher turn with text; there is no action to "
                         "learn from")
    data = {k: v for k, v in row.data.items() if k != "conversation"}
    data.update({"messages": messages, MATHDIAL_REWARD: MATHDIAL_OUTCOMES[rating.strip()], "teacher_moves": moves})
    return Row(row.number, row.where, data)
