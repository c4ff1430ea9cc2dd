"""DRIFT's trajectory return (004 eq. 12), a reward component of feedback-environment conversations.

004 (paper), for a conversation of L turns that states E distinct answers:

    R(tau) = 1[y_L correct] * gamma^(L-1) - lambda * (1 - E(tau) / L),      gamma = 0.9, lambda = 0.5 (App. D.2)

The first term is the discounted success of eq. 2 (under stop-on-success only the last turn can be correct); the
second penalises repeating an answer after being told it is wrong (App. D.8). For T = 5, R lies in [-0.5, 1]:
1 for a first-turn success, 0.9^(L-1) for a later one with all answers different, -0.4 for five identical wrong
answers and -0.5 for five turns without any answer (a turn that states no answer counts in L but not in E, so not
answering is penalised like repeating; the paper does not say how it counts unanswered turns).

004's released code (``weight_sft.py``) differs in two ways, both available here:

    R_code = sum_t gamma^(t-1) r_t - format_penalty * #(turns without an answer) - lambda * (1 - E / A)

with A the number of turns that state an answer (``denominator: answers``; no penalty term when A = 0) and
``format_penalty`` = 0.1 (its turns "without an answer" are turns that miss its <think>/<answer> format).
The defaults are the paper's: ``denominator: turns``, ``format_penalty: 0``.

The return is not a reward in [0, 1], so it is kept out of the scalar ``reward``; DRIFT's weights read the
``drift_return`` component directly (:mod:`turnrl.algorithms.drift`).
"""

from __future__ import annotations

from dataclasses import dataclass

from turnrl.errors import ConfigError, InputError
from turnrl.records import Task, Trajectory
from turnrl.rewards.verdicts import distinct_answers, turn_verdicts


@dataclass
class DriftReturnConfig:
    """The terms of DRIFT's return (004 eq. 12); computed by ``turnrl score`` for feedback conversations."""

    gamma: float = 0.9
    """Discount of a later success: a success at turn L earns gamma^(L-1) (004: 0.9)."""
    lam: float = 0.5
    """lambda, the weight of the repetition penalty lambda * (1 - E/L) (004: 0.5; 0 removes it, 004 Table 6)."""
    denominator: str = "turns"
    """turns: E / L, the paper's eq. 12; answers: E / (turns that state an answer), the released code's."""
    format_penalty: float = 0.0
    """Subtracted once per turn that states no answer (the released code: 0.1; the paper: 0)."""


def check_config(cfg: DriftReturnConfig) -> None:
    if cfg.denominator not in ("turns", "answers"):
        raise ConfigError(f"reward.drift.denominator: {cfg.denominator!r}; expected turns or answers")
    if not 0 < cfg.gamma <= 1:
        raise ConfigError(f"reward.drift.gamma: {cfg.gamma}; expected a discount in (0, 1]")
    if cfg.lam < 0 or cfg.format_penalty < 0:
        raise ConfigError("reward.drift: lam and format_penalty must be >= 0")


def shaped_return(solved: bool, turns_used: int, distinct: int, answered: int, cfg: DriftReturnConfig) -> float:
    """R(tau) from the conversation's outcome: solved at its last turn L = ``turns_used``, stating ``distinct``
    different answers in ``answered`` of its turns (see the module docstring)."""
    if cfg.denominator == "turns":
        penalty = cfg.lam * (1 - distinct / turns_used)
    else:
        penalty = cfg.lam * (1 - distinct / answered) if answered else 0.0
    success = cfg.gamma ** (turns_used - 1) if solved else 0.0
    return success - penalty - cfg.format_penalty * (turns_used - answered)


def drift_components(trajectory: Trajectory, task: Task, cfg: DriftReturnConfig) -> dict[str, float]:
    """The return and its ingredients, read from the conversation with the feedback environment's verifier."""
    verdicts = turn_verdicts(trajectory, task)
    if not verdicts:
        raise InputError(f"trajectory {trajectory.id}: no assistant turn to compute DRIFT's return from")
    answers = [v.answer for v in verdicts]
    solved = verdicts[-1].correct
    distinct = distinct_answers(answers, task)
    answered = sum(a is not None for a in answers)
    return {"drift_return": shaped_return(solved, len(verdicts), distinct, answered, cfg),
            "turns_used": float(len(verdicts)), "distinct_answers": float(distinct)}
