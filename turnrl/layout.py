"""The run directory's layout: every stage's files, named once (docs/design.md, "The run directory").

    tasks/{train,val,test}.jsonl, tasks/split.json      the split (``tasks.prepare_split``)
    rollouts/trajectories.jsonl                          ``simulate``: the logged conversations
    branches/trajectories.jsonl, branches/scored.jsonl  StepDPO's branch rollouts, and scored
    scored/trajectories.jsonl                            ``score`` (or ``import``): the log with its rewards
    filtered/trajectories.jsonl                          ``iterate`` in the tool environment: 003's filters
    train/<algo>/                                        ``train``: checkpoint/, diagnostics.json, train_log.jsonl
    eval/<name>/, eval-val/<name>/, eval-train/<name>/   ``evaluate`` on the test, val and train splits
    results.json, results.md, report.html, plots/        ``compare``
    export/<format>.jsonl                                ``export``: SFT, DPO, KTO or OpenAI fine-tuning files
    lm-eval/                                             ``harness``: lm-evaluation-harness tasks and results

Every path into a run directory is spelled here (tests/test_architecture.py fails on one spelled elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turnrl.records import Task

TASKS = "tasks"
ROLLOUTS = "rollouts/trajectories.jsonl"
BRANCHES = "branches/trajectories.jsonl"
SCORED_BRANCHES = "branches/scored.jsonl"
SCORED = "scored/trajectories.jsonl"
FILTERED = "filtered/trajectories.jsonl"
SECOND_JUDGE = "second_judge.jsonl"
CONVERSATIONS = "conversations.jsonl"
"""An evaluation's test conversations, in ``eval/<name>/``."""


def second_judge_file(log: str | Path) -> Path:
    """Where ``turnrl rejudge`` keeps a second judge's scores of a log's conversations: ``second_judge.jsonl``
    beside ``trajectories.jsonl`` or ``conversations.jsonl``, ``<stem>.second_judge.jsonl`` beside any other log.
    Its settings are recorded in the same name with ``.json``."""
    log = Path(log)
    if log.name in ("trajectories.jsonl", CONVERSATIONS):
        return log.with_name(SECOND_JUDGE)
    return log.with_name(f"{log.stem}.{SECOND_JUDGE}")


def task_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TASKS


def task_file(run_dir: str | Path, split: str) -> Path:
    return task_dir(run_dir) / f"{split}.jsonl"


def run_tasks(run_dir: str | Path) -> dict[str, Task]:
    """Every pool's tasks of a run by id (``tasks/{train,val,test}.jsonl``): what scoring and judging look the
    conversations' questions and gold answers up in."""
    from turnrl.errors import InputError
    from turnrl.records import read_tasks

    tasks: dict[str, Task] = {}
    for split in ("train", "val", "test"):
        if task_file(run_dir, split).exists():
            tasks.update({t.id: t for t in read_tasks(task_file(run_dir, split))})
    if not tasks:
        raise InputError(f"{task_dir(run_dir)}: no train.jsonl, val.jsonl or test.jsonl; run `turnrl simulate` "
                         "first")
    return tasks


def train_dir(run_dir: str | Path, algo: str = "") -> Path:
    """``train/<algo>/``; ``train/`` itself without an algorithm."""
    return Path(run_dir) / "train" / algo


def eval_dir(run_dir: str | Path, name: str = "", split: str = "test") -> Path:
    """The test split's evaluations are the run's results (eval/); the others are kept apart (eval-<split>/).
    Without a name, the folder that holds them."""
    return Path(run_dir) / ("eval" if split == "test" else f"eval-{split}") / name


def plots_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "plots"


def export_file(run_dir: str | Path, fmt: str) -> Path:
    return Path(run_dir) / "export" / f"{fmt}.jsonl"


def harness_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "lm-eval"
