"""Weighted fine-tuning algorithms: each turns the scored log into (trajectory, weight) pairs.

All of them optimise the same objective, 000 eq. (5)/(7): for logged trajectories tau = (a_1, y_1, ..., a_n, y_n)
of context x with weight w,

    J(theta) = E_{(x, tau) ~ log} [ w(x, tau) * sum_{t=1..n} log pi(a_t | x, tau_{t-1}; theta) ],

i.e. SFT on every assistant turn, each trajectory's turns scaled by its weight. They differ only in w:

- SFT:        w = 1 for every trajectory.
- STaR-GATE:  w = 1 for the best trajectory of each group (top-k by reward, above a threshold, 0 by default),
              else 0 (000 Sec. 4, "reward thresholding").
- Refit:      w = r(x, tau) >= 0 (000 eq. 5; Lemma 1 needs r >= 0, so negative rewards are refused unless
              ``shift_negative`` shifts every reward by the minimum).
- Swift:      w = max(0, (r - mean_x) / std_x) over the m trajectories of the group, std with 1/(m - 1)
              (000 eq. 9, its negative weights floored at 0). A group whose rewards are all equal carries no
              signal: its weights are 0 (docs/design.md section 8).
- swift-literal: 000 eq. 9 as written, negative weights kept. Under the token-sum objective pushing down a
              negative trajectory's tokens never saturates and training diverges (docs/results-withdrawn.md section 10):
              the floor is what makes Swift's objective a weighted likelihood again.

Two safeguards apply to any algorithm (docs/design.md section 8, "negative weights"): ``negative_floor`` clips
weights from below, and ``kl_coef`` anchors the policy to the logging policy: on data sampled from pi_0,
E_{pi_0}[log pi_0 - log pi] = KL(pi_0 || pi), whose gradient is -kl_coef * grad log pi on every logged action,
i.e. kl_coef is added to every trajectory's weight.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turnrl.algorithms.registry import get_algorithm, register_algorithm
from turnrl.errors import ConfigError
from turnrl.records import Trajectory
from turnrl.layout import SCORED_BRANCHES
from turnrl.stats import effective_sample_size


@dataclass
class WeightedExample:
    trajectory: Trajectory
    weight: float
    turns: str = "all"
    """Which assistant turns carry the loss: ``all`` (000) or ``final`` (DRIFT)."""


@dataclass
class AlgoConfig:
    """The algorithm that turns the scored log into training examples, and its parameters."""

    name: str = "refit"
    """sft, star-gate, refit, swift, drift, sft-final (weighted fine-tuning); dpo, step-dpo, m-dpo, m-kto
    (preference learning); star-gate-d (distillation)."""
    top_k: int = 1
    """star-gate: trajectories kept per group."""
    min_reward: float = 0.0
    """star-gate: keep only trajectories with reward above this (default 0: a group whose best trajectory earned
    nothing has nothing to imitate)."""
    shift_negative: bool = False
    """refit: shift rewards by their minimum instead of refusing negative ones."""
    negative_floor: float | None = None
    """Clip weights below this value (e.g. -1.0). Default: swift floors at 0 (its own function does), the others
    have no floor."""
    kl_coef: float = 0.0
    """Anchor to the logging policy: adds kl_coef to every weight (see module docstring)."""
    turns: str = ""
    """all: every assistant turn carries the weight (000); final: only the last one (DRIFT). Empty: the
    algorithm's own (final for drift and sft-final, all for the others)."""
    drift_beta: float = 0.1
    """drift: temperature of the return-based importance weights."""
    dpo_beta: float = 0.1
    """dpo, step-dpo, m-dpo, m-kto: beta (003's eta), the strength of the implicit KL regularisation (003: 0.1)."""
    pairing: str = ""
    """dpo, m-dpo, m-kto: best-vs-worst (by reward; groups with equal rewards skipped) or correct-vs-incorrect
    (by the accuracy component; 003's random pairs). Empty: the paper's own (dpo: best-vs-worst; m-dpo, m-kto:
    correct-vs-incorrect), or best-vs-worst where the log has no accuracy component (an imported log)."""
    dpo_context: str = "history"
    """dpo: what the final turns are compared after. history: each side's own conversation up to its final turn
    (a clarifying question and its reply included). question: the system and first user messages only, the final
    turn answered directly to the original question (000 Sec. 4's literal form)."""
    pairs_per_group: int = 1
    """correct-vs-incorrect: random (correct, incorrect) pairs per group (003: 1)."""
    mask_observations: bool = True
    """m-dpo, m-kto: leave the observation tokens out of the log-probabilities (003). False gives 003's single-turn
    DPO/KTO baselines, whose log-probabilities run over everything after the prompt."""
    kto_lambda_d: float = 1.0
    """m-kto: weight of the desirable examples' loss (003: 1)."""
    kto_lambda_u: float = 1.0
    """m-kto: weight of the undesirable examples' loss (003: 1)."""
    reference: str = ""
    """Preference learning: the reference policy pi_ref (default: the policy training starts from; with a fresh
    LoRA adapter that is the base with the adapter disabled, otherwise a frozen copy)."""
    precompute_reference: bool = True
    """Preference learning: compute the reference log-probabilities in one pass before training instead of a
    reference forward pass in every step. Exact: the reference is frozen and evaluated without dropout either way."""
    branches: str = SCORED_BRANCHES
    """step-dpo: the scored branch rollouts in the run directory (`turnrl simulate --continue_from`, then
    `turnrl score`)."""
    teacher: str = ""
    """star-gate-d: the teacher (default: train/star-gate/checkpoint of the run, trained first if absent)."""
    distill_alpha: float = 0.5
    """star-gate-d: loss = alpha * NLL + (1 - alpha) * T^2 * KL(teacher_T || student_T) (000 Table 27: 0.5)."""
    distill_temperature: float = 2.0
    """star-gate-d: the softmax temperature T of the KL term (000 Table 27: 2.0)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Parameters of algorithms registered by extensions."""


def groups_of(trajectories: list[Trajectory]) -> dict[str, list[Trajectory]]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[t.group_id].append(t)
    return groups


def _rewards(trajectories: list[Trajectory]) -> list[float]:
    missing = [t.id for t in trajectories if t.reward is None]
    if missing:
        raise ConfigError(f"trajectory {missing[0]} has no reward; run `turnrl score` before training")
    return [float(t.reward) for t in trajectories]  # type: ignore[arg-type]


@register_algorithm("sft", family="weighted", display="SFT", paper="000 Sec. 4", baseline=True)
def sft_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    return [1.0] * len(trajectories)


@register_algorithm("sft-final", family="weighted", display="SFT (final turn)", paper="004 Sec. 5 (SFT-5turn)",
                    baseline=True, turns="final")
def sft_final_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    return [1.0] * len(trajectories)


@register_algorithm("star-gate", family="weighted", display="STaR-GATE", paper="000 Sec. 4", baseline=True)
def star_gate_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    weights = {t.id: 0.0 for t in trajectories}
    skipped = 0
    for group in groups_of(trajectories).values():
        ranked = sorted(group, key=lambda t: (-float(t.reward), t.sample))  # ties: the earlier sample
        kept = [t for t in ranked[: cfg.top_k] if float(t.reward) > cfg.min_reward]
        skipped += not kept
        for t in kept:
            weights[t.id] = 1.0
    diag["groups_without_selection"] = skipped
    return [weights[t.id] for t in trajectories]


@register_algorithm("refit", family="weighted", display="Refit", paper="000 eq. 5")
def refit_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    rewards = _rewards(trajectories)
    low = min(rewards)
    if low < 0:
        if not cfg.shift_negative:
            worst = trajectories[rewards.index(low)].id
            raise ConfigError(
                f"refit needs rewards >= 0 (000 Lemma 1); trajectory {worst} has reward {low:.4g}. Use rewards in "
                "[0, 1], or set algo.shift_negative to shift all rewards by the minimum"
            )
        diag["shift"] = -low
        return [r - low for r in rewards]
    return rewards


def group_standardised(trajectories: list[Trajectory], diag: dict) -> list[float]:
    """000 eq. 9: (r - mean_x) / std_x over each group's trajectories, std with 1/(m - 1); 0 for every trajectory of a
    group whose rewards are all equal (no signal)."""
    rewards = dict(zip((t.id for t in trajectories), _rewards(trajectories)))
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


@register_algorithm("swift", family="weighted", display="Swift", paper="000 eq. 9")
def swift_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    """max(floor, eq. 9's weight), the floor 0 unless ``algo.negative_floor`` sets another."""
    floor = 0.0 if cfg.negative_floor is None else cfg.negative_floor
    weights = group_standardised(trajectories, diag)
    diag["floored"] = sum(w < floor for w in weights)
    return [max(w, floor) for w in weights]


@register_algorithm("swift-literal", family="weighted", display="Swift (000 as written)", paper="000 eq. 9")
def swift_literal_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    """000 eq. 9 as written: negative weights kept (unless ``algo.negative_floor`` clips them)."""
    return group_standardised(trajectories, diag)


def build_weighted_examples(trajectories: list[Trajectory], cfg: AlgoConfig) -> tuple[list[WeightedExample], dict]:
    """Weights for every logged trajectory, and diagnostics about them (for the report)."""
    algorithm = get_algorithm(cfg.name, family="weighted")
    diag: dict[str, Any] = {"algorithm": cfg.name, "trajectories": len(trajectories),
                            "groups": len(groups_of(trajectories))}
    weights = algorithm.build(trajectories, cfg, diag)
    if cfg.negative_floor is not None:  # the safeguard any algorithm takes (Swift applies its own floor itself)
        diag["floored"] = diag.get("floored", 0) + sum(w < cfg.negative_floor for w in weights)
        weights = [max(w, cfg.negative_floor) for w in weights]
    if cfg.kl_coef:
        weights = [w + cfg.kl_coef for w in weights]
    turns = cfg.turns or algorithm.turns
    if turns not in ("all", "final"):
        raise ConfigError(f"algo.turns: {cfg.turns!r}; expected all or final")
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
