"""``turnrl run`` and ``turnrl demo``: every stage for several algorithms on the same logged data.

simulate (logging policy on the train split) -> score -> for each algorithm: train -> evaluate on the test split
(Base too) -> a comparison table. Every stage reads the previous stage's files in the run directory and is
skipped when its output is already complete, so a killed run restarted with the same command resumes.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turnrl.algorithms.weighted import AlgoConfig
from turnrl.envs import EnvConfig
from turnrl.errors import ConfigError
from turnrl.evaluate import EvalOptions, EvaluateConfig, evaluate
from turnrl.generation import BackendConfig
from turnrl.models import DEFAULT_MODEL
from turnrl.records import write_json
from turnrl.score import RewardConfig, ScoreConfig, score
from turnrl.simulate import RolloutOptions, SimulateConfig, simulate
from turnrl.tasks import DatasetConfig
from turnrl.train.common import OptimConfig


@dataclass
class RunConfig:
    """The whole experiment: one logged dataset, several algorithms trained on it, all evaluated alike."""

    run_dir: str = "runs/turnrl"
    model: str = DEFAULT_MODEL
    """Base: the logging policy and the starting point of every trained policy."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    generation: BackendConfig = field(default_factory=BackendConfig)
    """Backend settings for every rollout (the model field is filled in per policy)."""
    teacher: BackendConfig = field(default_factory=BackendConfig)
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithms: list[str] = field(default_factory=lambda: ["sft", "star-gate", "refit", "swift"])
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """Algorithm parameters shared by all algorithms (the name is set per algorithm)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    per_algorithm: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Overrides for one algorithm, e.g. {swift: {optim: {learning_rate: 5.0e-6}, algo: {negative_floor: -1.0}}}."""
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    evaluate_base: bool = True


def _override(obj: Any, updates: dict[str, Any], where: str) -> Any:
    obj = copy.deepcopy(obj)
    for key, value in updates.items():
        if not hasattr(obj, key):
            raise ConfigError(f"{where}.{key}: unknown option")
        setattr(obj, key, value)
    return obj


def algorithm_settings(cfg: RunConfig, name: str) -> tuple[AlgoConfig, OptimConfig]:
    over = cfg.per_algorithm.get(name, {})
    unknown = set(over) - {"algo", "optim"}
    if unknown:
        raise ConfigError(f"per_algorithm.{name}: unknown section(s) {sorted(unknown)}; expected algo and optim")
    algo = _override(cfg.algo, {**over.get("algo", {}), "name": name}, f"per_algorithm.{name}.algo")
    optim = _override(cfg.optim, over.get("optim", {}), f"per_algorithm.{name}.optim")
    return algo, optim


def train_one(run_dir: str, model: str, algo: AlgoConfig, optim: OptimConfig) -> Path:
    """Dispatch to the trainer family of the algorithm."""
    from turnrl.train import train

    return train(run_dir=run_dir, model=model, algo=algo, optim=optim)


def run(cfg: RunConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run_config.json", asdict(cfg))
    for name in cfg.per_algorithm:
        if name not in cfg.algorithms:
            raise ConfigError(f"per_algorithm.{name}: {name!r} is not in algorithms {cfg.algorithms}")
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timings[stage] = round(time.perf_counter() - start, 1)
        return result

    policy = _override(cfg.generation, {"model": cfg.model}, "generation")
    timed("simulate", simulate, SimulateConfig(run_dir=cfg.run_dir, dataset=cfg.dataset, env=cfg.env,
                                               policy=policy, teacher=cfg.teacher, rollout=cfg.rollout))
    timed("score", score, ScoreConfig(run_dir=cfg.run_dir, reward=cfg.reward))

    def eval_policy(name: str, model: str) -> None:
        evaluate(EvaluateConfig(run_dir=cfg.run_dir, name=name,
                                policy=_override(cfg.generation, {"model": model}, "generation"),
                                teacher=cfg.teacher, dataset=cfg.dataset, env=cfg.env, reward=cfg.reward,
                                evaluation=cfg.evaluation))

    if cfg.evaluate_base:
        timed("evaluate base", eval_policy, "base", cfg.model)
    for name in cfg.algorithms:
        algo, optim = algorithm_settings(cfg, name)
        checkpoint = timed(f"train {name}", train_one, cfg.run_dir, cfg.model, algo, optim)
        timed(f"evaluate {name}", eval_policy, name, str(checkpoint))
    from turnrl.compare import write_comparison

    methods = (["base"] if cfg.evaluate_base else []) + list(cfg.algorithms)
    table = timed("compare", write_comparison, run_dir, methods)
    write_json(run_dir / "timings.json", timings)
    return {"table": table, "timings": timings}
