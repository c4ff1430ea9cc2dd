"""Environments (DESIGN.md section 4) and the one config that selects and sets them up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from turnrl.envs.base import Environment, Episode, Prefix
from turnrl.errors import ConfigError


@dataclass
class EnvConfig:
    name: str = "reasoning"
    """reasoning (000 App. E), clarify (000 App. F), ask (a scripted user who reveals the deciding fact when
    asked), feedback (004) or tool (003)."""
    mode: Literal["standard", "thinking"] = "standard"
    """reasoning/clarify: standard or thinking (000's two modes)."""
    turns: int = 0
    """reasoning: the number of assistant turns n (up to 10). feedback: the most turns T. 0: the environment's
    own default (reasoning 3, as 000; feedback 5, as 004)."""
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
    tool_instruction: str = ""
    """tool: a sentence appended to the question ("" = the question alone, zero-shot, as 003); models not trained
    on the format need one, e.g. turnrl.envs.tool.DEFAULT_INSTRUCTION (see configs/tool-gsm8k.yaml)."""
    teacher_max_new_tokens: int = 96
    """clarify: token cap of the teacher's answer."""


def _reasoning(cfg: EnvConfig) -> Environment:
    from turnrl.envs.reasoning import ReasoningEnv

    return ReasoningEnv(mode=cfg.mode, turns=cfg.turns or 3, max_new_tokens=cfg.max_new_tokens,
                        final_max_new_tokens=cfg.final_max_new_tokens or None)


def _feedback(cfg: EnvConfig) -> Environment:
    from turnrl.envs.feedback import DEFAULT_TURNS, FeedbackEnv

    return FeedbackEnv(turns=cfg.turns or DEFAULT_TURNS, max_new_tokens=cfg.max_new_tokens,
                       feedback_message=cfg.feedback_message)


def _clarify(cfg: EnvConfig) -> Environment:
    from turnrl.envs.clarify import ClarifyEnv

    return ClarifyEnv(mode=cfg.mode, max_new_tokens=cfg.max_new_tokens,
                      final_max_new_tokens=cfg.final_max_new_tokens or None,
                      teacher_max_new_tokens=cfg.teacher_max_new_tokens)


def _ask(cfg: EnvConfig) -> Environment:
    from turnrl.envs.ask import AskEnv

    return AskEnv(max_new_tokens=cfg.max_new_tokens, final_max_new_tokens=cfg.final_max_new_tokens or None)


def _tool(cfg: EnvConfig) -> Environment:
    from turnrl.envs.tool import ToolEnv

    return ToolEnv(max_tool_calls=cfg.max_tool_calls, max_new_tokens=cfg.max_new_tokens,
                   tool_timeout=cfg.tool_timeout, instruction=cfg.tool_instruction)


ENVIRONMENTS: dict[str, Callable[[EnvConfig], Environment]] = {
    "reasoning": _reasoning,
    "clarify": _clarify,
    "ask": _ask,
    "feedback": _feedback,
    "tool": _tool,
}


def make_env(cfg: EnvConfig) -> Environment:
    if cfg.name not in ENVIRONMENTS:
        raise ConfigError(f"env.name: {cfg.name!r}; expected one of {', '.join(ENVIRONMENTS)}")
    try:
        return ENVIRONMENTS[cfg.name](cfg)
    except ValueError as exc:
        raise ConfigError(f"env: {exc}") from None


__all__ = ["EnvConfig", "Environment", "Episode", "Prefix", "make_env"]
