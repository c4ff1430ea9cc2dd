"""Preference-learning algorithms: each turns the scored log into chosen/rejected pairs (or KTO examples).

Every example is a conversation plus the assistant messages of it that carry the loss (a :class:`Completion`); the
losses themselves are in :mod:`turnrl.train.preference`.

- DPO (000 Sec. 4): the final winning and losing responses. chosen = the final assistant message of the group's
  best trajectory, rejected = that of its worst, each after its own conversation up to it (``algo.dpo_context:
  history``, the default: a clarifying question and its reply stay in the context), or answered directly to the
  original question, the middle turns dropped (``question``, 000's literal form). Only the final message carries
  the loss. Groups whose rewards are all equal are skipped.
- StepDPO (000 Sec. 4, after Chen et al.; the literal reading of docs/design.md section 8): for every logged
  trajectory and every step t, a new action a'_t was branched from the logged history with the logging policy and the
  conversation rolled out to its end and scored (``turnrl simulate --continue_from``). The logged action a_t and
  the branched a'_t are paired by their trajectories' rewards (ties skipped); the prompt is the history before
  step t, the loss is on the action only.
- M-DPO (003 eq. 12): pairs of whole trajectories of the same prompt -- 003's one random (correct, incorrect) pair
  per prompt, or best vs worst by reward. The log-probabilities run over every assistant message; observation
  tokens (the environment's turns) are masked (``mask_observations: false`` gives 003's single-turn baseline).
- M-KTO (003 eq. 13): the chosen trajectories of the M-DPO pairs are desirable, the rejected ones undesirable
  (003 builds its KTO data this way, so the two classes are balanced).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from turnrl.algorithms.registry import get_algorithm, register_algorithm
from turnrl.algorithms.weighted import AlgoConfig, groups_of
from turnrl.errors import ConfigError, InputError
from turnrl.generation import derive_seed
from turnrl.records import Trajectory

PAIRINGS = ("best-vs-worst", "correct-vs-incorrect")
PAPER_PAIRING = {"dpo": "best-vs-worst", "m-dpo": "correct-vs-incorrect", "m-kto": "correct-vs-incorrect"}


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


def _reward(traj: Trajectory) -> float:
    if traj.reward is None:
        raise ConfigError(f"trajectory {traj.id} has no reward; run `turnrl score` before training")
    return float(traj.reward)


def _is_correct(traj: Trajectory) -> bool:
    if "accuracy" not in traj.rewards:
        raise ConfigError(f"pairing correct-vs-incorrect needs the accuracy reward component, and trajectory "
                          f"{traj.id} has none; score with it or use algo.pairing best-vs-worst")
    return float(traj.rewards["accuracy"]) >= 1.0


def whole(traj: Trajectory) -> Completion:
    """The whole trajectory, every assistant message the policy wrote trained (M-DPO, M-KTO); a scripted turn
    (``meta.scripted_turns``, rollout.explore's opening) conditions but is not trained."""
    n = len(traj.assistant_indices())
    scripted = set(traj.meta.get("scripted_turns", ()))
    return Completion(messages=traj.messages, train_turns=[k for k in range(n) if k not in scripted],
                      truncated=turn_truncated(traj), source=traj.id, reward=_reward(traj))


def final_answer_only(traj: Trajectory) -> Completion:
    """The original question answered directly by the trajectory's final assistant message (DPO)."""
    start = prompt_length(traj.messages)
    final = traj.messages[traj.assistant_indices()[-1]]
    return Completion(messages=traj.messages[:start] + [final], train_turns=[0],
                      truncated=[turn_truncated(traj)[-1]], source=traj.id, reward=_reward(traj))


def final_turn_in_context(traj: Trajectory) -> Completion:
    """The trajectory up to its final assistant message, only that message trained (DPO, history context)."""
    assistant = traj.assistant_indices()
    return Completion(messages=traj.messages[: assistant[-1] + 1], train_turns=[len(assistant) - 1],
                      truncated=turn_truncated(traj),
                      source=traj.id, reward=_reward(traj))


DPO_CONTEXTS = {"history": final_turn_in_context, "question": final_answer_only}


def resolve_pairing(cfg: AlgoConfig) -> str:
    pairing = cfg.pairing or PAPER_PAIRING.get(cfg.name, "best-vs-worst")
    if pairing not in PAIRINGS:
        raise ConfigError(f"algo.pairing: {cfg.pairing!r}; expected {' or '.join(PAIRINGS)} (or empty for the "
                          "paper's own)")
    if cfg.pairs_per_group < 1:
        raise ConfigError(f"algo.pairs_per_group: {cfg.pairs_per_group}; expected >= 1")
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
            ranked = sorted(group, key=lambda t: (-_reward(t), t.sample, t.id))
            best, worst = ranked[0], ranked[-1]
            if _reward(best) == _reward(worst):
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
            for w, lo in pair_groups(trajectories, pairing, cfg.pairs_per_group, stats)]


@register_algorithm("dpo", family="preference", display="DPO", paper="000 Sec. 4", baseline=True)
def dpo_pairs(trajectories: list[Trajectory], cfg: AlgoConfig, branches, stats: PairingStats) -> list[PreferencePair]:
    """The final answers of the group's best and worst trajectories, after their own histories or to the
    original question (``algo.dpo_context``)."""
    if cfg.dpo_context not in DPO_CONTEXTS:
        raise ConfigError(f"algo.dpo_context: {cfg.dpo_context!r}; expected {' or '.join(DPO_CONTEXTS)}")
    return pairs_of_groups(trajectories, cfg, stats, DPO_CONTEXTS[cfg.dpo_context])


@register_algorithm("step-dpo", family="preference", display="StepDPO", paper="000 Sec. 4", baseline=True,
                    needs_branches=True)
def step_dpo_pairs(trajectories: list[Trajectory], cfg: AlgoConfig, branches,
                   stats: PairingStats) -> list[PreferencePair]:
    if branches is None:
        raise ConfigError("step-dpo needs the branch rollouts (algo.branches)")
    return step_pairs(trajectories, branches, stats)


@register_algorithm("m-dpo", family="preference", display="M-DPO", paper="003 eq. 12")
def m_dpo_pairs(trajectories: list[Trajectory], cfg: AlgoConfig, branches,
                stats: PairingStats) -> list[PreferencePair]:
    """Whole trajectories, every assistant message trained, observations masked by the trainer."""
    return pairs_of_groups(trajectories, cfg, stats, whole)


@register_algorithm("m-kto", family="preference", display="M-KTO", paper="003 eq. 13", unpaired=True)
def m_kto_examples(trajectories: list[Trajectory], cfg: AlgoConfig, branches, stats: PairingStats) -> list[KTOExample]:
    return kto_examples(pairs_of_groups(trajectories, cfg, stats, whole))


def step_pairs(logged: list[Trajectory], branches: list[Trajectory], stats: PairingStats) -> list[PreferencePair]:
    """StepDPO: pair each logged action with the action branched at the same step, by trajectory reward."""
    by_source: dict[tuple[str, int], Trajectory] = {}
    for b in branches:
        if "branch_of" not in b.meta or "step" not in b.meta:
            raise InputError(f"trajectory {b.id} is not a branch rollout (no meta.branch_of / meta.step); "
                             "branches come from `turnrl simulate --continue_from`")
        by_source[(b.meta["branch_of"], int(b.meta["step"]))] = b
    pairs = []
    for traj in logged:
        truncated = turn_truncated(traj)
        for t, at in enumerate(traj.assistant_indices()):
            stats.groups += 1
            branch = by_source.get((traj.id, t))
            if branch is None:
                raise InputError(f"no branch rollout for trajectory {traj.id} at step {t}; finish the branch stage "
                                 "(`turnrl simulate --continue_from ...` then `turnrl score`)")
            history = traj.messages[:at]
            if branch.messages[:at] != history or len(branch.messages) <= at or \
                    branch.messages[at]["role"] != "assistant":
                raise InputError(f"branch {branch.id} does not continue trajectory {traj.id} at step {t}")
            if branch.reward is None or traj.reward is None:
                stats.unscored += 1
                continue
            if _reward(branch) == _reward(traj):
                stats.skipped_ties += 1
                continue
            sides = []
            for source, flags in ((traj, truncated), (branch, turn_truncated(branch))):
                sides.append(Completion(messages=history + [source.messages[at]], train_turns=[t],
                                        truncated=[False] * t + [flags[t]], source=source.id,
                                        reward=_reward(source)))
            chosen, rejected = sides if _reward(traj) > _reward(branch) else sides[::-1]
            pairs.append(PreferencePair(id=f"{traj.id}@step{t}", group_id=traj.group_id, chosen=chosen,
                                        rejected=rejected, step=t))
    stats.pairs = len(pairs)
    return pairs


def kto_examples(pairs: list[PreferencePair]) -> list[KTOExample]:
    """003's KTO data: each pair's chosen trajectory is desirable, its rejected one undesirable (each once)."""
    examples, seen = [], set()
    for p in pairs:
        for completion, desirable in ((p.chosen, True), (p.rejected, False)):
            if completion.source not in seen:
                seen.add(completion.source)
                examples.append(KTOExample(id=completion.source, group_id=p.group_id, completion=completion,
                                           desirable=desirable))
    return examples


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
        if pairing == "correct-vs-incorrect" and not cfg.pairing and any("accuracy" not in t.rewards for t in scored):
            # The paper's pairing needs correctness, which an imported log with only a reward does not have.
            pairing = "best-vs-worst"
            fallback = ("the log has no accuracy component, so the pairs are best vs worst by reward "
                        "(algo.pairing correct-vs-incorrect insists on the paper's)")
            cfg = replace(cfg, pairing=pairing)
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
