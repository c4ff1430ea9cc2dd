"""Trainers: one for weighted fine-tuning, one for preference learning; ``train`` picks by algorithm."""

from __future__ import annotations

from pathlib import Path

from turnrl.algorithms.weighted import WEIGHTS, AlgoConfig
from turnrl.errors import ConfigError
from turnrl.train.common import OptimConfig

WEIGHTED = set(WEIGHTS) | {"drift"}
PREFERENCE = {"dpo", "step-dpo", "m-dpo", "m-kto"}
DISTILLATION = {"star-gate-d"}


def train(run_dir: str, model: str, algo: AlgoConfig, optim: OptimConfig, overwrite: bool = False,
          input: str = "", output: str = "", teacher_optim: OptimConfig | None = None) -> Path:
    """Train one algorithm on the run's scored log and return its checkpoint folder.

    ``teacher_optim``: star-gate-d only, how to train its STaR-GATE teacher if the run has none yet (default:
    ``optim``)."""
    from turnrl.train.weighted import TrainConfig, train_weighted

    cfg = TrainConfig(run_dir=run_dir, model=model, algo=algo, optim=optim, overwrite=overwrite, output=output)
    if input:
        cfg.input = input
    if algo.name in WEIGHTED:
        return train_weighted(cfg)
    if algo.name in PREFERENCE:
        from turnrl.train.preference import train_preference

        return train_preference(cfg)
    if algo.name in DISTILLATION:
        from turnrl.train.distill import train_distill

        return train_distill(cfg, teacher_optim=teacher_optim)
    known = sorted(WEIGHTED | PREFERENCE | DISTILLATION)
    raise ConfigError(f"algo.name: {algo.name!r} is not available; expected one of {', '.join(known)}")
