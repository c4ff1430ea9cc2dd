"""What an environment is: a coroutine per conversation that asks for turns and returns the finished episode.

An environment's :meth:`Environment.episode` is a Python generator. It yields a request whenever it needs
something it cannot do itself -- the policy's next turn (:class:`PolicyTurn`), an LLM teacher's reply
(:class:`TeacherTurn`), a sandboxed code execution (:class:`ToolRun`) -- receives the answer through ``send``, and
finally returns an :class:`Episode`. The rollout engine drives many such coroutines at once and batches every
pending request of a kind into one backend call, so an environment is written as a plain sequential script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generator

from turnrl.records import Task, TurnInfo


@dataclass
class PolicyTurn:
    """The policy must produce the next assistant message of ``messages``."""

    messages: list[dict[str, str]]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)


@dataclass
class TeacherTurn:
    """An LLM teacher must reply to ``messages`` (the teacher's own view of the conversation)."""

    messages: list[dict[str, str]]
    max_new_tokens: int


@dataclass
class ToolRun:
    """Code to execute in the sandbox; the answer is a :class:`turnrl.sandbox.ExecResult`."""

    code: str


@dataclass
class Episode:
    messages: list[dict[str, str]]
    turns: list[TurnInfo]
    finish: str = "done"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prefix:
    """A logged conversation prefix to continue from; it ends where the policy is to act next."""

    messages: list[dict[str, str]]
    turns: list[TurnInfo]


Request = PolicyTurn | TeacherTurn | ToolRun
EpisodeCoroutine = Generator[Request, Any, Episode]


class Environment:
    """Base class. Subclasses set ``name`` and implement :meth:`episode` and :meth:`settings`."""

    name = "base"
    shuffle_options = True
    """Multiple choice: each conversation shows its options in its own drawn order (``EnvConfig.shuffle_options``;
    set by ``make_env``). Read by the rollout driver through :meth:`settings`."""

    def settings(self) -> dict[str, Any]:
        """The settings that define the environment, recorded with every trajectory (part of the group key)."""
        raise NotImplementedError

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        """Run one conversation on ``task``; with ``prefix``, continue a logged conversation from where it ends
        (StepDPO's branching)."""
        raise NotImplementedError

    def exploratory_opening(self, task: Task, draw: int) -> Prefix | None:
        """The opening of a conversation whose first assistant turn is a scripted exploratory action instead of
        the logging policy's (``rollout.explore``); ``draw`` picks among the environment's phrasings. None: the
        environment has no such action."""
        return None

    needs_teacher = False
    """True for environments whose observations come from an LLM teacher (the engine then needs a teacher)."""

    metric_descriptions: dict[str, tuple[bool, str]] = {}
    """name (or ``family@k`` family) -> (summarised as a proportion, description), for ``metrics.md``."""

    def metrics(self, trajectory, task: Task) -> dict[str, float]:
        """Environment-specific outcomes of a finished conversation, reported by ``turnrl evaluate`` next to the
        common ones (e.g. multi@k for the feedback environment, tool-call rate for the tool environment).
        Values in {0, 1} are summarised as proportions."""
        return {}

    @staticmethod
    def policy_turn(messages: list[dict[str, str]], turns: list[TurnInfo], max_new_tokens: int,
                    stop: list[str] | None = None) -> Generator[Request, Any, Any]:
        """Ask for the policy's next message, append it, record whether it ended by itself; return the result."""
        result = yield PolicyTurn(messages=list(messages), max_new_tokens=max_new_tokens, stop=stop or [])
        messages.append({"role": "assistant", "content": result.text})
        turns.append(TurnInfo(tokens=result.tokens, truncated=result.truncated))
        return result


class AskThenAnswer(Environment):
    """At most two assistant turns with a scripted user between: the policy's first turn, the user's reply to it
    (:meth:`user_reply`; None ends the conversation, e.g. after an answer), then the final answer. Subclasses give
    :meth:`opening`, :meth:`user_reply`, ``max_new_tokens`` and ``final_max_new_tokens``."""

    turns = 2
    max_new_tokens: int
    final_max_new_tokens: int

    def opening(self, task: Task) -> list[dict[str, str]]:
        raise NotImplementedError

    def user_reply(self, task: Task, first: str, prompt: str) -> str | None:
        """The user's reply to the first assistant turn ``first`` (``prompt``: the user message it answers)."""
        raise NotImplementedError

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        if prefix is None:
            messages = self.opening(task)
            turns: list[TurnInfo] = []
        else:
            messages, turns = list(prefix.messages), list(prefix.turns)
        if not turns:
            yield from self.policy_turn(messages, turns, self.max_new_tokens)
        if len(turns) == 1:
            reply = self.user_reply(task, messages[-1]["content"], messages[-2]["content"])
            if reply is None:
                return Episode(messages=messages, turns=turns, finish="answered")
            messages.append({"role": "user", "content": reply})
            yield from self.policy_turn(messages, turns, self.final_max_new_tokens)
        return Episode(messages=messages, turns=turns, finish="done")
