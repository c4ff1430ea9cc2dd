"""The rollout engine: drive many conversations at once, batching every pending request of a kind.

Each conversation is an environment coroutine (see :mod:`turnrl.envs.base`). In every round the engine collects
what all unfinished conversations wait for -- the policy's next turn, a teacher's reply, a code execution -- and
serves each kind with one batched backend call (code runs in a pool, concurrently), so conversations at different
turns share the same generation batches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from tqdm.auto import tqdm

from turnrl.envs.base import Environment, Episode, PolicyTurn, Prefix, TeacherTurn, ToolRun
from turnrl.generation import GenRequest, Generator, Sampling, derive_seed, release_sessions
from turnrl.records import Task


@dataclass
class Job:
    """One conversation to run: a task, the policy's sampling settings, and optionally a prefix to continue."""

    id: str
    task: Task
    sampling: Sampling
    prefix: Prefix | None = None


def run_episodes(
    env: Environment,
    jobs: list[Job],
    policy: Generator,
    teacher: Generator | None = None,
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
