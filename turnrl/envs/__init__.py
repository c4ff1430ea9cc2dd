"""Environments (docs/design.md section 4) and the one config that selects and sets them up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from turnrl.envs.base import Environment, Episode, Prefix
from turnrl.errors import ConfigError
from turnrl.registry import Registry


@dataclass
class EnvConfig:
    """The environment the policy converses with, and its settings."""

    name: str = "reasoning"
    """reasoning (000 App. E), clarify (000 App. F), worksheet (a clarifying question whose reply must be used),
    ask (a scripted user who reveals the deciding fact when asked), feedback (004) or tool (003)."""
    mode: Literal["standard", "thinking"] = "standard"
    """reasoning/clarify: standard or thinking (000's two modes)."""
    max_turns: int = 0
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
    informed_share: float = 0.4
    """worksheet: share of questions whose opening already names the crossed-out options (drawn per question)."""
    ask_cost: float = 0.2
    """worksheet: the declared cost of a question to the user; the ``earned`` reward is accuracy x (1 - cost)
    after a question."""
    names_by: Literal["text", "letter"] = "text"
    """worksheet: the user names the crossed-out options by their texts, or by the letters this conversation shows
    them under (an easier variant)."""
    shuffle_options: bool = True
    """Multiple choice: show each conversation's options in an order drawn from its seed (recorded in the
    trajectory; the feedback environment re-orders them at every retry), so that no letter earns more than
    another. false: every conversation shows the dataset's order."""


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment is, declared where it is registered (docs/design.md section 4). What a rollout needs
    (a teacher, a code runner) the environment itself says (``Environment.needs_teacher``, ``run_code``)."""

    name: str
    build: Callable[[EnvConfig], Environment]
    paper: str
    answer_phrase: str = "the answer is"
    """How its prompts ask for the final answer (the answer rule reads "<phrase> X")."""
    reward_components: tuple[str, ...] = ()
    """Components that only its conversations have, computed by ``turnrl score`` (besides the common ones)."""
    weighable: bool = True
    """Whether ``reward.weights`` may weight its components into the scalar reward (DRIFT's return is recorded
    beside the reward, never in it)."""
    components: Callable[[Any, Any, Any], dict[str, float]] | None = None
    """(trajectory, task, reward config) -> its ``reward_components`` (``turnrl score`` calls it for each of its
    conversations); each in [0, 1], which may then be weighted into the reward (DRIFT's return, whose terms the
    reward config's ``drift`` section sets, is kept out of it)."""


ENVIRONMENTS: Registry[EnvironmentSpec] = Registry("env.name")


def register_environment(name: str, *, paper: str, **declared: Any) -> Callable:
    """Register the decorated ``EnvConfig -> Environment`` constructor as environment ``name``."""

    def decorate(build: Callable[[EnvConfig], Environment]) -> Callable[[EnvConfig], Environment]:
        ENVIRONMENTS.register(name, EnvironmentSpec(name=name, build=build, paper=paper, **declared))
        return build

    return decorate


def environment_spec(name: str) -> EnvironmentSpec:
    return ENVIRONMENTS.lookup(name)


@register_environment("reasoning", paper="000 App. E")
def _reasoning(cfg: EnvConfig) -> Environment:
    from turnrl.envs.reasoning import ReasoningEnv

    return ReasoningEnv(mode=cfg.mode, turns=cfg.max_turns or 3, max_new_tokens=cfg.max_new_tokens,
                        final_max_new_tokens=cfg.final_max_new_tokens or None)


@register_environment("clarify", paper="000 App. F", answer_phrase="answer is")
def _clarify(cfg: EnvConfig) -> Environment:
    from turnrl.envs.clarify import ClarifyEnv

    return ClarifyEnv(mode=cfg.mode, max_new_tokens=cfg.max_new_tokens,
                      final_max_new_tokens=cfg.final_max_new_tokens or None,
                      teacher_max_new_tokens=cfg.teacher_max_new_tokens)


def _worksheet_components(trajectory, task, reward) -> dict[str, float]:
    from turnrl.envs.worksheet import reward_components

    return reward_components(trajectory, task)


@register_environment("worksheet", paper="000 Sec. 2, App. F (STaR-GATE's setting); docs/worksheet.md",
                      reward_components=("earned",), components=_worksheet_components)
def _worksheet(cfg: EnvConfig) -> Environment:
    from turnrl.envs.worksheet import WorksheetEnv

    return WorksheetEnv(max_new_tokens=cfg.max_new_tokens, final_max_new_tokens=cfg.final_max_new_tokens or None,
                        informed_share=cfg.informed_share, ask_cost=cfg.ask_cost, names_by=cfg.names_by)


@register_environment("ask", paper="this project (docs/results-withdrawn.md section 9)")
def _ask(cfg: EnvConfig) -> Environment:
    from turnrl.envs.ask import AskEnv

    return AskEnv(max_new_tokens=cfg.max_new_tokens, final_max_new_tokens=cfg.final_max_new_tokens or None)


def _feedback_components(trajectory, task, reward) -> dict[str, float]:
    from turnrl.rewards.drift_return import drift_components

    return drift_components(trajectory, task, reward.drift)


@register_environment("feedback", paper="004 Sec. 2, 5.5",
                      reward_components=("drift_return", "turns_used", "distinct_answers"),
                      components=_feedback_components, weighable=False)
def _feedback(cfg: EnvConfig) -> Environment:
    from turnrl.envs.feedback import DEFAULT_TURNS, FeedbackEnv

    return FeedbackEnv(turns=cfg.max_turns or DEFAULT_TURNS, max_new_tokens=cfg.max_new_tokens,
                       feedback_message=cfg.feedback_message)


@register_environment("tool", paper="003 Sec. 3.1")
def _tool(cfg: EnvConfig) -> Environment:
    from turnrl.envs.tool import ToolEnv

    return ToolEnv(max_tool_calls=cfg.max_tool_calls, max_new_tokens=cfg.max_new_tokens,
                   tool_timeout=cfg.tool_timeout, instruction=cfg.tool_instruction)


def make_env(cfg: EnvConfig) -> Environment:
    spec = environment_spec(cfg.name)
    try:
        env = spec.build(cfg)
    except ValueError as exc:
        raise ConfigError(f"env: {exc}") from None
    env.shuffle_options = cfg.shuffle_options
    return env


__all__ = ["ENVIRONMENTS", "EnvConfig", "Environment", "EnvironmentSpec", "Episode", "Prefix", "environment_spec",
           "make_env", "register_environment"]
