"""``turnrl harness``: a run's multiple-choice questions and its evaluation results in the formats of EleutherAI's
lm-evaluation-harness (``lm_eval``), so that the harness can evaluate any model on turnrl's questions and what
reads the harness's results can read turnrl's.

Written to ``<run_dir>/lm-eval/`` (or ``--out``):

- ``tasks/<task>/``: one harness task per split of the run (``tasks/<split>.jsonl``), named
  ``turnrl_<run>_<split>``: ``<task>.yaml``, ``docs.jsonl`` and ``utils.py`` (which reads the docs from the folder
  itself, so the folder can be moved). Each doc is the question with its options lettered A, B, ... in the order
  the tasks file stores them, then "Answer:"; the choices are the letters and the target the gold's index;
  the harness scores it by each letter's log-likelihood (``acc``). Questions without options are left out. Run::

      lm_eval --model hf --model_args pretrained=<model or checkpoint> \\
          --include_path <run_dir>/lm-eval/tasks --tasks turnrl_<run>_<split>

- ``results/<split>/<method>/results.json``: each evaluated policy's metrics in the harness's results layout
  (``results[<name>]["accuracy,none"]`` and ``"accuracy_stderr,none"``, ``n-samples``, ``versions``,
  ``higher_is_better``, ``config.model_args``), which ``lm_eval.utils.make_table`` prints. The name there is
  ``turnrl_<run>_<split>_<env>``: turnrl's own protocol (the environment's conversation, answers read from
  generated text, options in each conversation's own order), a different measurement from the harness's
  log-likelihood scoring of the exported task, so it carries a different name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnrl.errors import InputError
from turnrl.layout import METRICS_FILE, RunDir
from turnrl.log import get_logger
from turnrl.records import Task, atomic_write_text, read_json, read_tasks, write_json, write_jsonl

logger = get_logger(__name__)

HIGHER_IS_BETTER = {"accuracy": True, "earned": True, "format": True, "answered": True, "reward": True,
                    "ambiguous": False, "final_truncated": False}
"""The direction of the metrics that have one; the others (thinking %, asked %) are descriptions."""

UTILS = '''"""Reads the docs of this task from its own folder (written by turnrl harness)."""
import json
from pathlib import Path


def load_docs(**kwargs):
    import datasets

    lines = (Path(__file__).with_name("docs.jsonl")).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([json.loads(line) for line in lines if line])})
'''


@dataclass
class HarnessConfig:
    """Write a run's questions as lm-evaluation-harness tasks and its evaluations as harness results."""

    run_dir: str = "runs/turnrl"
    out: str = ""
    """The folder to write; default <run_dir>/lm-eval."""


def task_name(run_dir: Path, split: str) -> str:
    return "turnrl_" + re.sub(r"[^0-9a-zA-Z]+", "_", f"{run_dir.resolve().name}_{split}").strip("_").lower()


def harness_doc(task: Task) -> dict[str, Any]:
    """One harness doc: the question and its lettered options, the letters as choices, the gold's index."""
    letters = task.letters
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters, task.choices))
    return {"id": task.id, "query": f"Question: {task.question}\n{options}\nAnswer:", "choices": letters,
            "gold": letters.index(task.answer)}


def task_yaml(name: str) -> str:
    # Written by hand: the harness's `!function` tag is not plain YAML.
    return (f"task: {name}\n"
            "custom_dataset: !function utils.load_docs\n"
            "test_split: test\n"
            "output_type: multiple_choice\n"
            "doc_to_text: query\n"
            "doc_to_choice: choices\n"
            "doc_to_target: gold\n"
            "metric_list:\n"
            "  - metric: acc\n"
            "    aggregation: mean\n"
            "    higher_is_better: true\n"
            "metadata:\n"
            "  version: 1.0\n")


def write_task(tasks: list[Task], name: str, folder: Path) -> int:
    docs = [harness_doc(t) for t in tasks if t.choices and t.answer in t.letters]
    if not docs:
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "docs.jsonl", docs)
    atomic_write_text(folder / "utils.py", UTILS)
    atomic_write_text(folder / f"{name}.yaml", task_yaml(name))
    return len(docs)


def harness_results(metrics: dict[str, Any], name: str) -> dict[str, Any]:
    """An evaluation's metrics.json in the harness's results layout."""
    values: dict[str, Any] = {"alias": name}
    n = 0
    for metric, est in metrics["metrics"].items():
        if not isinstance(est, dict) or not est.get("n") or not math.isfinite(est.get("mean", math.nan)):
            continue
        values[f"{metric},none"] = est["mean"]
        values[f"{metric}_stderr,none"] = est["se"] if math.isfinite(est.get("se", math.nan)) else "N/A"
        n = max(n, est["n"])
    return {
        "results": {name: values},
        "group_subtasks": {name: []},
        "configs": {name: {"task": name, "output_type": "generate_until", "description":
                           f"turnrl's {metrics['env']['name']} protocol on the {metrics['split']} pool"}},
        "versions": {name: 1.0},
        "n-shot": {name: 0},
        "higher_is_better": {name: {m: HIGHER_IS_BETTER[m] for m in metrics["metrics"] if m in HIGHER_IS_BETTER}},
        "n-samples": {name: {"original": n, "effective": n}},
        "config": {"model": metrics.get("backend", "hf"), "model_args": f"pretrained={metrics['model']}",
                   "gen_kwargs": {"temperature": metrics.get("temperature", 0.0)}, "turnrl_method": metrics["name"]},
        "turnrl": {"method": metrics["name"], "split": metrics["split"], "runs": metrics.get("runs", 1),
                   "env": metrics["env"], "stated_letters": metrics.get("stated_letters")},
    }


def harness(cfg: HarnessConfig) -> Path:
    """Write the run's harness tasks and results; return the folder."""
    run_dir = Path(cfg.run_dir)
    run = RunDir(run_dir)
    if not run.tasks.is_dir():
        raise InputError(f"{run.tasks}: no task files (run `turnrl simulate` or `turnrl run` first)")
    out = Path(cfg.out) if cfg.out else run.harness
    written = []
    for path in sorted(run.tasks.glob("*.jsonl")):
        split = path.stem
        name = task_name(run_dir, split)
        n = write_task(read_tasks(run.task_file(split)), name, out / "tasks" / name)
        if n:
            written.append(f"{name} ({n} questions)")
        for metrics_file in sorted(run.eval(split=split).glob(f"*/{METRICS_FILE}")):
            metrics = read_json(metrics_file)
            protocol = f"{name}_{re.sub(r'[^0-9a-zA-Z]+', '_', metrics['env']['name'])}"
            write_json(out / "results" / split / metrics["name"] / "results.json", harness_results(metrics, protocol))
            written.append(f"results of {metrics['name']} on {split}")
    if not written:
        raise InputError(f"{run_dir}: no multiple-choice questions and no evaluations to write")
    logger.info(f"harness: {', '.join(written)} -> {out}")
    return out
