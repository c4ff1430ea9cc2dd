"""Refit (000 eq. 5): reward-weighted fine-tuning.

    w = r(x, tau) >= 0

000 Lemma 1 needs r >= 0, so negative rewards are refused unless ``algo.refit.shift_negative`` shifts every reward
by the minimum. The objective is the weighted trainer's (:mod:`turnrl.algorithms.weighted`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnrl.algorithms.registry import register_algorithm
from turnrl.algorithms.weighted import rewards_of
from turnrl.errors import ConfigError
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class RefitParams:
    """refit: what to do with negative rewards."""

    shift_negative: bool = False
    """Shift rewards by their minimum instead of refusing negative ones."""


@register_algorithm("refit", family="weighted", display="Refit", paper="000 eq. 5", sections=("refit",))
def refit_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    rewards = rewards_of(trajectories)
    low = min(rewards)
    if low < 0:
        if not cfg.refit.shift_negative:
            worst = trajectories[rewards.index(low)].id
            raise ConfigError(
                f"refit needs rewards >= 0 (000 Lemma 1); trajectory {worst} has reward {low:.4g}. Use rewards in "
                "[0, 1], or set algo.refit.shift_negative to shift all rewards by the minimum"
            )
        diag["shift"] = -low
        return [r - low for r in rewards]
    return rewards
