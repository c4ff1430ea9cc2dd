"""The rollout engine, and the one driver that logs rollouts for simulate, evaluate and iterate.

Each conversation is an environment coroutine (see :mod:`turnrl.envs.base`). In every round the engine collects
what all unfinished conversations wait for -- the policy's next turn, a teacher's reply, a code execution -- and
serves each kind with one batched backend call (code runs in a pool, concurrently), so conversations at different
turns share the same generation batches.

:func:`log_rollouts` runs a list of jobs chunk by chunk into a resumable JSONL log of trajectories: a killed run
restarted with the same jobs redoes only its unfinished chunk (the same batch as before, so the same numerics) and
ends with exactly the file an uninterrupted run writes. :func:`check_resume` refuses (or restarts) a log that was
started with other settings.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from tqdm.auto import tqdm

from turnrl.envs.base import Environment, Episode, PolicyTurn, Prefix, TeacherTurn, ToolRun
from turnrl.errors import ConfigError
from turnrl.generation import BackendConfig, GenRequest, GenResult, Backend, Sampling, derive_seed, \
    make_generator, release_sessions
from turnrl.records import ResumableJsonlWriter, Task, Trajectory, read_json, write_json
from turnrl.tasks import option_order
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class Job:
    """One conversation to run: a task, the policy's sampling settings, and optionally a prefix to continue.
    ``group`` and ``sample``: the group of conversations it belongs to (those Swift standardises over) and its
    index there; a job without a group is a group of its own."""

    id: str
    task: Task
    sampling: Sampling
    prefix: Prefix | None = None
    group: str = ""
    sample: int = 0


def run_episodes(
    env: Environment,
    jobs: list[Job],
    policy: Backend,
    teacher: Backend | None = None,
    teacher_sampling: Sampling | None = None,
    run_code: Callable[[list[str]], list[Any]] | None = None,
    desc: str | None = None,
    progress: Any = None,
) -> list[Episode]:
    """Run every job's conversation to its end and return the episodes in job order.

    The policy's turn k of job j is sampled with seed ``derive_seed(job.sampling.seed, k)``, so a conversation's
    randomness depends only on its own seed. ``progress``: a tqdm bar to advance per finished conversation (else
    one of its own is shown when ``desc`` is given).
    """
    coroutines = [env.episode(job.task, job.prefix) for job in jobs]
    episodes: list[Episode | None] = [None] * len(jobs)
    pending: dict[int, Any] = {}
    policy_turns = [0] * len(jobs)
    teacher_turns = [0] * len(jobs)
    bar = progress or tqdm(total=len(jobs), desc=desc or "rollout", unit="conv", disable=desc is None)

    def advance(i: int, value: Any) -> None:
        try:
            pending[i] = coroutines[i].send(value)
        except StopIteration as stop:
            pending.pop(i, None)
            episodes[i] = stop.value
            release_sessions(policy, [jobs[i].id])
            if teacher is not None:
                release_sessions(teacher, [f"{jobs[i].id}/teacher"])
            bar.update(1)

    for i in range(len(jobs)):
        advance(i, None)
    while pending:
        waiting = list(pending.items())
        policy_wait = [(i, r) for i, r in waiting if isinstance(r, PolicyTurn)]
        if policy_wait:
            requests = [
                GenRequest(messages=r.messages, session=jobs[i].id, sampling=replace(
                    jobs[i].sampling, max_new_tokens=r.max_new_tokens, stop=r.stop,
                    seed=derive_seed(jobs[i].sampling.seed, "policy", policy_turns[i])))
                for i, r in policy_wait
            ]
            for (i, _), result in zip(policy_wait, policy.generate(requests)):
                policy_turns[i] += 1
                advance(i, result)
            # Conversations advance turn by turn together, so finished ones arrive in bursts: show the turns too.
            bar.set_postfix_str(f"{sum(policy_turns)} policy turns", refresh=True)
        teacher_wait = [(i, r) for i, r in waiting if isinstance(r, TeacherTurn)]
        if teacher_wait:
            if teacher is None:
                raise RuntimeError(f"environment {env.name!r} needs a teacher backend, and none is configured")
            base = teacher_sampling or Sampling()
            requests = [
                GenRequest(messages=r.messages, session=f"{jobs[i].id}/teacher", sampling=replace(
                    base, max_new_tokens=r.max_new_tokens,
                    seed=derive_seed(jobs[i].sampling.seed, "teacher", teacher_turns[i])))
                for i, r in teacher_wait
            ]
            for (i, _), result in zip(teacher_wait, teacher.generate(requests)):
                teacher_turns[i] += 1
                advance(i, result)
        tool_wait = [(i, r) for i, r in waiting if isinstance(r, ToolRun)]
        if tool_wait:
            if run_code is None:
                raise RuntimeError(f"environment {env.name!r} runs code, and no sandbox is configured")
            for (i, _), result in zip(tool_wait, run_code([r.code for _, r in tool_wait])):
                advance(i, result)
    if progress is None:
        bar.close()
    return episodes  # type: ignore[return-value]


def env_group_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def build_jobs(tasks: list[Task], settings: dict, samples: int, temperatures: list[float], top_p: float,
               top_k: int, seed: int) -> list[Job]:
    """``samples`` jobs per task, the k-th at ``temperatures[k % len]``, each seeded by its id. The id
    ``<task>@<env settings hash>#<k>`` names the group (the part before ``#``) that Swift standardises over.

    Where the environment shuffles options (``env.shuffle_options``, the default), each job shows its
    multiple-choice task in its own order (:func:`shuffled`), with the gold option's position balanced: the
    questions are ranked by a draw from ``seed`` and the k-th sample of the question of rank r shows the gold at
    position (r + k) mod (its number of options). So every position holds the gold equally often (to one item)
    over the questions of the list, and over the m samples of a question: a constant letter scores 1/k by
    construction, not only in expectation. The other options' order is drawn from the job's seed."""
    group_suffix = env_group_key(settings)
    rank = {t.id: r for r, t in enumerate(sorted(tasks, key=lambda t: derive_seed(seed, "gold position", t.id)))}
    jobs = []
    for task in tasks:
        group = f"{task.id}@{group_suffix}"
        for k in range(samples):
            traj_id = f"{group}#{k}"
            job_seed = derive_seed(seed, traj_id)
            shown = shuffled(task, job_seed, rank[task.id] + k) if settings.get("shuffle_options") else task
            jobs.append(Job(id=traj_id, task=shown, group=group, sample=k, sampling=Sampling(
                temperature=temperatures[k % len(temperatures)], top_p=top_p, top_k=top_k, seed=job_seed)))
    return jobs


def shuffled(task: Task, seed: int, gold_position: int) -> Task:
    """``task`` shown with its gold option at ``gold_position`` (mod its number of options) and the others in an
    order drawn from ``seed`` (see :func:`showing`)."""
    if not task.choices:
        return task
    options_seed = derive_seed(seed, "options")
    n = len(task.choices)
    order = option_order(n, options_seed, keep=task.letters.index(task.answer), at=gold_position % n)
    return showing(task, order, options_seed)


def showing(task: Task, order: list[int], options_seed: int | None = None) -> Task:
    """``task`` shown in ``order``. The order (and the seed that re-orders a retry, where given) ride in the shown
    task's meta (``option_order``, ``options_seed``), where the environment and :func:`episode_to_trajectory`
    (which records the order) find them."""
    extra = {"option_order": order, **({} if options_seed is None else {"options_seed": options_seed})}
    return replace(task.shown_in(order), meta={**task.meta, **extra})


def episode_to_trajectory(job: Job, episode: Episode, env_settings: dict, policy_info: dict,
                          seconds: float) -> Trajectory:
    return Trajectory(
        id=job.id, task_id=job.task.id, group_id=job.group or job.id, sample=job.sample,
        messages=episode.messages, policy=policy_info, temperature=job.sampling.temperature,
        seed=job.sampling.seed, env=env_settings, turns=episode.turns, finish=episode.finish,
        timing={"seconds": round(seconds, 3)}, meta={k: v for k, v in episode.meta.items() if k != "option_orders"},
        option_orders=recorded_orders(job.task, episode),
    )


def recorded_orders(task: Task, episode: Episode) -> list[list[int]]:
    """The option order of each assistant turn, relative to the task's own order: the job's order, composed with
    any re-ordering the environment did during the conversation (``episode.meta["option_orders"]``, relative to
    the shown task; the feedback environment's retries)."""
    base = task.meta.get("option_order")
    if not task.choices or base is None:
        return []
    n_turns = sum(m["role"] == "assistant" for m in episode.messages)
    within = episode.meta.get("option_orders") or [list(range(len(base)))] * n_turns
    return [[base[j] for j in order] for order in within]


def _same_setting(old: Any, new: Any) -> bool:
    """Whether a recorded setting equals the current one. Only the options both know are compared: an option added
    to a config section after the record was written (or since removed) does not count as a change, as options
    default to the behaviour that came before them."""
    if isinstance(old, dict) and isinstance(new, dict):
        return all(_same_setting(v, new[k]) for k, v in old.items() if k in new)
    return old == new


def check_resume(out: Path, record: Path, fingerprint: dict[str, Any],
                 on_change: Literal["refuse", "restart"]) -> None:
    """Record the settings a log is written with. A log that holds records and was started with other settings
    would mix two runs: refuse, naming the changed settings, or delete it and start over. A log without records
    is not a run to protect."""
    if record.exists() and out.exists() and out.stat().st_size > 0:
        old = read_json(record)
        changed = sorted(k for k in fingerprint if not _same_setting(old.get(k), fingerprint[k]))
        if changed and on_change == "refuse":
            raise ConfigError(f"{out} was started with other settings {changed}; resuming would mix two runs. "
                              "Use the same settings, another --output, or delete the file to start over.")
        if changed:
            logger.info(f"{out}: written with other settings {changed}; starting over")
            out.unlink()
    write_json(record, fingerprint)


BEHAVIOUR_ROLES = ("user", "assistant", "tool")


def check_behaviour_turns(turns: list[dict[str, str]]) -> None:
    """``rollout.behaviour_turns``: user, assistant and tool messages with text, ending with an assistant turn."""
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or m.get("role") not in BEHAVIOUR_ROLES or not isinstance(m.get("content"), str) \
                or set(m) - {"role", "content"}:
            raise ConfigError(f"rollout.behaviour_turns[{i}]: {m!r}; expected a message {{role, content}} with role "
                              f"{', '.join(BEHAVIOUR_ROLES)} and text content")
    if turns and turns[-1]["role"] != "assistant":
        raise ConfigError("rollout.behaviour_turns: the last message is a "
                          f"{turns[-1]['role']} message; worked examples end with the assistant's turn")


class BehaviourPrompt:
    """A backend that shows the policy ``system`` in place of each conversation's own system message, and ``turns``
    (worked examples, as earlier turns of the conversation) before the conversation's own messages: a declared
    logging policy (``rollout.behaviour_prompt``, ``rollout.behaviour_turns``). The conversations keep, and the
    log records, only the environment's own messages, under which the trained policy is evaluated."""

    def __init__(self, backend: Backend, system: str, turns: list[dict[str, str]] | None = None):
        check_behaviour_turns(turns or [])
        self.backend, self.system, self.turns = backend, system, list(turns or [])
        self.name = backend.name

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]:
        def shown(messages: list[dict[str, str]]) -> list[dict[str, str]]:
            system = [{"role": "system", "content": self.system}] if self.system else \
                [m for m in messages if m["role"] == "system"]
            return [*system, *self.turns, *[m for m in messages if m["role"] != "system"]]

        return self.backend.generate([replace(r, messages=shown(r.messages)) for r in requests], desc)

    def __getattr__(self, name: str) -> Any:  # revision, release, ...: the wrapped backend's
        return getattr(self.backend, name)


def log_rollouts(out: Path, env: Environment, jobs: list[Job], policy: BackendConfig, *, chunk_size: int,
                 desc: str, teacher: BackendConfig | None = None, teacher_temperature: float = 0.0,
                 generator: Backend | None = None,
                 to_trajectory: Callable[..., Trajectory] = episode_to_trajectory,
                 behaviour_prompt: str = "", behaviour_turns: list[dict[str, str]] | None = None) -> int:
    """Roll out every job of ``jobs`` that ``out`` does not hold yet and append its trajectory, ``chunk_size``
    jobs at a time (in the order of ``jobs``; a chunk is one batch of conversations). The backends are loaded only
    if there is work; ``generator`` reuses a loaded policy. ``behaviour_prompt``: the system message the policy is
    shown instead of the environment's; ``behaviour_turns``: worked examples shown before each conversation
    (:class:`BehaviourPrompt`). Returns how many trajectories were written."""
    with ResumableJsonlWriter(out) as writer:
        chunks = [jobs[i: i + chunk_size] for i in range(0, len(jobs), chunk_size)]
        todo = [chunk for chunk in chunks if any(j.id not in writer.done for j in chunk)]
        if not todo:
            return 0
        generator = generator or make_generator(policy)
        if behaviour_prompt or behaviour_turns:
            generator = BehaviourPrompt(generator, behaviour_prompt, behaviour_turns)
        teacher_generator = make_generator(teacher) if teacher is not None and env.needs_teacher else None
        info = {"model": policy.model, "revision": getattr(generator, "revision", ""),
                "backend": getattr(generator, "name", policy.backend),
                **({"behaviour_prompt": behaviour_prompt} if behaviour_prompt else {}),
                **({"behaviour_turns": behaviour_turns} if behaviour_turns else {})}
        done = len(writer.done)
        bar = tqdm(total=len(jobs), initial=len(jobs) - sum(map(len, todo)), desc=desc, unit="conv")
        for chunk in todo:
            start = time.perf_counter()
            episodes = run_episodes(env, chunk, generator, teacher=teacher_generator,
                                    teacher_sampling=Sampling(temperature=teacher_temperature),
                                    run_code=getattr(env, "run_code", None), progress=bar)
            seconds = (time.perf_counter() - start) / len(chunk)
            # A chunk redone after a kill may hold records already written: the writer skips their ids.
            writer.write(to_trajectory(j, e, env.settings(), info, seconds) for j, e in zip(chunk, episodes))
        bar.close()
        return len(writer.done) - done
