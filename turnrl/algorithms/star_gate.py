"""STaR-GATE (000 Sec. 4, "reward thresholding"): imitate the best trajectories of each group.

    w = 1 for the top_k trajectories of each group by reward, if their reward is above min_reward; else 0.

The objective is the weighted trainer's (:mod:`turnrl.algorithms.weighted`, 000 eq. 5/7): SFT on the selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnrl.algorithms.registry import register_algorithm
from turnrl.algorithms.weighted import groups_of
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class StarGateParams:
    """star-gate and star-gate-d: which trajectories of each group are imitated."""

    top_k: int = 1
    """Trajectories kept per group."""
    min_reward: float = 0.0
    """Keep only trajectories with reward above this (default 0: a group whose best trajectory earned nothing has
    nothing to imitate)."""


@register_algorithm("star-gate", family="weighted", display="STaR-GATE", paper="000 Sec. 4", baseline=True,
                    sections=("star_gate",))
def star_gate_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    params = cfg.star_gate
    weights = {t.id: 0.0 for t in trajectories}
    skipped = 0
    for group in groups_of(trajectories).values():
        ranked = sorted(group, key=lambda t: (-float(t.reward), t.sample))  # ties: the earlier sample
        kept = [t for t in ranked[: params.top_k] if float(t.reward) > params.min_reward]
        skipped += not kept
        for t in kept:
            weights[t.id] = 1.0
    diag["groups_without_selection"] = skipped
    return [weights[t.id] for t in trajectories]
