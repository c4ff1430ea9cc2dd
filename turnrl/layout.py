"""The run directory's layout: every stage's files, named once (docs/design.md, "The run directory").

    tasks/{train,val,test}.jsonl, tasks/split.json      the split (``tasks.prepare_split``)
    rollouts/trajectories.jsonl                          ``simulate``: the logged conversations
    branches/trajectories.jsonl, branches/scored.jsonl  StepDPO's branch rollouts, and scored
    scored/trajectories.jsonl                            ``score`` (or ``import``): the log with its rewards
    filtered/trajectories.jsonl                          ``iterate`` in the tool environment: 003's filters
    train/<algo>/                                        ``train``: checkpoint/, diagnostics.json, train_log.jsonl
    eval/<name>/, eval-val/<name>/, eval-train/<name>/   ``evaluate`` on the test, val and train splits
    results.json, results.md, report.html, plots/        ``compare``
    refresh/<algo>/round<r>/                             ``run``'s rollout refresh (004 App. D.5)
    seed<s>/, iter_<t>/, sweep/chosen.json, run_config.json   ``run --seeds``, ``iterate``, ``sweep``
    export/<format>.jsonl                                ``export``: SFT, DPO, KTO or OpenAI fine-tuning files
    lm-eval/                                             ``harness``: lm-evaluation-harness tasks and results

Every path into a run directory is spelled here, as :class:`RunDir` (``RunDir(run_dir).eval("swift")``) and the
relative names configs take as defaults (``SCORED``); tests/test_architecture.py fails on one spelled elsewhere.
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
PER_QUESTION = "per_question.jsonl"
"""An evaluation's outcome of each question, in ``eval/<name>/``."""
METRICS_FILE = "metrics.json"
"""An evaluation's metrics with their standard errors, in ``eval/<name>/``."""
DIAGNOSTICS = "diagnostics.json"
"""A training's weights or pairs, counted, in ``train/<algo>/``."""
TRAIN_LOG = "train_log.jsonl"
"""A training's loss and figures per step, in ``train/<algo>/``."""
TRAIN_SETTINGS = "train_settings.json"
"""The settings a training started with (what a resume must match), in ``train/<algo>/``."""
REFERENCE_LOGPS = "reference_logps.json"
"""Preference learning's precomputed reference log-probabilities, in ``train/<algo>/``."""
EVALUATION_SETTINGS = "evaluation.json"
"""The settings an evaluation's conversations were generated with, in ``eval/<name>/``."""


def second_judge_file(log: str | Path) -> Path:
    """Where ``turnrl rejudge`` keeps a second judge's scores of a log's conversations: ``second_judge.jsonl``
    beside ``trajectories.jsonl`` or ``conversations.jsonl``, ``<stem>.second_judge.jsonl`` beside any other log.
    Its settings are recorded in the same name with ``.json``."""
    log = Path(log)
    if log.name in ("trajectories.jsonl", CONVERSATIONS):
        return log.with_name(SECOND_JUDGE)
    return log.with_name(f"{log.stem}.{SECOND_JUDGE}")


def refresh_folder(algo: str, round_: int) -> str:
    """004's rollout refresh: round r of an algorithm's log, scores and training, relative to the run directory."""
    return f"refresh/{algo}/round{round_}"


def sweep_folder(algo: str, learning_rate: float) -> str:
    """``turnrl sweep``: one grid point's training (its epochs as snapshots), relative to the run directory."""
    return f"sweep/{algo}/lr{learning_rate:g}"


class RunDir:
    """A run directory: every stage's folder and file, as paths (``RunDir(cfg.run_dir).scored``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __truediv__(self, relative: str) -> Path:
        """A path a config names relative to the run (``cfg.input``, ``cfg.output``)."""
        return self.root / relative

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # the log, stage by stage
    @property
    def tasks(self) -> Path:
        return self.root / TASKS

    def task_file(self, split: str) -> Path:
        return self.tasks / f"{split}.jsonl"

    @property
    def rollouts(self) -> Path:
        return self.root / ROLLOUTS

    @property
    def scored(self) -> Path:
        return self.root / SCORED

    @property
    def branches(self) -> Path:
        return self.root / BRANCHES

    # training
    def train(self, algo: str = "") -> Path:
        """``train/<algo>/``; ``train/`` itself without an algorithm."""
        return self.root / "train" / algo

    # evaluation
    def eval(self, name: str = "", split: str = "test") -> Path:
        """The test split's evaluations are the run's results (eval/); the others are kept apart (eval-<split>/).
        Without a name, the folder that holds them."""
        return self.root / ("eval" if split == "test" else f"eval-{split}") / name

    def per_question(self, name: str, split: str = "test") -> Path:
        return self.eval(name, split) / PER_QUESTION

    def metrics(self, name: str, split: str = "test") -> Path:
        return self.eval(name, split) / METRICS_FILE

    def conversations(self, name: str, split: str = "test") -> Path:
        return self.eval(name, split) / CONVERSATIONS

    # comparison and reports
    @property
    def results_json(self) -> Path:
        """Every evaluated policy's row (``evaluate`` adds its own)."""
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def comparison_json(self) -> Path:
        return self.root / "comparison.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def export(self, fmt: str) -> Path:
        return self.root / "export" / f"{fmt}.jsonl"

    @property
    def harness(self) -> Path:
        return self.root / "lm-eval"

    # workflows of several runs
    def seed(self, seed: int) -> RunDir:
        """``turnrl run --seeds``: each seed's whole experiment."""
        return RunDir(self.root / f"seed{seed}")

    def iteration(self, t: int) -> RunDir:
        """``turnrl iterate``: iteration t's log, pairs and policy (iter_0: pi_0's held-out evaluation)."""
        return RunDir(self.root / f"iter_{t}")

    @property
    def sweep_choice(self) -> Path:
        """``turnrl sweep``: the settings chosen on the validation split."""
        return self.root / "sweep" / "chosen.json"

    @property
    def sweep_results(self) -> Path:
        """``turnrl sweep``: every grid point's validation result."""
        return self.root / "sweep" / "results.csv"

    @property
    def sweep_plot(self) -> Path:
        return self.root / "sweep" / "validation.png"

    @property
    def skipped(self) -> Path:
        """``turnrl run``: the algorithms the log gave nothing to learn, with the reason."""
        return self.root / "skipped.json"

    @property
    def seeds_summary(self) -> Path:
        """``turnrl run --seeds``: the tables over seeds as data."""
        return self.root / "seeds.json"

    @property
    def iterate_record(self) -> Path:
        """``turnrl iterate``: each finished iteration's policy and held-out scores (what a resume reads)."""
        return self.root / "iterate.json"

    @property
    def iterate_summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def config(self) -> Path:
        """The workflow's whole config and the machine it ran on."""
        return self.root / "run_config.json"

    def tasks_by_id(self) -> dict[str, Task]:
        """Every pool's tasks of the run by id (``tasks/{train,val,test}.jsonl``): what scoring and judging look
        the conversations' questions and gold answers up in."""
        from turnrl.errors import InputError
        from turnrl.records import read_tasks

        tasks: dict[str, Task] = {}
        for split in ("train", "val", "test"):
            if self.task_file(split).exists():
                tasks.update({t.id: t for t in read_tasks(self.task_file(split))})
        if not tasks:
            raise InputError(f"{self.tasks}: no train.jsonl, val.jsonl or test.jsonl; run `turnrl simulate` "
                             "first")
        return tasks
