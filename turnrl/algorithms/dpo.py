"""DPO (000 Sec. 4): the final winning and losing responses of each group.

chosen = the final assistant message of the group's best trajectory, rejected = that of its worst (pairing
best-vs-worst by default, ``algo.preference.pairing``), each after its own conversation up to it
(``algo.dpo.context: history``, the default: a clarifying question and its reply stay in the context), or answered
directly to the original question, the middle turns dropped (``question``, 000's literal form). Only the final
message carries the loss, DPO's (:func:`turnrl.train.preference.dpo_step_loss`, 003 eq. 12 with one turn). Groups
whose rewards are all equal are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnrl.algorithms.preference import (Completion, PairingStats, PreferencePair, pairs_of_groups, prompt_length,
                                         reward_of, turn_truncated)
from turnrl.algorithms.registry import register_algorithm
from turnrl.errors import ConfigError
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class DPOParams:
    """dpo: what the final turns are compared after."""

    context: str = "history"
    """history: each side's own conversation up to its final turn (a clarifying question and its reply included).
    question: the system and first user messages only, the final turn answered directly to the original question
    (000 Sec. 4's literal form)."""


def final_answer_only(traj: Trajectory) -> Completion:
    """The original question answered directly by the trajectory's final assistant message (DPO)."""
    start = prompt_length(traj.messages)
    final = traj.messages[traj.assistant_indices()[-1]]
    return Completion(messages=traj.messages[:start] + [final], train_turns=[0],
                      truncated=[turn_truncated(traj)[-1]], source=traj.id, reward=reward_of(traj))


def final_turn_in_context(traj: Trajectory) -> Completion:
    """The trajectory up to its final assistant message, only that message trained (DPO, history context)."""
    assistant = traj.assistant_indices()
    return Completion(messages=traj.messages[: assistant[-1] + 1], train_turns=[len(assistant) - 1],
                      truncated=turn_truncated(traj),
                      source=traj.id, reward=reward_of(traj))


DPO_CONTEXTS = {"history": final_turn_in_context, "question": final_answer_only}




@register_algorithm("dpo", family="preference", display="DPO", paper="000 Sec. 4", baseline=True,
                    sections=("preference", "dpo"))
def dpo_pairs(trajectories: list[Trajectory], cfg: AlgoConfig, branches, stats: PairingStats) -> list[PreferencePair]:
    """The final answers of the group's best and worst trajectories, after their own histories or to the
    original question (``algo.dpo.context``)."""
    context = cfg.dpo.context
    if context not in DPO_CONTEXTS:
        raise ConfigError(f"algo.dpo.context: {context!r}; expected {' or '.join(DPO_CONTEXTS)}")
    return pairs_of_groups(trajectories, cfg, stats, DPO_CONTEXTS[context])
