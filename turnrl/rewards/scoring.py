"""The reward of a logged conversation: which components to compute and how to weight them (:class:`RewardConfig`),
and the :class:`Scorer` that computes them for ``turnrl score`` and ``turnrl evaluate`` alike: the common
components (:mod:`turnrl.rewards`), each environment's own (declared where it is registered,
:class:`turnrl.envs.EnvironmentSpec`), the reference model's ``gold_likelihood`` and the LLM judge's ``judge_*``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnrl.envs import ENVIRONMENTS
from turnrl.errors import ConfigError, InputError
from turnrl.judge import COMPONENTS as JUDGE_COMPONENTS, JudgeConfig
from turnrl.records import Task, Trajectory
from turnrl.rewards import CHEAP, cheap_components, combine
from turnrl.rewards.drift_return import DriftReturnConfig, check_config

DEFAULT_REWARD = {"accuracy": 0.7, "gold_likelihood": 0.3}


@dataclass
class RewardConfig:
    """Which reward components to compute and how to combine them into the scalar reward."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_REWARD))
    """Component -> weight; non-negative, summing to 1. Components: accuracy, format, thinking, turn_accuracy,
    gold_likelihood, judge_overall (and the other judge_* scores), earned (worksheet environment). The default is
    graded (see docs/rewards.md for why)."""
    likelihood_model: str = ""
    """Model for gold_likelihood (default: the model that generated the trajectory, i.e. the logging policy)."""
    likelihood_dtype: str = "auto"
    batch_size: int = 16
    drift: DriftReturnConfig = field(default_factory=DriftReturnConfig)
    """feedback environment: the terms of DRIFT's return, recorded as the drift_return component (kept out of
    the scalar reward; see docs/drift.md)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The LLM judge (000 App. E.3; docs/judge-and-endpoints.md): runs when a judge_* weight is set or
    judge.enabled. judge_<metric> = its score / 10 (judge_overall is 000's reward); judge_second_* come from
    judge.second."""


KNOWN = set(CHEAP) | {"gold_likelihood"} | set(JUDGE_COMPONENTS) | \
    {c for spec in ENVIRONMENTS.values() if spec.weighable for c in spec.reward_components}


def validate_weights(weights: dict[str, float]) -> None:
    if not weights:
        raise ConfigError("reward.weights: empty; name at least one component, e.g. {accuracy: 1.0}")
    for name, w in weights.items():
        if name not in KNOWN:
            raise ConfigError(f"reward.weights: unknown component {name!r}; known: {', '.join(sorted(KNOWN))}")
        if w < 0:
            raise ConfigError(f"reward.weights.{name}: {w} is negative; weights must be >= 0")
    if abs(sum(weights.values()) - 1.0) > 1e-6:
        raise ConfigError(f"reward.weights: they sum to {sum(weights.values()):.4g}; they must sum to 1 so that "
                          "the reward stays in [0, 1]")


def check_reward_fits_tasks(weights: dict[str, float], tasks) -> None:
    """Fail before any generation when a component cannot be computed for these tasks."""
    if "gold_likelihood" in weights:
        open_answer = next((t for t in tasks if not t.choices), None)
        if open_answer is not None:
            raise ConfigError(
                f"reward.weights: gold_likelihood is the probability of the gold option letter, but task "
                f"{open_answer.id!r} has no options; for open-answer tasks (e.g. GSM8K) use components that need "
                "none, e.g. --reward.weights '{accuracy: 1.0}'")


class Scorer:
    """Computes components for batches of trajectories; expensive models are loaded once, on first use."""

    def __init__(self, cfg: RewardConfig):
        validate_weights(cfg.weights)
        check_config(cfg.drift)
        if cfg.judge.second is None and any(k.startswith("judge_second_") for k in cfg.weights):
            raise ConfigError("reward.weights: judge_second_* needs a second judge; set reward.judge.second")
        self.cfg = cfg
        self.judge_summary: dict[str, Any] = {}
        """Failure counts and agreement of the last judged batch (empty when the judge did not run)."""
        self._likelihood_models: dict[str, Any] = {}

    def _likelihood_model(self, name: str):
        if name not in self._likelihood_models:
            from turnrl.models import default_device, load_model, load_tokenizer, resolve

            resolved = resolve(name)
            self._likelihood_models[name] = (load_model(resolved, dtype=self.cfg.likelihood_dtype, device=default_device()),
                                     load_tokenizer(resolved))
        return self._likelihood_models[name]

    def score(self, trajectories: list[Trajectory], tasks: dict[str, Task], desc: str | None = None) -> None:
        """Fill ``rewards`` and ``reward`` of each trajectory in place."""
        check_reward_fits_tasks(self.cfg.weights, (tasks[t.task_id] for t in trajectories if t.task_id in tasks))
        for traj in trajectories:
            if traj.task_id not in tasks:
                raise InputError(f"trajectory {traj.id}: task {traj.task_id!r} is not in the run's tasks")
            traj.rewards.update(cheap_components(traj, tasks[traj.task_id]))
            spec = ENVIRONMENTS.get(traj.env.get("name", ""))
            if spec is not None and spec.components is not None:
                traj.rewards.update(spec.components(traj, tasks[traj.task_id], self.cfg))
        if "gold_likelihood" in self.cfg.weights:
            from turnrl.rewards.likelihood import gold_likelihoods

            by_model: dict[str, list[Trajectory]] = {}
            for traj in trajectories:
                by_model.setdefault(self.cfg.likelihood_model or traj.policy.get("model", ""), []).append(traj)
            for name, group in by_model.items():
                model, tokenizer = self._likelihood_model(name)
                values = gold_likelihoods(model, tokenizer, group, tasks, batch_size=self.cfg.batch_size, desc=desc)
                for traj, value in zip(group, values):
                    traj.rewards["gold_likelihood"] = value
        if self.cfg.judge.enabled or any(k.startswith("judge_") for k in self.cfg.weights):
            from turnrl.judge import score_with_judges

            self.judge_summary = score_with_judges(trajectories, tasks, self.cfg.judge, desc=desc)
        for traj in trajectories:
            # A component the judge could not give leaves the reward unset, never silently 0.
            complete = all(name in traj.rewards for name in self.cfg.weights)
            traj.reward = combine(traj.rewards, self.cfg.weights) if complete else None
