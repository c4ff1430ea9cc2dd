"""Tool-integrated math (003): the assistant writes Python, a sandboxed interpreter runs it, its output comes back.

The protocol, as 003 runs it (its infer_eval.py):

- the question alone is the first user message, zero-shot, in the model's own chat template (``instruction``
  appends a sentence for models not trained on the format; 003 has none);
- an assistant turn that contains a ```` ```python ```` block and no ``\\boxed`` is a tool call. Generation stops
  at the block's closing fence (stop string ```` ```\\n````) or where the model starts to write the output
  itself (```` ```output````, which is removed from the turn);
- the block runs in the sandbox (:mod:`turnrl.sandbox`) and its result comes back as a ``tool`` message
  ```` ```output\\n{result}\\n``` ```` (templates without a tool role get it as a user message, see
  :func:`turnrl.chat.fit_roles`): the printed output, the error's last line, "Timeout Error", or "Result is not
  defined" when nothing was printed;
- any other turn ends the conversation: with a ``\\boxed{}`` answer, or without one (finish ``done``);
- after the H-th tool call (``max_tool_calls``, 003: 6) the conversation ends with finish ``tool_limit``, the last
  observation carrying 003's note "Reach max function call limit.".

State across tool calls is kept by **replay**, as 003's executor does: each execution runs every block of the
conversation so far, in order, in a fresh sandbox, and returns the last block's output. Blocks that timed out,
crashed or exited the interpreter are left out of later replays (see ``REPLAYED``); blocks that raised a Python
exception are replayed (their statements up to the exception take effect again). A live interpreter per
conversation would be cheaper for long conversations, but replay makes an observation a function of the visible
conversation alone: it is deterministic (003's analysis needs that), survives restarts and resumption, and lets
StepDPO branch from any logged prefix without re-creating interpreter state. With H = 6 a conversation replays
at most 21 blocks in all.
"""

from __future__ import annotations

import re
from typing import Any

from turnrl.envs.base import Environment, Episode, EpisodeCoroutine, Prefix, ToolRun
from turnrl.records import Task, TurnInfo
from turnrl.sandbox import ExecResult, Sandbox, SandboxConfig, join_cells

STOP = ["```output", "```\n"]
"""Generation stops at a python block's closing fence or where the model starts to write the output itself."""
LIMIT_NOTE = "Reach max function call limit."
DEFAULT_INSTRUCTION = ("Solve the problem with Python: write code in a ```python block and its output will be "
                       "shown to you. Put your final answer within \\boxed{}.")


def python_blocks(text: str) -> list[str]:
    """The code of every ```` ```python ```` block in ``text``, in order (003's extract_program): a block starts at a
    line containing ```` ```python ```` and ends at the next line starting with ```` ``` ```` or at the end."""
    blocks, current = [], None
    for line in text.split("\n"):
        if "```python" in line:
            current = []
        elif current is not None and line.startswith("```"):
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    if current is not None:
        blocks.append("\n".join(current))
    return blocks


def observation(result: ExecResult) -> str:
    return f"```output\n{result.observation}\n```"


def is_tool_call(text: str) -> bool:
    """003: a turn with a python block and no boxed answer asks for an execution."""
    return "boxed" not in text and "```python" in text


_PYTHON_ERROR = re.compile(r"^```output\n[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b")
_FATAL = re.compile(r"^```output\n(?:Timeout Error|Process (?:killed|exited)|CPU time limit exceeded)")
REPLAYED = ("ok", "error")
"""Executions whose block is replayed in later calls: those that ran to the end or raised a Python exception.
A block that timed out, crashed the interpreter or exited is not: replaying it would poison every later call
(a live interpreter would have been interrupted or restarted there)."""


def observation_status(content: str) -> str:
    """ok, error or fatal, read from a logged observation (for logs without the per-call record)."""
    return "fatal" if _FATAL.match(content) else "error" if _PYTHON_ERROR.match(content) else "ok"


class ToolEnv(Environment):
    name = "tool"

    def __init__(self, max_tool_calls: int = 6, max_new_tokens: int = 512, tool_timeout: float = 5.0,
                 instruction: str = "", sandbox: SandboxConfig | None = None):
        if max_tool_calls < 1:
            raise ValueError(f"max_tool_calls must be at least 1, got {max_tool_calls}")
        if tool_timeout <= 0:
            raise ValueError(f"tool_timeout must be positive, got {tool_timeout}")
        self.max_tool_calls = max_tool_calls
        self.max_new_tokens = max_new_tokens
        self.instruction = instruction
        self.sandbox_config = sandbox or SandboxConfig()
        self.sandbox_config.timeout = tool_timeout
        self._sandbox: Sandbox | None = None

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "max_tool_calls": self.max_tool_calls, "max_new_tokens": self.max_new_tokens,
                "tool_timeout": self.sandbox_config.timeout, "instruction": self.instruction}

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(self.sandbox_config)
        return self._sandbox

    def run_code(self, programs: list[str]) -> list[ExecResult]:
        """Run every pending execution at once (the rollout engine calls this with all of a round's ToolRuns)."""
        return self.sandbox.run_many(programs)

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def first_turn(self, task: Task) -> str:
        return f"{task.question}\n\n{self.instruction}" if self.instruction else task.question

    def episode(self, task: Task, prefix: Prefix | None = None) -> EpisodeCoroutine:
        if prefix is None:
            messages = [{"role": "user", "content": self.first_turn(task)}]
            turns: list[TurnInfo] = []
        else:
            messages, turns = list(prefix.messages), list(prefix.turns)
        # Replay state: the blocks of the earlier tool calls that ran to the end or raised, in order.
        cells: list[str] = []
        calls: list[dict[str, Any]] = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
                status = observation_status(messages[i + 1]["content"])
                if status in REPLAYED:
                    cells.extend(python_blocks(m["content"])[-1:])
                calls.append({"status": status, "from_prefix": True})
        finish = "done"
        while True:
            if len(calls) >= self.max_tool_calls:
                finish = "tool_limit"
                break
            yield from self.policy_turn(messages, turns, self.max_new_tokens, stop=STOP)
            # The turn stays as generated (its tokens are the ones trained on), less an output the model began
            # to write itself.
            text = messages[-1]["content"]
            if text.endswith("```output"):
                messages[-1]["content"] = text = text[: -len("```output")]
            blocks = python_blocks(text)
            if not is_tool_call(text) or not blocks:
                break
            result: ExecResult = yield ToolRun(code=join_cells(cells + blocks[-1:]))
            if result.status in REPLAYED:
                cells.append(blocks[-1])
            calls.append({"status": result.status, "error": result.error, "truncated": result.truncated,
                          "seconds": result.wall_seconds})
            content = observation(result)
            if len(calls) >= self.max_tool_calls:
                content += "\n" + LIMIT_NOTE
            messages.append({"role": "tool", "content": content})
        isolation = self._sandbox.isolation if self._sandbox is not None else []
        return Episode(messages=messages, turns=turns, finish=finish,
                       meta={"tool": {"calls": calls, "sandbox": ",".join(isolation)}})

    metric_descriptions = {"tool_calls": (False, "code executions per conversation"),
                           "used_tool": (True, "conversations that ran code (tool-call rate)"),
                           "exec_error": (True, "share of a conversation's executions that failed"),
                           "tool_limit": (True, "stopped at the tool-call limit"),
                           "boxed": (True, "final turn has a \\boxed answer")}

    def metrics(self, trajectory, task: Task) -> dict[str, float]:
        """tool_calls (count), used_tool (the tool-call rate), exec_error (share of this conversation's executions
        that failed; absent without executions), tool_limit, boxed (the final turn has a \\boxed answer)."""
        calls = (trajectory.meta.get("tool") or {}).get("calls")
        if calls is None:  # a log without the per-call record: read the observations
            calls = [{"status": observation_status(m["content"])} for m in trajectory.messages if m["role"] == "tool"]
        failed = sum(c["status"] != "ok" for c in calls)
        out = {"tool_calls": float(len(calls)), "used_tool": float(bool(calls)),
               "tool_limit": float(trajectory.finish == "tool_limit"),
               "boxed": float("\\boxed" in trajectory.final_assistant())}
        if calls:
            out["exec_error"] = failed / len(calls)
        return out
