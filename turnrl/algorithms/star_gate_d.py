"""STaR-GATE-D (000 Sec. 4, Table 27): STaR-GATE's selection, distilled from its trained policy.

The student imitates the best trajectory of each group (``algo.star_gate.top_k`` / ``min_reward`` as for STaR-GATE),
each with weight 1, under a mix of NLL and a KL to the STaR-GATE teacher's token distributions:

    loss = alpha * NLL + (1 - alpha) * T^2 * KL(teacher_T || student_T)

the loss in :mod:`turnrl.train.distill`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from turnrl.algorithms.registry import register_algorithm
from turnrl.algorithms.weighted import WeightedExample, build_weighted_examples
from turnrl.records import Trajectory

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class StarGateDParams:
    """star-gate-d: the teacher and the mix of the two losses."""

    teacher: str = ""
    """The teacher (default: train/star-gate/checkpoint of the run, trained first if absent)."""
    alpha: float = 0.5
    """The NLL's share of the loss (000 Table 27: 0.5)."""
    temperature: float = 2.0
    """The softmax temperature T of the KL term (000 Table 27: 2.0)."""


@register_algorithm("star-gate-d", family="distillation", display="STaR-GATE-D", paper="000 Sec. 4, Table 27",
                    baseline=True, sections=("star_gate", "star_gate_d"))
def selected_examples(trajectories: list[Trajectory], algo: AlgoConfig) -> tuple[list[WeightedExample], dict]:
    """STaR-GATE's selection (best trajectory per group), weight 1."""
    examples, diagnostics = build_weighted_examples(trajectories, replace(algo, name="star-gate", kl_coef=0.0))
    diagnostics.pop("weights", None)
    return [e for e in examples if e.weight > 0], diagnostics
