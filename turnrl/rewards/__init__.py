"""Reward components of a finished conversation, and their combination into the scalar reward (docs/design.md
section 6).

Components (each a number in [0, 1] unless noted):

- ``accuracy``: the final answer is right (multiple choice: :mod:`turnrl.rewards.answers`; open answers: the
  math checker of :mod:`turnrl.rewards.math_answers`);
- ``format``: the final turn states its answer first, in the canonical form;
- ``thinking``: thinking mode's tags are well formed in every assistant turn, the final answer outside them;
- ``turn_accuracy``: the share of assistant turns that state the right answer (0, 1/n, ..., 1): graded credit for
  committing to the right answer early and keeping it, as 000's judge asks "is the assistant moving toward the
  correct answer?";
- ``gold_likelihood``: STaR-GATE's reward -- how likely the reference model is to answer with the gold option
  after the conversation that precedes the final answer (:mod:`turnrl.rewards.likelihood`);
- ``judge_*``: the LLM judge's rubric scores / 10 (000 App. E.3; :mod:`turnrl.judge`).

``reward`` is a weighted sum of components, weights from the config (non-negative, summing to 1, so the reward
is in [0, 1]).
"""

from __future__ import annotations

from typing import Any

from turnrl.records import Task, Trajectory, shown_task
from turnrl.rewards.answers import extract_choice, has_thinking_tags, thinking_compliant

CHEAP = ("accuracy", "format", "thinking", "turn_accuracy")


def canonical_phrase(env_settings: dict[str, Any]) -> str:
    """How the conversation's environment asked for the answer: 000's reasoning protocol "The answer is X", its
    clarify protocol "Answer is X" (each environment declares it)."""
    from turnrl.envs import ENVIRONMENTS

    spec = ENVIRONMENTS.get(env_settings.get("name", ""))
    return spec.answer_phrase if spec else "the answer is"


def final_answer(traj: Trajectory, task: Task) -> dict[str, Any]:
    """Read the final answer and say whether it is right; the fields every evaluation reports. A letter is the
    one the policy stated, in the option order its final turn was shown."""
    text = traj.final_assistant()
    if task.choices:
        task = shown_task(task, traj)
        parsed = extract_choice(text, task.letters, canonical_phrase(traj.env), task.choices)
        return {"answer": parsed.letter, "status": parsed.status, "correct": parsed.letter == task.answer,
                "well_formatted": parsed.well_formatted}
    from turnrl.rewards.math_answers import extract_math_answer, math_equal

    # 003 reads the text after the last assistant marker: the final turn and, where the conversation stopped at the
    # tool-call limit, the observation that follows it, so a final program's printed result is read (the ```output
    # step of the extraction) when the turn states no answer itself.
    after = traj.messages[traj.assistant_indices()[-1] + 1:] if traj.assistant_indices() else []
    answer = extract_math_answer("\n".join([text] + [m["content"] for m in after if m["role"] == "tool"]))
    return {"answer": answer, "status": "ok" if answer is not None else "none",
            "correct": answer is not None and math_equal(answer, task.answer), "well_formatted": answer is not None}


def answers_per_turn(traj: Trajectory, task: Task) -> list[str | None]:
    """The answer each assistant turn states; multiple choice: in ``task``'s own letters (each turn read in the
    order it was shown), so that answers of differently ordered turns compare."""
    if not task.choices:
        from turnrl.rewards.math_answers import extract_math_answer

        return [extract_math_answer(traj.messages[i]["content"]) for i in traj.assistant_indices()]
    canonical = canonical_phrase(traj.env)
    out = []
    for k, i in enumerate(traj.assistant_indices()):
        shown = shown_task(task, traj, k)
        letter = extract_choice(traj.messages[i]["content"], shown.letters, canonical, shown.choices).letter
        out.append(task.original_letter(letter, traj.order_at(k)))
    return out


def answer_changed(traj: Trajectory, task: Task) -> bool:
    """The first answer the assistant stated differs from its final one."""
    stated = [a for a in answers_per_turn(traj, task) if a is not None]
    return len(stated) >= 2 and stated[0] != stated[-1]


def cheap_components(traj: Trajectory, task: Task) -> dict[str, float]:
    fa = final_answer(traj, task)
    contents = [traj.messages[i]["content"] for i in traj.assistant_indices()]
    stated = answers_per_turn(traj, task)
    if task.choices:
        right = [a == task.answer for a in stated]
    else:
        from turnrl.rewards.math_answers import math_equal

        right = [a is not None and math_equal(a, task.answer) for a in stated]
    return {
        "accuracy": float(fa["correct"]),
        "turn_accuracy": sum(right) / len(right) if right else 0.0,
        "format": float(fa["well_formatted"]),
        "thinking": float(bool(contents) and all(thinking_compliant(c, final=(k == len(contents) - 1))
                                                 for k, c in enumerate(contents))),
    }


def uses_thinking_tags(traj: Trajectory) -> bool:
    """000's Thinking %: every assistant turn outputs <thinking> tags."""
    idx = traj.assistant_indices()
    return bool(idx) and all(has_thinking_tags(traj.messages[i]["content"]) for i in idx)


def combine(components: dict[str, float], weights: dict[str, float]) -> float:
    return float(sum(w * float(components[name]) for name, w in weights.items()))
