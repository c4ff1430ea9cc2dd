"""M-DPO (003 eq. 12): multi-turn DPO on pairs of whole trajectories of the same prompt.

003's one random (correct, incorrect) pair per prompt (``algo.preference.pairing``, ``pairs_per_group``), or best vs
worst by reward. The log-probabilities run over every assistant message the policy wrote; observation tokens (the
environment's turns) are masked (``algo.preference.mask_observations: false`` gives 003's single-turn DPO baseline).
The loss is :func:`turnrl.train.preference.dpo_step_loss`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from turnrl.algorithms.preference import PairingStats, PreferencePair, pairs_of_groups, whole
from turnrl.algorithms.registry import register_algorithm
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@register_algorithm("m-dpo", family="preference", display="M-DPO", paper="003 eq. 12",
                    sections=("preference",))
def m_dpo_pairs(trajectories: list[Trajectory], cfg: AlgoConfig, branches,
                stats: PairingStats) -> list[PreferencePair]:
    """Whole trajectories, every assistant message trained, observations masked by the trainer."""
    return pairs_of_groups(trajectories, cfg, stats, whole)
