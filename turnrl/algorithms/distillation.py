"""STaR-GATE-D's data (000 Sec. 4, Table 27): STaR-GATE's selection, distilled from its trained policy.

The student imitates the best trajectory of each group (``top_k`` / ``min_reward`` as for STaR-GATE), each with
weight 1, under a mix of NLL and a KL to the STaR-GATE teacher's token distributions; the loss is in
:mod:`turnrl.train.distill`.
"""

from __future__ import annotations

from dataclasses import replace

from turnrl.algorithms.registry import register_algorithm
from turnrl.algorithms.weighted import AlgoConfig, WeightedExample, build_weighted_examples
from turnrl.records import Trajectory


@register_algorithm("star-gate-d", family="distillation", display="STaR-GATE-D", paper="000 Sec. 4, Table 27",
                    baseline=True)
def selected_examples(trajectories: list[Trajectory], algo: AlgoConfig) -> tuple[list[WeightedExample], dict]:
    """STaR-GATE's selection (best trajectory per group), weight 1."""
    star_gate = replace(algo, name="star-gate", kl_coef=0.0, negative_floor=None)
    examples, diagnostics = build_weighted_examples(trajectories, star_gate)
    diagnostics.pop("weights", None)
    return [e for e in examples if e.weight > 0], diagnostics
