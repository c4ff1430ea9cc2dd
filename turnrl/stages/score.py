"""``turnrl score``: compute every trajectory's reward components and scalar reward.

Reads ``rollouts/trajectories.jsonl`` and the run's tasks, writes ``scored/trajectories.jsonl`` (atomically).
The same scoring serves ``turnrl evaluate``, so logged data and test conversations are measured alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from turnrl.errors import InputError
from turnrl.judge import summary_markdown
from turnrl.layout import ROLLOUTS, RunDir, SCORED
from turnrl.records import read_trajectories, write_jsonl
from turnrl.rewards.scoring import RewardConfig, Scorer
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class ScoreConfig:
    """Score logged trajectories."""

    run_dir: str = "runs/turnrl"
    reward: RewardConfig = field(default_factory=RewardConfig)
    input: str = ROLLOUTS
    output: str = SCORED


def score(cfg: ScoreConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    trajectories = read_trajectories(run_dir / cfg.input)
    out = run_dir / cfg.output
    if not trajectories:
        raise InputError(f"{run_dir / cfg.input}: no trajectories to score; {out} is left as it was")
    scorer = Scorer(cfg.reward)
    scorer.score(trajectories, RunDir(run_dir).tasks_by_id(), desc="score")
    write_jsonl(out, trajectories)
    rewards = [t.reward for t in trajectories if t.reward is not None]
    unset = len(trajectories) - len(rewards)
    mean = f"{sum(rewards) / len(rewards):.3f}" if rewards else "n/a"
    logger.info(f"score: {len(trajectories)} trajectories, mean reward {mean}"
                f"{f', {unset} without a reward (a judge failure)' if unset else ''} -> {out}")
    if scorer.judge_summary:
        print(summary_markdown(scorer.judge_summary), end="")
    return out
