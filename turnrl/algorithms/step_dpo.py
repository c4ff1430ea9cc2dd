"""StepDPO (000 Sec. 4, after Chen et al.; the literal reading of docs/design.md section 8).

For every logged trajectory and every step t, a new action a'_t was branched from the logged history with the
logging policy and the conversation rolled out to its end and scored (``turnrl simulate --continue_from``, a stage
``turnrl run`` and ``turnrl iterate`` run before training). The logged action a_t and the branched a'_t are paired
by their trajectories' rewards (ties skipped); the prompt is the history before step t, the loss (DPO's,
:func:`turnrl.train.preference.dpo_step_loss`) is on the action only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnrl.algorithms.preference import Completion, PairingStats, PreferencePair, reward_of, turn_truncated
from turnrl.algorithms.registry import register_algorithm
from turnrl.errors import ConfigError, InputError
from turnrl.layout import SCORED_BRANCHES
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class StepDPOParams:
    """step-dpo: where its branch rollouts are."""

    branches: str = SCORED_BRANCHES
    """The scored branch rollouts in the run directory (`turnrl simulate --continue_from`, then `turnrl score`)."""


@register_algorithm("step-dpo", family="preference", display="StepDPO", paper="000 Sec. 4", baseline=True,
                    needs_branches=True, sections=("preference", "step_dpo"))
def step_dpo_pairs(trajectories: list[Trajectory], cfg: AlgoConfig, branches,
                   stats: PairingStats) -> list[PreferencePair]:
    if branches is None:
        raise ConfigError("step-dpo needs the branch rollouts (algo.step_dpo.branches)")
    return step_pairs(trajectories, branches, stats)


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
            if reward_of(branch) == reward_of(traj):
                stats.skipped_ties += 1
                continue
            sides = []
            for source, flags in ((traj, truncated), (branch, turn_truncated(branch))):
                sides.append(Completion(messages=history + [source.messages[at]], train_turns=[t],
                                        truncated=[False] * t + [flags[t]], source=source.id,
                                        reward=reward_of(source)))
            chosen, rejected = sides if reward_of(traj) > reward_of(branch) else sides[::-1]
            pairs.append(PreferencePair(id=f"{traj.id}@step{t}", group_id=traj.group_id, chosen=chosen,
                                        rejected=rejected, step=t))
    stats.pairs = len(pairs)
    return pairs


