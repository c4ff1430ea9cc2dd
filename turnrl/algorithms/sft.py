"""SFT and SFT on the final turn: every logged trajectory imitated with weight 1.

- sft (000 Sec. 4's baseline): w = 1, every assistant turn trained.
- sft-final (004 Sec. 5, SFT-5turn): w = 1, only the last assistant turn trained (DRIFT's data without its weights).

The objective is the weighted trainer's (:mod:`turnrl.algorithms.weighted`, 000 eq. 5/7). No parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from turnrl.algorithms.registry import register_algorithm
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@register_algorithm("sft", family="weighted", display="SFT", paper="000 Sec. 4", baseline=True)
def sft_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    return [1.0] * len(trajectories)


@register_algorithm("sft-final", family="weighted", display="SFT (final turn)", paper="004 Sec. 5 (SFT-5turn)",
                    baseline=True, turns="final")
def sft_final_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    return [1.0] * len(trajectories)
