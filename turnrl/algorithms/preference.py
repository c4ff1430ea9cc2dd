"""The preference family: each algorithm turns the scored log into chosen/rejected pairs (or KTO examples).

Every example is a conversation plus the assistant messages of it that carry the loss (a :class:`Completion`); the
losses are in :mod:`turnrl.train.preference` (DPO's, 003 eq. 12; KTO's, 003 eq. 13). The algorithms, each in its own
module: :mod:`.dpo` (000's DPO on the final turns), :mod:`.step_dpo` (StepDPO on branch rollouts), :mod:`.m_dpo`
(M-DPO, 003 eq. 12), :mod:`.m_kto` (M-KTO, 003 eq. 13). Their shared parameters (beta, the pairing, the reference
policy, the observation mask) are :class:`PreferenceParams`, ``algo.preference.*``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from turnrl.algorithms.registry import get_algorithm
from turnrl.algorithms.weighted import groups_of
from turnrl.errors import ConfigError, InputError
from turnrl.generation import derive_seed
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig

PAIRINGS = ("best-vs-worst", "correct-vs-incorrect")
PAPER_PAIRING = {"dpo": "best-vs-worst", "m-dpo": "correct-vs-incorrect", "m-kto": "correct-vs-incorrect"}


@dataclass
class PreferenceParams:
    """dpo, step-dpo, m-dpo, m-kto: the settings they share."""

    beta: float = 0.1
    """beta (003's eta), the strength of the implicit KL regularisation (003: 0.1)."""
    pairing: str = ""
    """dpo, m-dpo, m-kto: best-vs-worst (by reward; groups with equal rewards skipped) or correct-vs-incorrect
    (by the accuracy component; 003's random pairs). Empty: the paper's own (dpo: best-vs-worst; m-dpo, m-kto:
    correct-vs-incorrect), or best-vs-worst where the log has no accuracy component (an imported log)."""
    pairs_per_group: int = 1
    """correct-vs-incorrect: random (correct, incorrect) pairs per group (003: 1)."""
    mask_observations: bool = True
    """Leave the observation tokens out of the log-probabilities (003). False gives 003's single-turn DPO/KTO
    baselines, whose log-probabilities run over everything after the prompt."""
    ref_policy: str = ""
    """The reference policy pi_ref (default: the policy training starts from; with a fresh LoRA adapter that is the
    base with the adapter disabled, otherwise a frozen copy)."""
    precompute_reference: bool = True
    """Compute the reference log-probabilities in one pass before training instead of a reference forward pass in
    every step. Exact: the reference is frozen and evaluated without dropout either way."""


@dataclass
class Completion:
    """A conversation and which of its assistant messages carry the loss."""

    messages: list[dict[str, str]]
    train_turns: list[int]
    """Ordinals (0-based) among the assistant messages of ``messages``."""
    truncated: list[bool]
    """Per assistant message: it hit the token cap (its end-of-turn token is then not trained)."""
    source: str
    """The id of the logged trajectory it comes from."""
    reward: float


@dataclass
class PreferencePair:
    id: str
    group_id: str
    chosen: Completion
    rejected: Completion
    step: int | None = None
    """StepDPO: the branched assistant turn (0-based)."""


@dataclass
class KTOExample:
    id: str
    group_id: str
    completion: Completion
    desirable: bool


@dataclass
class PairingStats:
    """What happened to each group: paired, or skipped and why."""

    groups: int = 0
    pairs: int = 0
    skipped_ties: int = 0
    """Groups (StepDPO: steps) whose candidates have equal reward (or correctness)."""
    skipped_single: int = 0
    """Groups with a single trajectory (nothing to compare)."""
    all_correct: int = 0
    all_incorrect: int = 0
    unscored: int = 0
    """Trajectories (StepDPO: steps) left out because a reward is missing (the judge could not score it)."""


def prompt_length(messages: list[dict[str, str]]) -> int:
    """Number of messages before the first assistant message: the prompt x."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            return i
    raise InputError("a conversation without any assistant message cannot be trained on")


def turn_truncated(traj: Trajectory) -> list[bool]:
    """Per assistant message, whether it hit the token cap (False where the log does not say)."""
    n = len(traj.assistant_indices())
    return [t.truncated for t in traj.turns] if len(traj.turns) == n else [False] * n


def reward_of(traj: Trajectory) -> float:
    if traj.reward is None:
        raise ConfigError(f"trajectory {traj.id} has no reward; run `turnrl score` before training")
    return float(traj.reward)


def _is_correct(traj: Trajectory) -> bool:
    if "accuracy" not in traj.rewards:
        raise ConfigError(f"pairing correct-vs-incorrect needs the accuracy reward component, and trajectory "
                          f"{traj.id} has none; score with it or use algo.preference.pairing best-vs-worst")
    return float(traj.rewards["accuracy"]) >= 1.0


def whole(traj: Trajectory) -> Completion:
    """The whole trajectory, every assistant message the policy wrote trained (M-DPO, M-KTO); a scripted turn
    (``meta.scripted_turns``, rollout.explore's opening) conditions but is not trained."""
    n = len(traj.assistant_indices())
    scripted = set(traj.meta.get("scripted_turns", ()))
    return Completion(messages=traj.messages, train_turns=[k for k in range(n) if k not in scripted],
                      truncated=turn_truncated(traj), source=traj.id, reward=reward_of(traj))


def resolve_pairing(cfg: AlgoConfig) -> str:
    params = cfg.preference
    pairing = params.pairing or PAPER_PAIRING.get(cfg.name, "best-vs-worst")
    if pairing not in PAIRINGS:
        raise ConfigError(f"algo.preference.pairing: {params.pairing!r}; expected {' or '.join(PAIRINGS)} (or empty "
                          "for the paper's own)")
    if params.pairs_per_group < 1:
        raise ConfigError(f"algo.preference.pairs_per_group: {params.pairs_per_group}; expected >= 1")
    return pairing


def pair_groups(trajectories: list[Trajectory], pairing: str, pairs_per_group: int,
                stats: PairingStats) -> list[tuple[Trajectory, Trajectory]]:
    """(winner, loser) trajectories of each group.

    best-vs-worst: the highest- against the lowest-reward trajectory (ties in rank go to the earlier sample);
    a group whose rewards are all equal is skipped. correct-vs-incorrect (003): ``pairs_per_group`` distinct random
    (correct, incorrect) combinations, drawn with a seed derived from the group, so the pairs are reproducible;
    a group that is all correct or all incorrect is skipped.
    """
    pairs = []
    for group_id, group in groups_of(trajectories).items():
        stats.groups += 1
        if len(group) < 2:
            stats.skipped_single += 1
            continue
        if pairing == "best-vs-worst":
            ranked = sorted(group, key=lambda t: (-reward_of(t), t.sample, t.id))
            best, worst = ranked[0], ranked[-1]
            if reward_of(best) == reward_of(worst):
                stats.skipped_ties += 1
                continue
            pairs.append((best, worst))
            continue
        correct = [t for t in group if _is_correct(t)]
        incorrect = [t for t in group if not _is_correct(t)]
        if not incorrect or not correct:
            stats.skipped_ties += 1
            stats.all_correct += not incorrect
            stats.all_incorrect += not correct
            continue
        combos = [(w, lo) for w in correct for lo in incorrect]
        rng = random.Random(derive_seed("pairs", group_id))
        pairs.extend(rng.sample(combos, min(pairs_per_group, len(combos))))
    stats.pairs = len(pairs)
    return pairs


def pairs_of_groups(trajectories: list[Trajectory], cfg: AlgoConfig, stats: PairingStats,
                    make) -> list[PreferencePair]:
    pairing = resolve_pairing(cfg)
    return [PreferencePair(id=f"{w.id}>{lo.id}", group_id=w.group_id, chosen=make(w), rejected=make(lo))
            for w, lo in pair_groups(trajectories, pairing, cfg.preference.pairs_per_group, stats)]


def build_preference_data(trajectories: list[Trajectory], cfg: AlgoConfig,
                          branches: list[Trajectory] | None = None) -> tuple[list[Any], dict[str, Any]]:
    """Pairs (dpo, step-dpo, m-dpo) or KTO examples (m-kto), and counts of what was paired and skipped."""
    algorithm = get_algorithm(cfg.name, family="preference")
    stats = PairingStats()
    fallback = ""
    if algorithm.needs_branches:
        pairing = "logged-vs-branch"
        data: list[Any] = algorithm.build(trajectories, cfg, branches, stats)
    else:
        pairing = resolve_pairing(cfg)
        # A trajectory without a reward (the judge could not score it) cannot be ranked: left out, counted.
        scored = [t for t in trajectories if t.reward is not None]
        stats.unscored = len(trajectories) - len(scored)
        if pairing == "correct-vs-incorrect" and not cfg.preference.pairing and \
                any("accuracy" not in t.rewards for t in scored):
            # The paper's pairing needs correctness, which an imported log with only a reward does not have.
            pairing = "best-vs-worst"
            fallback = ("the log has no accuracy component, so the pairs are best vs worst by reward "
                        "(algo.preference.pairing correct-vs-incorrect insists on the paper's)")
            cfg = replace(cfg, preference=replace(cfg.preference, pairing=pairing))
        data = algorithm.build(scored, cfg, branches, stats)
    diag: dict[str, Any] = {"algorithm": cfg.name, "pairing": pairing, "trajectories": len(trajectories),
                            **({"pairing_chosen_because": fallback} if fallback else {}),
                            "steps" if algorithm.needs_branches else "groups": stats.groups, "pairs": stats.pairs,
                            "skipped_ties": stats.skipped_ties, "skipped_single": stats.skipped_single,
                            "unscored": stats.unscored}
    if pairing == "correct-vs-incorrect":
        diag.update({"all_correct": stats.all_correct, "all_incorrect": stats.all_incorrect})
    if algorithm.needs_branches:
        diag["branches"] = len(branches or [])
    if algorithm.unpaired:
        diag.update({"examples": len(data), "desirable": sum(e.desirable for e in data),
                     "undesirable": sum(not e.desirable for e in data)})
    return data, diag
