"""``turnrl iterate``: online iterative preference learning (003 Sec. 2.3, Algorithm 1, as run in its Sec. 3.1).

Starting from pi_0, for t = 1..N:

1. sample K trajectories per training prompt: K - M from the current policy pi_{t-1} and M from the previous
   iteration's pi_{t-2} (003's mixture sampling, 20 + 10 of 30; iteration 1 draws all K from pi_0);
2. score them with the run's reward (gold_likelihood, if used, is always scored by pi_0 so that rewards stay
   comparable across policies and iterations);
3. build the algorithm's pairs (M-DPO: one random correct/incorrect pair per prompt), in the tool environment
   after 003's filters (``tool_filters``, :mod:`turnrl.filters`);
4. train at most one epoch starting from pi_{t-1} with pi_{t-1} as the reference (003's updated reference;
   ``fixed_reference`` keeps pi_0, 003's ablation) -- this gives pi_t;
5. evaluate pi_t on the held-out prompts: the first ``heldout`` items of the train split, never trained on and
   never the test split.

The output is the best policy on the held-out prompts (pi_0 included; ties go to the later iteration). Every
iteration keeps its files in the run directory::

    tasks/                           the split
    iterate.json                     the settings; a resumed loop must use the same (more iterations are fine)
    iter_0/eval-train/heldout/       pi_0 on the held-out prompts
    iter_t/rollouts/trajectories.jsonl, iter_t/scored/trajectories.jsonl
    iter_t/filtered/trajectories.jsonl  tool environment: what 003's filters kept (and .counts.json)
    iter_t/train/<algo>/             pairs, reference log-probs, training log and the checkpoint pi_t
    iter_t/eval-train/heldout/       pi_t on the held-out prompts
    iter_t/iteration.json            written last: the iteration is complete
    summary.json                     every iteration's held-out result and the selected policy
    eval/iterate-<algo>/             the selected policy on the test split

Each stage resumes (rollouts chunk by chunk, training from its last saved state, evaluation conversation by
conversation), so a killed loop restarted with the same command continues at the stage it stopped.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from turnrl.algorithms.preference import build_preference_data
from turnrl.algorithms.registry import get_algorithm
from turnrl.algorithms.config import AlgoConfig
from turnrl.envs import EnvConfig, make_env
from turnrl.errors import ConfigError
from turnrl.stages.evaluate import EvalOptions, EvaluateConfig, evaluate
from turnrl.filters import ToolFilterConfig, filter_tool_trajectories
from turnrl.generation import BackendConfig, derive_seed
from turnrl.layout import FILTERED, ROLLOUTS, RunDir, SCORED, TASKS
from turnrl.models import DEFAULT_MODEL
from turnrl.records import Task, read_json, read_trajectories, write_json, write_jsonl
from turnrl.rollout import build_jobs, check_behaviour_turns, log_rollouts
from turnrl.workflows.pipeline import branch_rollouts
from turnrl.rewards.scoring import RewardConfig
from turnrl.stages.score import ScoreConfig, score
from turnrl.stages.simulate import RolloutOptions, SimulateConfig
from turnrl.tasks import DatasetConfig, prepare_split
from turnrl.train.config import OptimConfig
from turnrl.train.tracking import StandaloneTrackers, hparams, parse_report_to, scalars
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class IterateConfig:
    """Online iterative preference learning (003): sample, score, pair, train, select -- N times."""

    run_dir: str = "runs/iterate"
    model: str = DEFAULT_MODEL
    """pi_0: the first policy and the first reference."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    generation: BackendConfig = field(default_factory=BackendConfig)
    """Backend settings for every rollout and evaluation (the model field is filled in per policy)."""
    teacher: BackendConfig = field(default_factory=BackendConfig)
    rollout: RolloutOptions = field(default_factory=lambda: RolloutOptions(samples=8))
    """K = rollout.samples trajectories per prompt and iteration (003: 30, at temperature 1.0 for 7B models)."""
    previous_samples: int = 0
    """How many of the K come from the previous iteration's policy (003's mixture sampling: 10 of 30)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=lambda: AlgoConfig(name="m-dpo"))
    """Any algorithm (preference ones are 003's; a weighted one, e.g. star-gate, gives 003's RAFT baseline)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Training of each iteration; at most one epoch (003)."""
    iterations: int = 3
    """N (003: 3)."""
    prompts_per_iteration: int = 0
    """0: every training prompt in every iteration; P: a fresh, disjoint slice of P prompts per iteration (003)."""
    heldout: int = 50
    """The first N prompts of the train split: only for selecting the best policy, never trained on."""
    selection: str = "accuracy"
    """The held-out metric that picks the best policy (any metric of `turnrl evaluate`, e.g. reward)."""
    fixed_reference: bool = False
    """Keep pi_0 as the reference in every iteration (003's ablation) instead of the previous policy."""
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    """How held-out and test conversations are sampled (greedy by default); its limit is ignored."""
    evaluate_best: bool = True
    """Evaluate the selected policy on ``split`` (eval-val/iterate-<algo>/, or eval/ for the test pool)."""
    split: Literal["val", "test"] = "val"
    """Where the selected policy is evaluated: the validation pool, or the test pool (final numbers only)."""
    tool_filters: ToolFilterConfig = field(default_factory=ToolFilterConfig)
    """tool environment: 003's filters, applied to the scored trajectories before pairing (turnrl/filters.py)."""
    report_to: str = "none"
    """Experiment trackers (none, tensorboard, wandb, trackio, or several comma-separated): each iteration's
    held-out metrics at step t (tensorboard: <run_dir>/tensorboard), and each iteration's training as
    `turnrl train --report_to` logs it (iter_t/train/<algo>/tensorboard). See turnrl/train/tracking.py."""


def _check(cfg: IterateConfig, n_prompts: int) -> None:
    if cfg.iterations < 1:
        raise ConfigError(f"iterations: {cfg.iterations}; expected >= 1")
    parse_report_to(cfg.report_to)
    if cfg.optim.epochs > 1:
        raise ConfigError(f"optim.epochs: {cfg.optim.epochs}; an iteration trains at most one epoch (003)")
    if not 0 <= cfg.previous_samples < cfg.rollout.samples:
        raise ConfigError(f"previous_samples: {cfg.previous_samples}; expected 0 <= it < rollout.samples "
                          f"({cfg.rollout.samples}), leaving at least one sample to the current policy")
    check_behaviour_turns(cfg.rollout.behaviour_turns)
    if cfg.heldout < 1:
        raise ConfigError("heldout: expected >= 1 (the best policy is selected on held-out prompts)")
    if n_prompts < 1:
        raise ConfigError(f"heldout: {cfg.heldout} leaves no training prompt in the train split; lower it or raise "
                          "dataset.n_train")
    if cfg.prompts_per_iteration and cfg.prompts_per_iteration * cfg.iterations > n_prompts:
        raise ConfigError(f"prompts_per_iteration: {cfg.iterations} iterations x {cfg.prompts_per_iteration} "
                          f"disjoint prompts need more than the {n_prompts} training prompts left after heldout")


def _start_or_resume(cfg: IterateConfig, run_dir: Path) -> None:
    """A resumed loop must use the settings it started with; only the number of iterations may grow."""
    record = RunDir(run_dir).iterate_record
    current = asdict(cfg)
    if record.exists():
        old = read_json(record)
        diff = sorted(k for k, v in current.items() if old.get(k) != v and k not in ("run_dir", "iterations",
                                                                                   "evaluate_best", "report_to"))
        if diff:
            raise ConfigError(f"{record}: this loop was started with other settings {diff}; resume it with the "
                              "same settings or use another run_dir")
    write_json(record, current)


def _rollouts(cfg: IterateConfig, out: Path, tasks: list[Task], env, seed: int, current: str,
              previous: str | None) -> Path:
    """K trajectories per prompt: samples 0..K-M-1 from the current policy, the last M from the previous one."""
    ro = cfg.rollout
    jobs = build_jobs(tasks, env.settings(), ro.samples, ro.temperatures, ro.top_p, ro.top_k, seed)
    first_previous = ro.samples - (cfg.previous_samples if previous else 0)
    sources = [(current, [j for j in jobs if j.sample < first_previous]),
               (previous, [j for j in jobs if j.sample >= first_previous])]
    for model, model_jobs in sources:
        if model_jobs:
            log_rollouts(out, env, model_jobs, replace(cfg.generation, model=model),
                         chunk_size=ro.chunk_size * ro.samples, desc=f"{out.parent.parent.name} rollouts",
                         teacher=cfg.teacher, teacher_temperature=ro.teacher_temperature,
                         behaviour_prompt=ro.behaviour_prompt, behaviour_turns=ro.behaviour_turns)
    return out


def _score(it_dir: Path, reward: RewardConfig) -> None:
    if not (it_dir / SCORED).exists():  # written atomically: present means complete
        score(ScoreConfig(run_dir=str(it_dir), reward=reward, input=ROLLOUTS, output=SCORED))


def _heldout(cfg: IterateConfig, it_dir: Path, model: str, reward: RewardConfig) -> dict[str, Any]:
    result = evaluate(EvaluateConfig(run_dir=str(it_dir), name="heldout",
                                     policy=replace(cfg.generation, model=model), teacher=cfg.teacher,
                                     dataset=cfg.dataset, env=cfg.env, reward=reward,
                                     evaluation=replace(cfg.evaluation, limit=cfg.heldout), split="train"))
    if cfg.selection not in result["metrics"]:
        raise ConfigError(f"selection: {cfg.selection!r} is not a metric of the evaluation; known: "
                          f"{', '.join(result['metrics'])}")
    return result["metrics"]


def _copy_tasks(run_dir: Path, it_dir: Path) -> None:
    """Each iteration folder is a run directory of its own for the stage commands; they share one split."""
    if not (it_dir / TASKS / "split.json").exists():
        shutil.copytree(run_dir / TASKS, it_dir / TASKS, dirs_exist_ok=True)


def _tool_filters(cfg: IterateConfig, it_dir: Path, current: str) -> tuple[str, dict[str, int]]:
    """003's filters on tool-environment trajectories; returns the log to train on and what was dropped."""
    out = it_dir / FILTERED
    if not out.exists():
        from turnrl.models import load_tokenizer

        result = filter_tool_trajectories(read_trajectories(it_dir / SCORED), cfg.tool_filters,
                                          tokenizer=load_tokenizer(current))
        write_json(out.with_suffix(".counts.json"), result.counts)
        write_jsonl(out, result.kept)  # last: its presence marks the stage done
    return FILTERED, read_json(out.with_suffix(".counts.json"))


def _train(cfg: IterateConfig, it_dir: Path, t: int, current: str, reward: RewardConfig, seed: int,
           log: str) -> tuple[str, dict[str, Any]]:
    """Train pi_t from pi_{t-1} on ``log``; returns its model and what the pairing found (no pairs: pi_{t-1}
    carries on)."""
    from turnrl.train import train

    algo = cfg.algo
    if cfg.fixed_reference and t > 1:
        algo = replace(algo, preference=replace(algo.preference, ref_policy=cfg.model))
    algorithm = get_algorithm(algo.name)
    if algorithm.family != "preference":
        return str(train(str(it_dir), current, algo, cfg.optim, input=log, report_to=cfg.report_to)), {}
    branches = None
    if algorithm.needs_branches:
        simulate_cfg = SimulateConfig(dataset=cfg.dataset, env=cfg.env, policy=replace(cfg.generation, model=current),
                                      teacher=cfg.teacher, rollout=replace(cfg.rollout, seed=seed))
        branches = read_trajectories(branch_rollouts(str(it_dir), log, simulate_cfg, reward, output=algo.step_dpo.branches))
    _, diagnostics = build_preference_data(read_trajectories(it_dir / log), algo, branches)
    if not diagnostics["pairs"]:
        logger.info(f"iterate: iteration {t} found no pairs ({diagnostics}); the policy carries over unchanged")
        return current, diagnostics
    return str(train(str(it_dir), current, algo, cfg.optim, input=log, report_to=cfg.report_to)), diagnostics


def _tracked(record: dict[str, Any]) -> dict[str, float | int]:
    """What the trackers get of an iteration: its held-out metrics (mean, se, n), prompts, pairs, filter counts."""
    return {**scalars(record["heldout"], "heldout/"), **scalars(record.get("pairing") or {}, "pairing/"),
            **scalars(record.get("filtered") or {}, "filtered/"),
            **({"prompts": record["prompts"]} if "prompts" in record else {})}


def iterate(cfg: IterateConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    train_split, _ = prepare_split(cfg.dataset, run_dir)
    prompts = train_split[cfg.heldout:]
    _check(cfg, len(prompts))
    _start_or_resume(cfg, run_dir)
    # Every call logs every iteration again, finished ones from their records: purge_step 0 hides what an earlier,
    # interrupted call logged, so each metric has one point per iteration.
    trackers = StandaloneTrackers(cfg.report_to, run_dir, config=hparams(asdict(cfg)), purge_step=0)
    try:
        return _iterate(cfg, run_dir, prompts, trackers)
    finally:
        trackers.finish()


def _iterate(cfg: IterateConfig, run_dir: Path, prompts: list[Task], trackers: StandaloneTrackers) -> dict[str, Any]:
    env = make_env(cfg.env)
    # One fixed scorer for every policy: gold_likelihood by pi_0, not by whichever policy wrote the trajectory.
    reward = replace(cfg.reward, likelihood_model=cfg.reward.likelihood_model or cfg.model)
    history: list[dict[str, Any]] = []
    base_dir = RunDir(run_dir).iteration(0).root
    if (base_dir / "iteration.json").exists():
        history.append(read_json(base_dir / "iteration.json"))
    else:
        _copy_tasks(run_dir, base_dir)
        record = {"iteration": 0, "policy": cfg.model, "heldout": _heldout(cfg, base_dir, cfg.model, reward)}
        write_json(base_dir / "iteration.json", record)
        history.append(record)
    trackers.log(_tracked(history[0]), step=0)
    for t in range(1, cfg.iterations + 1):
        it_dir = RunDir(run_dir).iteration(t).root
        if (it_dir / "iteration.json").exists():
            history.append(read_json(it_dir / "iteration.json"))
            trackers.log(_tracked(history[-1]), step=t)
            continue
        _copy_tasks(run_dir, it_dir)
        current = history[-1]["policy"]
        previous = history[-2]["policy"] if len(history) > 1 else None
        seed = derive_seed(cfg.rollout.seed, "iterate", t)
        if cfg.prompts_per_iteration:
            p = cfg.prompts_per_iteration
            tasks = prompts[(t - 1) * p: t * p]
        else:
            tasks = prompts
        _rollouts(cfg, it_dir / ROLLOUTS, tasks, env, seed, current, previous)
        _score(it_dir, reward)
        # Code-running environments (tool): 003's filters before pairing.
        log, filtered = _tool_filters(cfg, it_dir, current) if getattr(env, "run_code", None) else (SCORED, None)
        policy, pairing = _train(cfg, it_dir, t, current, reward, seed, log)
        reference = cfg.model if cfg.fixed_reference else (cfg.algo.preference.ref_policy or current)
        sampled_from = {"current": current, "previous": previous if cfg.previous_samples else None}
        record = {"iteration": t, "policy": policy, "started_from": current, "reference": reference,
                  "sampled_from": sampled_from, "prompts": len(tasks), "filtered": filtered, "pairing": pairing,
                  "heldout": _heldout(cfg, it_dir, policy, reward)}
        write_json(it_dir / "iteration.json", record)
        history.append(record)
        trackers.log(_tracked(record), step=t)
        logger.info(f"iterate: iteration {t}: held-out {cfg.selection} {record['heldout'][cfg.selection]['mean']:.4g} "
                    f"(pi_0: {history[0]['heldout'][cfg.selection]['mean']:.4g})")
    best = max(history, key=lambda r: (r["heldout"][cfg.selection]["mean"], r["iteration"]))
    summary: dict[str, Any] = {"selection": cfg.selection, "best": {"iteration": best["iteration"],
                                                                    "policy": best["policy"]}, "iterations": history}
    if cfg.evaluate_best:
        name = f"iterate-{cfg.algo.name}"
        summary["best"]["test"] = evaluate(EvaluateConfig(
            run_dir=cfg.run_dir, name=name, policy=replace(cfg.generation, model=best["policy"]),
            teacher=cfg.teacher, dataset=cfg.dataset, env=cfg.env, reward=reward, evaluation=cfg.evaluation,
            split=cfg.split))["metrics"]
        trackers.log(scalars(summary["best"]["test"], "test/"), step=best["iteration"])
    trackers.log({"best_iteration": best["iteration"]}, step=cfg.iterations)
    write_json(RunDir(run_dir).iterate_summary, summary)
    logger.info(f"iterate: best on the held-out prompts: iteration {best['iteration']} ({best['policy']})")
    return summary
