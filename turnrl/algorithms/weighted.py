"""The weighted fine-tuning family: each algorithm turns the scored log into one weight per trajectory.

All of them optimise the same objective, 000 eq. (5)/(7): for logged trajectories tau = (a_1, y_1, ..., a_n, y_n)
of context x with weight w,

    J(theta) = E_{(x, tau) ~ log} [ w(x, tau) * sum_{t=1..n} log pi(a_t | x, tau_{t-1}; theta) ],

i.e. SFT on every assistant turn (``algo.trained_turns: all``; DRIFT's ``final``: the last one only), each
trajectory's turns scaled by its weight; the loss is :func:`turnrl.train.weighted.weighted_step_loss`. They differ
only in w, each in its own module: :mod:`.sft` (sft, sft-final), :mod:`.star_gate`, :mod:`.refit`, :mod:`.swift`
(swift, swift-literal), :mod:`.drift`.

One safeguard applies to any of them (docs/design.md section 8): ``algo.kl_coef`` anchors the policy to the logging
policy: on data sampled from pi_0, E_{pi_0}[log pi_0 - log pi] = KL(pi_0 || pi), whose gradient is
-kl_coef * grad log pi on every logged action, i.e. kl_coef is added to every trajectory's weight.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from turnrl.algorithms.registry import get_algorithm
from turnrl.errors import ConfigError
from turnrl.records import Trajectory
from turnrl.stats import effective_sample_size

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class WeightedExample:
    trajectory: Trajectory
    weight: float
    turns: str = "all"
    """Which assistant turns carry the loss: ``all`` (000) or ``final`` (DRIFT)."""


def groups_of(trajectories: list[Trajectory]) -> dict[str, list[Trajectory]]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[t.group_id].append(t)
    return groups


def rewards_of(trajectories: list[Trajectory]) -> list[float]:
    missing = [t.id for t in trajectories if t.reward is None]
    if missing:
        raise ConfigError(f"trajectory {missing[0]} has no reward; run `turnrl score` before training")
    return [float(t.reward) for t in trajectories]  # type: ignore[arg-type]


def build_weighted_examples(trajectories: list[Trajectory], cfg: AlgoConfig) -> tuple[list[WeightedExample], dict]:
    """Weights for every logged trajectory, and diagnostics about them (for the report)."""
    algorithm = get_algorithm(cfg.name, family="weighted")
    diag: dict[str, Any] = {"algorithm": cfg.name, "trajectories": len(trajectories),
                            "groups": len(groups_of(trajectories))}
    weights = algorithm.build(trajectories, cfg, diag)
    if cfg.kl_coef:
        weights = [w + cfg.kl_coef for w in weights]
    turns = cfg.trained_turns or algorithm.turns
    if turns not in ("all", "final"):
        raise ConfigError(f"algo.trained_turns: {cfg.trained_turns!r}; expected all or final")
    diag.update({
        "nonzero": int(sum(w != 0 for w in weights)),
        "positive": int(sum(w > 0 for w in weights)),
        "negative": int(sum(w < 0 for w in weights)),
        "weight_mean": float(np.mean(weights)) if weights else 0.0,
        "weight_min": float(min(weights, default=0.0)),
        "weight_max": float(max(weights, default=0.0)),
        "ess": effective_sample_size(weights),
        "turns": turns,
        "weights": [round(w, 6) for w in weights],
    })
    return [WeightedExample(t, w, turns) for t, w in zip(trajectories, weights)], diag
