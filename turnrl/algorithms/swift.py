"""Swift (000 eq. 9): group-standardised rewards as weights.

    w = max(floor, (r - mean_x) / std_x)

over the m trajectories of each group x, std with 1/(m - 1); floor 0 by default (``algo.swift.floor``). A group
whose rewards are all equal carries no signal: its weights are 0 (docs/design.md section 8).

swift-literal is 000 eq. 9 as written, negative weights kept. Under the token-sum objective pushing down a negative
trajectory's tokens never saturates and training diverges (docs/results-withdrawn.md section 10): the floor is what
makes Swift's objective a weighted likelihood again. The objective is the weighted trainer's
(:mod:`turnrl.algorithms.weighted`, 000 eq. 5/7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from turnrl.algorithms.registry import register_algorithm
from turnrl.algorithms.weighted import groups_of, rewards_of
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class SwiftParams:
    """swift: the floor of its weights."""

    floor: float = 0.0
    """Weights below this are raised to it (000's Swift floors at 0; e.g. -1.0 keeps some of the push-down)."""


def group_standardised(trajectories: list[Trajectory], diag: dict) -> list[float]:
    """000 eq. 9: (r - mean_x) / std_x over each group's trajectories, std with 1/(m - 1); 0 for every trajectory of a
    group whose rewards are all equal (no signal)."""
    rewards = dict(zip((t.id for t in trajectories), rewards_of(trajectories)))
    weights: dict[str, float] = {}
    flat = 0
    for group in groups_of(trajectories).values():
        r = np.array([rewards[t.id] for t in group])
        std = float(r.std(ddof=1)) if len(r) > 1 else 0.0
        if std == 0.0 or not math.isfinite(std):
            flat += 1
            weights.update({t.id: 0.0 for t in group})
        else:
            weights.update({t.id: float((rewards[t.id] - r.mean()) / std) for t in group})
    diag["zero_signal_groups"] = flat
    return [weights[t.id] for t in trajectories]


@register_algorithm("swift", family="weighted", display="Swift", paper="000 eq. 9", sections=("swift",))
def swift_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    """max(algo.swift.floor, eq. 9's weight)."""
    floor = cfg.swift.floor
    weights = group_standardised(trajectories, diag)
    diag["floored"] = sum(w < floor for w in weights)
    return [max(w, floor) for w in weights]


@register_algorithm("swift-literal", family="weighted", display="Swift (000 as written)", paper="000 eq. 9")
def swift_literal_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    """000 eq. 9 as written: negative weights kept."""
    return group_standardised(trajectories, diag)
