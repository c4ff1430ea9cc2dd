"""M-KTO (003 eq. 13): multi-turn KTO on desirable and undesirable whole trajectories.

The chosen trajectories of M-DPO's pairs are desirable, the rejected ones undesirable (003 builds its KTO data this
way, so the two classes are balanced); observations masked as for M-DPO. The loss is
:func:`turnrl.train.preference.kto_step_loss`, each class weighted by its lambda.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnrl.algorithms.preference import KTOExample, PairingStats, PreferencePair, pairs_of_groups, whole
from turnrl.algorithms.registry import register_algorithm
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class MKTOParams:
    """m-kto: the weights of its two classes."""

    lambda_d: float = 1.0
    """Weight of the desirable examples' loss (003: 1)."""
    lambda_u: float = 1.0
    """Weight of the undesirable examples' loss (003: 1)."""


@register_algorithm("m-kto", family="preference", display="M-KTO", paper="003 eq. 13", unpaired=True,
                    sections=("preference", "m_kto"))
def m_kto_examples(trajectories: list[Trajectory], cfg: AlgoConfig, branches, stats: PairingStats) -> list[KTOExample]:
    return kto_examples(pairs_of_groups(trajectories, cfg, stats, whole))


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


