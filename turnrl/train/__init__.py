"""Trainers, one per algorithm family (weighted fine-tuning, preference learning, distillation); ``train`` runs
the one of the algorithm's family, as the algorithm registry declares it."""

from __future__ import annotations

from pathlib import Path

from turnrl.algorithms.registry import get_algorithm
from turnrl.algorithms.config import AlgoConfig
from turnrl.train.config import OptimConfig, TrainConfig


def train(run_dir: str, model: str, algo: AlgoConfig, optim: OptimConfig, overwrite: bool = False,
          input: str = "", output: str = "", teacher_optim: OptimConfig | None = None,
          report_to: str = "none", push_to_hub: bool = False, hub_model_id: str = "",
          hub_private: bool = False) -> Path:
    """Train one algorithm on the run's scored log and return its checkpoint folder.

    ``teacher_optim``: star-gate-d only, how to train its STaR-GATE teacher if the run has none yet (default:
    ``optim``); ``report_to``: experiment trackers (turnrl/train/tracking.py); ``push_to_hub``: upload the
    checkpoint and its model card as ``hub_model_id`` (turnrl/train/card.py)."""
    family = get_algorithm(algo.name).family
    cfg = TrainConfig(run_dir=run_dir, model=model, algo=algo, optim=optim, overwrite=overwrite, output=output,
                      report_to=report_to, push_to_hub=push_to_hub, hub_model_id=hub_model_id,
                      hub_private=hub_private)
    if input:
        cfg.input = input
    if family == "weighted":
        from turnrl.train.weighted import train_weighted

        return train_weighted(cfg)
    if family == "preference":
        from turnrl.train.preference import train_preference

        return train_preference(cfg)
    from turnrl.train.distill import train_distill

    return train_distill(cfg, teacher_optim=teacher_optim)
