"""``turnrl run`` and ``turnrl demo``: every stage for several algorithms on the same logged data.

simulate (logging policy on the train split) -> score -> for each algorithm: train -> evaluate on the test split
(Base too) -> a comparison table, plots and report.html. Every stage reads the previous stage's files in the run
directory and is skipped when its output is already complete, so a killed run restarted with the same command
resumes.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from turnrl.algorithms.registry import get_algorithm
from turnrl.algorithms.config import AlgoConfig, RENAMED as ALGO_RENAMED, renamed_message
from turnrl.envs import EnvConfig
from turnrl.errors import ConfigError, NothingToLearn
from turnrl.stages.evaluate import EvalOptions, EvaluateConfig, evaluate
from turnrl.generation import BackendConfig
from turnrl.models import DEFAULT_MODEL
from turnrl.layout import BRANCHES, refresh_folder, RunDir, SCORED, SCORED_BRANCHES
from turnrl.records import read_trajectories, write_json
from turnrl.rewards.scoring import RewardConfig, check_reward_fits_tasks
from turnrl.stages.score import ScoreConfig, score
from turnrl.stages.simulate import RolloutOptions, SimulateConfig, simulate
from turnrl.tasks import DatasetConfig, load_split, prepare_split
from turnrl.train.config import OptimConfig
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class RefreshOptions:
    """004 App. D.5's rollout refresh: train, re-sample the training prompts from the updated policy, train on."""

    algorithms: list[str] = field(default_factory=list)
    """Weighted algorithms to train once more with refresh, evaluated as <name>-refresh (e.g. [drift])."""
    rounds: int = 1
    """Re-samplings. optim.epochs is split evenly over the rounds + 1 training stages, so the total number of
    optimizer steps matches the plain run's (004: 100 steps, re-sample, 100 more). Each stage continues from the
    previous checkpoint; round r samples with seed rollout.seed + r and lives in refresh/<name>/round<r>/."""


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
    """Overrides for one algorithm, e.g. {swift: {optim: {learning_rate: 5.0e-6}, algo: {kl_coef: 0.1}}}. An
    algorithm's own parameters need none: each section of ``algo`` is read only by the algorithms it belongs to."""
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    evaluate_base: bool = True
    refresh: RefreshOptions = field(default_factory=RefreshOptions)
    split: Literal["val", "test"] = "val"
    """The pool every policy is evaluated on: val (development: choosing settings, trying things) or test (final
    numbers only; the test pool is read by no other command unless it is named)."""
    reference_policies: list[str] = field(default_factory=lambda: ["always-a"])
    """Degenerate policies evaluated beside the methods on multiple-choice tasks (the constant backend:
    always-a states "The answer is A." every turn), so that every table shows what a letter preference earns."""
    seeds: list[int] = field(default_factory=list)
    """Several seeds: the whole experiment once per seed in <run_dir>/seed<s>/ (the log re-simulated with
    rollout.seed s, training with optim.seed s, evaluation option orders drawn with evaluation.seed + s), then one
    table over seeds (:mod:`turnrl.workflows.seeds`). Empty: one run with the seeds as configured."""


def _override(obj: Any, updates: dict[str, Any], where: str) -> Any:
    """A copy of the config ``obj`` with ``updates`` set, a nested mapping going into its section
    ({"swift": {"floor": -1.0}} sets obj.swift.floor)."""
    obj = copy.deepcopy(obj)
    for key, value in updates.items():
        if isinstance(obj, AlgoConfig) and key in ALGO_RENAMED:
            raise ConfigError(renamed_message(key, f"{where}."))
        if not hasattr(obj, key):
            raise ConfigError(f"{where}.{key}: unknown option")
        if isinstance(value, dict) and is_dataclass(getattr(obj, key)):
            value = _override(getattr(obj, key), value, f"{where}.{key}")
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


def check_per_algorithm(cfg: RunConfig) -> None:
    """Every per_algorithm override names an algorithm of the list and applies cleanly: checked when a run or a
    sweep starts, not hours later when that algorithm's turn comes."""
    for name in cfg.per_algorithm:
        if name not in cfg.algorithms:
            raise ConfigError(f"per_algorithm.{name}: {name!r} is not in algorithms {cfg.algorithms}")
    for name in cfg.algorithms:
        algorithm_settings(cfg, name)


def branch_rollouts(run_dir: str, logged: str, simulate_cfg: SimulateConfig, reward: RewardConfig,
                    output: str = SCORED_BRANCHES) -> Path:
    """StepDPO's data, a stage before its training: branch rollouts from every step of the logged trajectories
    (``turnrl simulate --continue_from``), scored like the log. ``simulate_cfg`` is the logging run's (environment,
    logging policy, teacher, rollout options). Both steps resume."""
    branches = simulate(replace(simulate_cfg, run_dir=run_dir, continue_from=logged, output=BRANCHES))
    out = Path(run_dir) / output
    if out.exists() and {t.id for t in read_trajectories(out)} == {t.id for t in read_trajectories(branches)}:
        return out
    return score(ScoreConfig(run_dir=run_dir, reward=reward, input=BRANCHES, output=output))


def train_one(run_dir: str, model: str, algo: AlgoConfig, optim: OptimConfig, run: RunConfig | None = None) -> Path:
    """Dispatch to the trainer family of the algorithm. With the run's config, an algorithm that trains on branch
    rollouts (StepDPO) first gets them, rolled out and scored like the logged data, and a distilled one's teacher
    (if not trained yet) gets star-gate's settings."""
    from turnrl.train import train

    teacher_optim = None
    algorithm = get_algorithm(algo.name)
    if run is not None and algorithm.needs_branches:
        policy = _override(run.generation, {"model": run.model}, "generation")
        branch_rollouts(run_dir, SCORED, SimulateConfig(run_dir=run_dir, dataset=run.dataset, env=run.env,
                                                        policy=policy, teacher=run.teacher, rollout=run.rollout),
                        run.reward, output=algo.step_dpo.branches)
    if run is not None and algorithm.family == "distillation":
        teacher_optim = algorithm_settings(run, "star-gate")[1]
    return train(run_dir=run_dir, model=model, algo=algo, optim=optim, teacher_optim=teacher_optim)


def train_with_refresh(cfg: RunConfig, name: str) -> Path:
    """Train ``name`` in rounds + 1 stages with a fresh log from the latest policy before each later stage."""
    from turnrl.train import train

    if cfg.refresh.rounds < 1:
        raise ConfigError(f"refresh.rounds: {cfg.refresh.rounds}; expected at least 1")
    algo, optim = algorithm_settings(cfg, name)
    stage_optim = replace(optim, epochs=optim.epochs / (cfg.refresh.rounds + 1))
    model, scored = cfg.model, SCORED
    for r in range(cfg.refresh.rounds + 1):
        folder = refresh_folder(name, r)
        if r > 0:
            simulate(SimulateConfig(run_dir=cfg.run_dir, dataset=cfg.dataset, env=cfg.env,
                                    policy=_override(cfg.generation, {"model": model}, "generation"),
                                    teacher=cfg.teacher, rollout=replace(cfg.rollout, seed=cfg.rollout.seed + r),
                                    output=f"{folder}/rollouts.jsonl"))
            scored = f"{folder}/scored.jsonl"
            score(ScoreConfig(run_dir=cfg.run_dir, reward=cfg.reward, input=f"{folder}/rollouts.jsonl", output=scored))
        model = str(train(run_dir=cfg.run_dir, model=model, algo=algo, optim=stage_optim, input=scored,
                          output=f"{folder}/train"))
    return Path(model)


def peak_rss_gb() -> float:
    """The process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def timed_stage(timings: dict[str, float], stage: str, fn, *args):
    """Run one stage, record its time, and print it with the process's peak memory so far (a stage that raises
    the peak is the one that sets the memory a run needs)."""
    start = time.perf_counter()
    result = fn(*args)
    timings[stage] = round(time.perf_counter() - start, 1)
    logger.info(f"{stage}: {timings[stage]:.0f} s; peak memory so far {peak_rss_gb():.1f} GB")
    return result


def log_stages(cfg: RunConfig, timings: dict[str, float]) -> None:
    """simulate and score: the logged, scored conversations every algorithm trains on."""
    train, test = prepare_split(cfg.dataset, Path(cfg.run_dir))
    check_reward_fits_tasks(cfg.reward.weights, train + test)  # before hours of generation, not after
    policy = _override(cfg.generation, {"model": cfg.model}, "generation")
    timed_stage(timings, "simulate", simulate, SimulateConfig(run_dir=cfg.run_dir, dataset=cfg.dataset, env=cfg.env,
                                                              policy=policy, teacher=cfg.teacher, rollout=cfg.rollout))
    timed_stage(timings, "score", score, ScoreConfig(run_dir=cfg.run_dir, reward=cfg.reward))


def evaluate_policy(cfg: RunConfig, name: str, model: str, split: str | None = None) -> dict[str, Any]:
    return evaluate(EvaluateConfig(run_dir=cfg.run_dir, name=name,
                                   policy=_override(cfg.generation, {"model": model}, "generation"),
                                   teacher=cfg.teacher, dataset=cfg.dataset, env=cfg.env, reward=cfg.reward,
                                   evaluation=cfg.evaluation, split=split or cfg.split))


def evaluate_reference(cfg: RunConfig, name: str) -> dict[str, Any]:
    """A degenerate reference policy (``always-a``) on the run's pool; a reward that needs a model to read the
    conversation (gold likelihood) reads it with Base."""
    reward = replace(cfg.reward, likelihood_model=cfg.reward.likelihood_model or cfg.model)
    return evaluate(EvaluateConfig(run_dir=cfg.run_dir, name=name, policy=BackendConfig(backend="constant", model=name),
                                   teacher=cfg.teacher, dataset=cfg.dataset, env=cfg.env, reward=reward,
                                   evaluation=cfg.evaluation, split=cfg.split))


def machine() -> dict[str, Any]:
    """What a run's numbers depend on besides its config: the CPU kind and the precision ``auto`` resolves to
    (greedy near-ties flip between fp32 and bf16, so tables name it)."""
    import platform

    import torch

    from turnrl.models import native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "native_bf16": native_bf16(),
            "precision": "bf16" if native_bf16() else "fp32", "cuda": torch.cuda.is_available(),
            "torch": torch.__version__}


def run(cfg: RunConfig) -> dict[str, Any]:
    check_per_algorithm(cfg)
    if cfg.seeds:
        from turnrl.workflows.seeds import run_seeds

        return run_seeds(cfg, run, machine())
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split: {cfg.split!r}; expected val or test")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    where = machine()
    logger.info(f"run: {where['cpu']}, {where['cores']} cores, native bf16 {'yes' if where['native_bf16'] else 'no'}: "
                f"precision auto -> {where['precision']}; evaluating on the {cfg.split} pool")
    write_json(RunDir(run_dir).config, {**asdict(cfg), "machine": where})
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        return timed_stage(timings, stage, fn, *args)

    log_stages(cfg, timings)
    if cfg.evaluate_base:
        timed("evaluate base", evaluate_policy, cfg, "base", cfg.model)
    multiple_choice = any(t.choices for t in load_split(cfg.dataset, run_dir, cfg.split))
    references = cfg.reference_policies if multiple_choice else []
    for name in references:
        timed(f"evaluate {name}", evaluate_reference, cfg, name)
    skipped: dict[str, str] = {}  # method -> why: a small log can leave one algorithm nothing, the others still run

    def train_and_evaluate(method: str, train_fn, *args) -> None:
        try:
            checkpoint = timed(f"train {method}", train_fn, *args)
        except NothingToLearn as exc:
            skipped[method] = str(exc)
            logger.info(f"run: skipping {method}, not trained or evaluated: {exc}")
            return
        timed(f"evaluate {method}", evaluate_policy, cfg, method, str(checkpoint))

    for name in cfg.algorithms:
        train_and_evaluate(name, train_one, cfg.run_dir, cfg.model, *algorithm_settings(cfg, name), cfg)
    for name in cfg.refresh.algorithms:
        train_and_evaluate(f"{name}-refresh", train_with_refresh, cfg, name)
    write_json(RunDir(run_dir).skipped, skipped)
    from turnrl.stages.compare import CompareConfig, compare_run

    methods = [m for m in (["base"] if cfg.evaluate_base else []) + list(cfg.algorithms)
               + [f"{name}-refresh" for name in cfg.refresh.algorithms] if m not in skipped] + list(references)
    write_json(RunDir(run_dir).timings, timings)  # before the report, which shows them
    comparison, report = timed("compare", compare_run, CompareConfig(run_dir=cfg.run_dir, methods=methods,
                                                                     split=cfg.split))
    write_json(RunDir(run_dir).timings, timings)
    logger.info(f"report: {report}")
    for name, reason in skipped.items():
        logger.info(f"run: {name} is not in the table: {reason}")
    return {"table": comparison.markdown, "timings": timings, "report": report, "skipped": skipped, "methods": methods}
