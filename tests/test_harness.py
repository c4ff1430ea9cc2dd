"""The lm-evaluation-harness bridge: the harness itself loads the exported task, runs a model on it and agrees with
an independent scoring of the same letters, and its own table printer reads the exported results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from turnrl.cli import main
from turnrl.records import Task, write_json, write_jsonl
from turnrl.stages.harness import HarnessConfig, harness

TASKS = [
    Task(id="q1", source="sciq", question="Which organ pumps blood?", answer="C",
         choices=["lung", "kidney", "heart", "skin"]),
    Task(id="q2", source="sciq", question="What do plants absorb for photosynthesis?", answer="A",
         choices=["carbon dioxide", "helium", "neon"]),
    Task(id="q3", source="sciq", question="Which planet is the largest?", answer="B",
         choices=["Mars", "Jupiter", "Venus", "Mercury"]),
    Task(id="q4", source="gsm8k", question="What is 2 + 2?", answer="4"),  # no options: not a harness doc
]


def make_run(run: Path) -> Path:
    write_jsonl(run / "tasks" / "test.jsonl", TASKS)
    for name, acc in (("base", 0.25), ("refit", 0.5)):
        write_json(run / "eval" / name / "metrics.json", {
            "name": name, "model": f"runs/x/train/{name}/checkpoint", "backend": "hf", "split": "test", "runs": 1,
            "temperature": 0.0, "env": {"name": "worksheet"}, "stated_letters": {"A": 2, "none": 2},
            "metrics": {"accuracy": {"mean": acc, "se": 0.2, "n": 4}, "format": {"mean": 1.0, "se": 0.0, "n": 4},
                        "accuracy_formatted": {"mean": math.nan, "se": math.nan, "n": 0}}})
    return run


def test_the_harness_runs_the_exported_task(tmp_path, tiny_model, tokenizer):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    run = make_run(tmp_path / "My Run")
    out = harness(HarnessConfig(run_dir=str(run)))
    folder = out / "tasks" / "turnrl_my_run_test"
    moved = tmp_path / "elsewhere"
    folder.parent.rename(moved)  # the task reads its docs from its own folder, wherever it is

    manager = TaskManager(include_path=str(moved))
    task = manager.load(["turnrl_my_run_test"])["tasks"]["turnrl_my_run_test"]
    docs = list(task.test_docs())
    assert [d["id"] for d in docs] == ["q1", "q2", "q3"]
    assert task.doc_to_text(docs[1]) == ("Question: What do plants absorb for photosynthesis?\n"
                                         "A. carbon dioxide\nB. helium\nC. neon\nAnswer:")
    assert [task.doc_to_choice(d) for d in docs] == [list("ABCD"), list("ABC"), list("ABCD")]
    assert [task.doc_to_target(d) for d in docs] == [2, 0, 1]

    model = HFLM(pretrained=tiny_model, tokenizer=tokenizer, batch_size=1, device="cpu")
    results = simple_evaluate(model=model, tasks=["turnrl_my_run_test"], task_manager=manager,
                              bootstrap_iters=0, log_samples=False)
    acc = results["results"]["turnrl_my_run_test"]["acc,none"]

    # The same scoring by hand: the summed log-probability of " <letter>" after the question; right where the
    # gold letter has the highest.
    right = 0
    for doc in docs:
        context = tokenizer(doc["query"], add_special_tokens=False).input_ids
        scores = []
        for letter in doc["choices"]:
            target = tokenizer(doc["query"] + " " + letter, add_special_tokens=False).input_ids[len(context):]
            ids = torch.tensor([context + target])
            with torch.no_grad():
                logp = tiny_model(ids).logits[0, :-1].float().log_softmax(-1)
            scores.append(sum(logp[len(context) - 1 + i, t].item() for i, t in enumerate(target)))
        right += max(range(len(scores)), key=scores.__getitem__) == doc["gold"]
    assert acc == pytest.approx(right / len(docs))


def test_the_harness_prints_turnrl_results(tmp_path, capsys):
    from lm_eval.utils import make_table

    run = make_run(tmp_path / "run")
    assert main(["harness", "--run_dir", str(run)]) == 0
    assert "harness: turnrl_run_test (3 questions), results of base on test, results of refit on test" in \
        capsys.readouterr().out
    results = json.loads((run / "lm-eval" / "results" / "test" / "refit" / "results.json").read_text())
    values = results["results"]["turnrl_run_test_worksheet"]
    assert values["accuracy,none"] == 0.5 and values["accuracy_stderr,none"] == 0.2
    assert "accuracy_formatted,none" not in values  # undefined (n = 0): left out, not NaN
    assert results["config"]["model_args"] == "pretrained=runs/x/train/refit/checkpoint"
    table = make_table(results)
    row = next(line for line in table.splitlines() if "accuracy" in line)
    assert row.replace(" ", "") == "|turnrl_run_test_worksheet|1|none|0|accuracy|↑|0.5|±|0.2|"


def test_a_run_without_tasks_is_refused(tmp_path, capsys):
    assert main(["harness", "--run_dir", str(tmp_path)]) == 2
    assert "no task files" in capsys.readouterr().err
