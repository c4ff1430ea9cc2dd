"""``turnrl simulate``: roll out m trajectories per task with an environment and log them as JSONL.

000 logs 3 trajectories per question from the Base model, one per temperature. Here ``samples`` trajectories are
drawn per task, the k-th at ``temperatures[k % len(temperatures)]``, each with its own seed. Tasks are processed
in fixed chunks and every finished chunk is appended to the log, so a killed run restarted with the same
arguments continues where it stopped and ends with exactly the file an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from turnrl.envs import EnvConfig, Prefix, make_env
from turnrl.errors import ConfigError, InputError
from turnrl.generation import BackendConfig, Sampling, derive_seed, make_generator
from turnrl.records import ResumableJsonlWriter, Task, Trajectory, read_json, read_trajectories, write_json
from turnrl.rollout import Job, run_episodes
from turnrl.tasks import DatasetConfig, prepare_split

ROLLOUTS = "rollouts/trajectories.jsonl"
BRANCHES = "branches/trajectories.jsonl"


@dataclass
class RolloutOptions:
    """How many trajectories per task, and how they are sampled."""

    samples: int = 3
    """Trajectories per task (m; 000: 3; DRIFT: K = 16)."""
    temperatures: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9])
    """Temperature of the k-th trajectory of a task: temperatures[k % len] (0: greedy). See docs/results.md for
    how the defaults were measured for SmolLM2-135M."""
    top_p: float = 0.95
    top_k: int = 0
    teacher_temperature: float = 0.0
    seed: int = 0
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


def env_group_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def build_jobs(tasks: list[Task], settings: dict, samples: int, temperatures: list[float], top_p: float,
               top_k: int, seed: int) -> list[Job]:
    group_suffix = env_group_key(settings)
    jobs = []
    for task in tasks:
        for k in range(samples):
            traj_id = f"{task.id}@{group_suffix}#{k}"
            jobs.append(Job(id=traj_id, task=task, sampling=Sampling(
                temperature=temperatures[k % len(temperatures)], top_p=top_p, top_k=top_k,
                seed=derive_seed(seed, traj_id))))
    return jobs


def episode_to_trajectory(job: Job, episode, env_settings: dict, policy_info: dict, seconds: float) -> Trajectory:
    task_id = job.task.id
    return Trajectory(
        id=job.id, task_id=task_id, group_id=job.id.rsplit("#", 1)[0], sample=int(job.id.rsplit("#", 1)[1]),
        messages=episode.messages, policy=policy_info, temperature=job.sampling.temperature,
        seed=job.sampling.seed, env=env_settings, turns=episode.turns, finish=episode.finish,
        timing={"seconds": round(seconds, 3)}, meta=episode.meta,
    )


def _check_resume(cfg: SimulateConfig, run_dir: Path, out: Path, env_settings: dict) -> None:
    """A restarted run must use the arguments of the run it continues, or its records would not match. The
    environment is compared by its resolved settings, so `turns: 0` (its default) and `turns: 3` are the same."""
    record = run_dir / (cfg.output + ".config.json")
    current = {**asdict(cfg), "env": env_settings}
    if record.exists() and out.exists():
        old = read_json(record)
        diff = {k: (old.get(k), v) for k, v in current.items() if old.get(k) != v and k != "run_dir"}
        if diff:
            raise ConfigError(
                f"{out} was started with other settings {sorted(diff)}; resuming would mix two runs. "
                "Use the same settings, another --output, or delete the file to start over."
            )
    write_json(record, current)


def simulate(cfg: SimulateConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    if cfg.split not in ("train", "test"):
        raise ConfigError(f"split: {cfg.split!r}; expected train or test")
    ro = cfg.rollout
    if ro.samples < 1 or not ro.temperatures or min(ro.temperatures) < 0:
        raise ConfigError("rollout: samples must be >= 1 and temperatures a non-empty list of values >= 0")
    train, test = prepare_split(cfg.dataset, run_dir)
    tasks = train if cfg.split == "train" else test
    if ro.limit:
        tasks = tasks[: ro.limit]
    env = make_env(cfg.env)
    settings = env.settings()
    if cfg.continue_from and cfg.output == ROLLOUTS:
        cfg = replace(cfg, output=BRANCHES)
    out = run_dir / cfg.output
    _check_resume(cfg, run_dir, out, settings)
    if cfg.continue_from:
        tasks, jobs, to_trajectory = _branch_jobs(run_dir / cfg.continue_from, train + test, ro.top_p, ro.seed)
    else:
        jobs = build_jobs(tasks, settings, ro.samples, ro.temperatures, ro.top_p, ro.top_k, ro.seed)
        to_trajectory = episode_to_trajectory
    with ResumableJsonlWriter(out) as writer:
        todo_tasks = [t for t in tasks if any(j.id not in writer.done for j in jobs if j.task.id == t.id)]
        if not todo_tasks:
            print(f"simulate: {out} is complete ({len(jobs)} trajectories)")
            return out
        policy = make_generator(cfg.policy)
        teacher = make_generator(cfg.teacher) if getattr(env, "needs_teacher", False) else None
        policy_info = {"model": cfg.policy.model, "revision": getattr(policy, "revision", ""),
                       "backend": cfg.policy.backend}
        chunks = [tasks[i: i + ro.chunk_size] for i in range(0, len(tasks), ro.chunk_size)]
        chunk_jobs_of = [[j for j in jobs if j.task.id in {t.id for t in chunk}] for chunk in chunks]
        finished = [all(j.id in writer.done for j in cj) for cj in chunk_jobs_of]
        bar = tqdm(total=len(jobs), initial=sum(len(cj) for cj, f in zip(chunk_jobs_of, finished) if f),
                   desc="simulate", unit="traj")
        for chunk_jobs, done in zip(chunk_jobs_of, finished):
            if done:
                continue  # finished in an earlier run
            start = time.perf_counter()
            episodes = run_episodes(env, chunk_jobs, policy, teacher=teacher,
                                    teacher_sampling=Sampling(temperature=ro.teacher_temperature),
                                    run_code=getattr(env, "run_code", None), progress=bar)
            seconds = (time.perf_counter() - start) / len(chunk_jobs)
            writer.write(to_trajectory(j, e, settings, policy_info, seconds)
                         for j, e in zip(chunk_jobs, episodes))
        bar.close()
    print(f"simulate: wrote {len(jobs)} trajectories to {out}")
    return out


def continue_jobs(trajectories: list[Trajectory], tasks: dict[str, Task], temperature: float, top_p: float,
                  seed: int, tag: str) -> list[Job]:
    """Jobs that branch from every step of logged trajectories (StepDPO): for trajectory j and step t, continue
    from the history before its t-th assistant turn with a fresh action."""
    jobs = []
    for traj in trajectories:
        assistant_at = traj.assistant_indices()
        for t, idx in enumerate(assistant_at):
            job_id = f"{traj.id}/{tag}{t}"
            jobs.append(Job(id=job_id, task=tasks[traj.task_id],
                            sampling=Sampling(temperature=temperature, top_p=top_p, seed=derive_seed(seed, job_id)),
                            prefix=Prefix(messages=traj.messages[:idx], turns=traj.turns[:t])))
    return jobs


def _branch_jobs(log: Path, tasks: list[Task], top_p: float, seed: int):
    """The branch jobs of every step of every logged trajectory, the tasks they cover (in log order), and the
    conversion of a finished branch into a trajectory of the logged one's group that names its origin."""
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
    covered = list(dict.fromkeys(t.task_id for t in logged))

    def to_trajectory(job: Job, episode, env_settings: dict, policy_info: dict, seconds: float) -> Trajectory:
        source, step = origin[job.id]
        return Trajectory(
            id=job.id, task_id=source.task_id, group_id=source.group_id, sample=source.sample,
            messages=episode.messages, policy=policy_info, temperature=job.sampling.temperature,
            seed=job.sampling.seed, env=env_settings, turns=episode.turns, finish=episode.finish,
            timing={"seconds": round(seconds, 3)}, meta={**episode.meta, "branch_of": source.id, "step": step},
        )

    return [index[t] for t in covered], jobs, to_trajectory


def load_rollouts(run_dir: Path, name: str = ROLLOUTS) -> list[Trajectory]:
    return read_trajectories(run_dir / name)
