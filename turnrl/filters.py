"""003's filters on tool-integrated trajectories, applied before building preference pairs (M-DPO, M-KTO).

003 (its paper's "Data Annotation" and its filter scripts) drops, before pairing:

- ``no_tool_call``: trajectories without any code execution (its code: fewer than 4 messages);
- ``tool_limit``: trajectories that hit the tool-call limit and never gave a final turn ("Reach max function
  call limit.");
- ``error_in_correct``: correct trajectories whose last execution failed -- the answer is right although the code
  behind it was broken, so it was memorised or guessed (the paper: "delete winning trajectories whose last
  observation shows a code bug");
- ``over_length``: trajectories longer than 2048 tokens in the model's chat template;
- ``duplicate_first_turn``: within a group (one prompt), all but the first trajectory with the same first
  assistant message.

Each dropped trajectory is counted once, under the first of these reasons (in this order) that applies; the
duplicate check sees only trajectories that passed the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from turnrl.errors import ConfigError, InputError
from turnrl.records import Trajectory

REASONS = ("no_tool_call", "tool_limit", "error_in_correct", "over_length", "duplicate_first_turn")


@dataclass
class ToolFilterConfig:
    """Which of 003's filters to apply."""

    require_tool_call: bool = True
    """Drop trajectories without any code execution."""
    drop_tool_limit: bool = True
    """Drop trajectories that ended at the tool-call limit without a final turn."""
    drop_error_in_correct: bool = True
    """Drop correct trajectories whose last execution failed."""
    max_tokens: int = 2048
    """Drop trajectories longer than this many tokens in the model's chat template (0: no limit)."""
    dedup_first_turn: bool = True
    """Keep one trajectory per distinct first assistant message within a group."""


@dataclass
class FilterResult:
    kept: list[Trajectory]
    counts: dict[str, int] = field(default_factory=dict)
    """input, each reason in REASONS (dropped for it), kept."""


def _accuracy(traj: Trajectory) -> bool:
    if "accuracy" not in traj.rewards:
        raise InputError(f"trajectory {traj.id}: no 'accuracy' reward; score the trajectories first (turnrl score)")
    return float(traj.rewards["accuracy"]) >= 0.5


def last_execution_failed(traj: Trajectory) -> bool:
    """Whether the last code execution of the trajectory failed (a Python error, timeout, crash or limit)."""
    calls = (traj.meta.get("tool") or {}).get("calls")
    if calls:
        return calls[-1]["status"] != "ok"
    from turnrl.envs.tool import observation_status

    observations = [m["content"] for m in traj.messages if m["role"] == "tool"]
    return bool(observations) and observation_status(observations[-1]) != "ok"


def filter_tool_trajectories(trajectories: list[Trajectory], cfg: ToolFilterConfig | None = None, tokenizer=None,
                             is_correct: Callable[[Trajectory], bool] | None = None) -> FilterResult:
    """Apply 003's filters; return the kept trajectories (in input order) and how many each filter dropped.

    ``tokenizer`` renders the conversations for the length filter (the trained model's); ``is_correct`` says
    whether a trajectory's answer is right (default: its ``accuracy`` reward is 1).
    """
    cfg = cfg or ToolFilterConfig()
    if cfg.max_tokens > 0 and tokenizer is None:
        raise ConfigError("filters.max_tokens: the length filter needs the model's tokenizer (or set it to 0)")
    correct = is_correct or _accuracy
    counts = {"input": len(trajectories), **{reason: 0 for reason in REASONS}, "kept": 0}
    seen_first_turns: set[tuple[str, str]] = set()
    kept = []
    for traj in trajectories:
        reason = _reason(traj, cfg, tokenizer, correct)
        if reason is None and cfg.dedup_first_turn:
            idx = traj.assistant_indices()
            key = (traj.group_id, traj.messages[idx[0]]["content"] if idx else "")
            if key in seen_first_turns:
                reason = "duplicate_first_turn"
            seen_first_turns.add(key)
        if reason is None:
            kept.append(traj)
        else:
            counts[reason] += 1
    counts["kept"] = len(kept)
    return FilterResult(kept=kept, counts=counts)


def _reason(traj: Trajectory, cfg: ToolFilterConfig, tokenizer, correct: Callable[[Trajectory], bool]) -> str | None:
    if cfg.require_tool_call and not any(m["role"] == "tool" for m in traj.messages):
        return "no_tool_call"
    if cfg.drop_tool_limit and traj.finish == "tool_limit":
        return "tool_limit"
    if cfg.drop_error_in_correct and last_execution_failed(traj) and correct(traj):
        return "error_in_correct"
    if cfg.max_tokens > 0:
        from turnrl.chat import render

        length = len(tokenizer(render(tokenizer, traj.messages), add_special_tokens=False)["input_ids"])
        if length > cfg.max_tokens:
            return "over_length"
    return None
