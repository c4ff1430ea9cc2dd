"""Environments (DESIGN.md section 4) and the one config that selects and sets them up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from turnrl.envs.base import Environment, Episode, Prefix
from turnrl.errors import ConfigError


@dataclass
class EnvConfig:
    name: str = "reasoning"
    """reasoning (000 App. E), clarify (000 App. F), feedback (004) or tool (003)."""
    mode: str = "standard"
    """reasoning/clarify: standard or thinking (000's two modes)."""
    turns: int = 3
    """reasoning: the number of assistant turns n (3 in 000, up to 10). feedback: the most turns T (004: 5)."""
    max_new_tokens: int = 96
    """Token cap of each assistant turn."""
    final_max_new_tokens: int = 0
    """Token cap of the final-answer turn (0: same as max_new_tokens)."""
    feedback_message: str = "Incorrect. Please think again."
    """feedback: the fixed message after a wrong or missing answer (004)."""
    max_tool_calls: int = 6
    """tool: the most code executions per conversation H (003: 6)."""
    tool_timeout: float = 5.0
    """tool: wall-clock seconds per execution."""
    teacher_max_new_tokens: int = 96
    """clarify: token cap of the teacher's answer."""


def _reasoning(cfg: EnvConfig) -> Environment:
    from turnrl.envs.reasoning import ReasoningEnv

    return ReasoningEnv(mode=cfg.mode, turns=cfg.turns, max_new_tokens=cfg.max_new_tokens,
                        final_max_new_tokens=cfg.final_max_new_tokens or None)


ENVIRONMENTS: dict[str, Callable[[EnvConfig], Environment]] = {
    "reasoning": _reasoning,
}


def make_env(cfg: EnvConfig) -> Environment:
    if cfg.name not in ENVIRONMENTS:
        raise ConfigError(f"env.name: {cfg.name!r}; expected one of {', '.join(ENVIRONMENTS)}")
    try:
        return ENVIRONMENTS[cfg.name](cfg)
    except ValueError as exc:
        raise ConfigError(f"env: {exc}") from None


__all__ = ["EnvConfig", "Environment", "Episode", "Prefix", "make_env"]
