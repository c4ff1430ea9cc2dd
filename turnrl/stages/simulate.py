"""``turnrl simulate``: roll out m trajectories per task with an environment and log them as JSONL.

000 logs 3 trajectories per question from the Base model, one per temperature. Here ``samples`` trajectories are
drawn per task, the k-th at ``temperatures[k % len(temperatures)]``, each with its own seed. Tasks are processed
in fixed chunks and every finished chunk is appended to the log, so a killed run restarted with the same
arguments continues where it stopped and ends with exactly the file an uninterrupted run writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from turnrl.envs import EnvConfig, Prefix, make_env
from turnrl.errors import ConfigError, InputError
from turnrl.generation import BackendConfig, Sampling, derive_seed
from turnrl.layout import BRANCHES, ROLLOUTS
from turnrl.records import Task, Trajectory, read_trajectories
from turnrl.rollout import Job, build_jobs, check_behaviour_turns, check_resume, episode_to_trajectory, log_rollouts, \
    recorded_orders, showing
from turnrl.tasks import DatasetConfig, prepare_split
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class RolloutOptions:
    """How many trajectories per task, and how they are sampled."""

    samples: int = 3
    """Trajectories per task (m; 000: 3; DRIFT: K = 16)."""
    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9])
    """Temperature of the k-th trajectory of a task: temperatures[k % len] (0: greedy). See
    docs/results-withdrawn.md for how the defaults were measured for SmolLM2-135M."""
    top_p: float = 0.95
    top_k: int = 0
    teacher_temperature: float = 0.0
    seed: int = 0
    explore: float = 0.0
    """Share of conversations (chosen per conversation by its seed) whose first assistant turn is the environment's
    scripted exploratory action instead of the logging policy's (ask: a question to the user): off-policy data
    from a behaviour policy that tries what the logging policy rarely does, so that the log holds its outcomes. The
    rest of the conversation is the logging policy's; the scripted turn is marked in ``meta.scripted_turns``, and
    no trainer trains on it (it conditions the policy's own turns only).
    Environments without such an action refuse a value above 0."""
    behaviour_prompt: str = ""
    """A system message the logging policy is shown instead of the environment's own (e.g. one that encourages
    asking): a declared behaviour policy. The log records the environment's own system message, under which the
    trained policy is evaluated, and names the behaviour prompt in each trajectory's ``policy``."""
    behaviour_turns: list[dict[str, str]] = field(default_factory=list)
    """Worked examples the logging policy is shown before each conversation, as earlier turns of it (user,
    assistant and tool messages, ending with an assistant turn): a declared behaviour policy, like
    ``behaviour_prompt``, and recorded with it in each trajectory's ``policy``; the conversations do not hold them,
    so the trained policy is evaluated without them."""
    chunk_size: int = 64
    """Tasks per resumable chunk (all their trajectories are generated together)."""
    limit: int = 0
    """Use only the first N tasks of the split (0: all)."""


@dataclass
class SimulateConfig:
    """Roll out the logging policy on the training tasks."""

    run_dir: str = "runs/turnrl"
    """The run directory: every stage reads and writes its files here."""
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: BackendConfig = field(default_factory=BackendConfig)
    """The logging policy pi_0."""
    teacher: BackendConfig = field(default_factory=BackendConfig)
    """The LLM teacher (clarify environment only)."""
    rollout: RolloutOptions = field(default_factory=RolloutOptions)
    split: Literal["train", "test"] = "train"
    """Which split to roll out on: train or test."""
    output: str = ROLLOUTS
    """The log to write (default: rollouts/trajectories.jsonl; with continue_from: branches/trajectories.jsonl)."""
    continue_from: str = ""
    """A trajectory log in the run directory: instead of new conversations, branch a fresh action at every step of
    each of its trajectories (from the history before that assistant turn, at the trajectory's own temperature)
    and roll it out to the end -- StepDPO's rollouts (000 Sec. 4). Each branch records meta.branch_of and
    meta.step."""


def simulate(cfg: SimulateConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    if cfg.split not in ("train", "test"):
        raise ConfigError(f"split: {cfg.split!r}; expected train or test")
    ro = cfg.rollout
    if ro.samples < 1 or not ro.temperatures or min(ro.temperatures) < 0:
        raise ConfigError("rollout: samples must be >= 1 and temperatures a non-empty list of values >= 0")
    if not 0.0 <= ro.explore <= 1.0:
        raise ConfigError(f"rollout.explore: {ro.explore}; expected a share between 0 and 1")
    check_behaviour_turns(ro.behaviour_turns)
    train, test = prepare_split(cfg.dataset, run_dir)
    tasks = train if cfg.split == "train" else test
    if ro.limit:
        tasks = tasks[: ro.limit]
    env = make_env(cfg.env)
    settings = env.settings()
    if cfg.continue_from and cfg.output == ROLLOUTS:
        cfg = replace(cfg, output=BRANCHES)
    out = run_dir / cfg.output
    # The environment is compared by its resolved settings, so `turns: 0` (its default) and `turns: 3` are the same.
    check_resume(out, run_dir / (cfg.output + ".config.json"),
                 {k: v for k, v in {**asdict(cfg), "env": settings}.items() if k != "run_dir"}, on_change="refuse")
    if cfg.continue_from:
        jobs, to_trajectory = _branch_jobs(run_dir / cfg.continue_from, train + test, ro.top_p, ro.seed)
    else:
        jobs = build_jobs(tasks, settings, ro.samples, ro.temperatures, ro.top_p, ro.top_k, ro.seed)
        to_trajectory = episode_to_trajectory
        if ro.explore > 0:
            jobs, to_trajectory = _exploratory_jobs(env, jobs, ro.explore, ro.seed)
    written = log_rollouts(out, env, jobs, cfg.policy, chunk_size=ro.chunk_size * ro.samples, desc="simulate",
                           teacher=cfg.teacher, teacher_temperature=ro.teacher_temperature,
                           to_trajectory=to_trajectory, behaviour_prompt=ro.behaviour_prompt,
                           behaviour_turns=ro.behaviour_turns)
    logger.info(f"simulate: wrote {written} trajectories to {out}" if written else
                f"simulate: {out} is complete ({len(jobs)} trajectories)")
    return out


def _exploratory_jobs(env, jobs: list[Job], share: float, seed: int):
    """Open a ``share`` of the jobs with the environment's scripted exploratory turn (``rollout.explore``). A job
    is chosen by a draw from its own id, so the choice does not depend on the other jobs, on chunking or on a
    resume."""
    explored = set()
    out = []
    for job in jobs:
        draw = derive_seed(seed, job.id, "explore")
        if draw % 1_000_000 < share * 1_000_000:
            opening = env.exploratory_opening(job.task, draw // 1_000_000)
            if opening is None:
                raise ConfigError(f"rollout.explore: the {env.name!r} environment has no scripted exploratory "
                                  "action; set rollout.explore to 0")
            job = replace(job, prefix=opening)
            explored.add(job.id)
        out.append(job)

    def to_trajectory(job: Job, episode, env_settings: dict, policy_info: dict, seconds: float) -> Trajectory:
        traj = episode_to_trajectory(job, episode, env_settings, policy_info, seconds)
        if job.id in explored:
            traj.meta = {**traj.meta, "scripted_turns": [0]}
        return traj

    return out, to_trajectory


def continue_jobs(trajectories: list[Trajectory], tasks: dict[str, Task], temperature: float, top_p: float,
                  seed: int, tag: str) -> list[Job]:
    """Jobs that branch from every step of logged trajectories (StepDPO): for trajectory j and step t, continue
    from the history before its t-th assistant turn with a fresh action."""
    jobs = []
    for traj in trajectories:
        assistant_at = traj.assistant_indices()
        for t, idx in enumerate(assistant_at):
            job_id = f"{traj.id}/{tag}{t}"
            task = tasks[traj.task_id]
            # The branch continues in the order the logged conversation showed at that step.
            jobs.append(Job(id=job_id, task=showing(task, traj.order_at(t)) if traj.option_orders else task,
                            sampling=Sampling(temperature=temperature, top_p=top_p, seed=derive_seed(seed, job_id)),
                            prefix=Prefix(messages=traj.messages[:idx], turns=traj.turns[:t])))
    return jobs


def _branch_jobs(log: Path, tasks: list[Task], top_p: float, seed: int):
    """The branch jobs of every step of every logged trajectory, and the conversion of a finished branch into a
    trajectory of the logged one's group that names its origin."""
    logged = read_trajectories(log)
    index = {t.id: t for t in tasks}
    unknown = [t for t in logged if t.task_id not in index]
    if unknown:
        raise InputError(f"{log}: trajectory {unknown[0].id} is about task {unknown[0].task_id!r}, which is not in "
                         "the run's tasks")
    jobs, origin = [], {}
    for traj in logged:
        for step, job in enumerate(continue_jobs([traj], index, traj.temperature, top_p, seed, "b")):
            jobs.append(job)
            origin[job.id] = (traj, step)

    def to_trajectory(job: Job, episode, env_settings: dict, policy_info: dict, seconds: float) -> Trajectory:
        source, step = origin[job.id]
        return Trajectory(
            id=job.id, task_id=source.task_id, group_id=source.group_id, sample=source.sample,
            messages=episode.messages, policy=policy_info, temperature=job.sampling.temperature,
            seed=job.sampling.seed, env=env_settings, turns=episode.turns, finish=episode.finish,
            timing={"seconds": round(seconds, 3)}, meta={**episode.meta, "branch_of": source.id, "step": step},
            option_orders=recorded_orders(job.task, episode),
        )

    return jobs, to_trajectory
