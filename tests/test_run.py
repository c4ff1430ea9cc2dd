"""``turnrl run`` end to end on a tiny model: an algorithm the log gives nothing to learn is skipped, the rest run."""

from __future__ import annotations

import json

import pytest

from turnrl.algorithms.weighted import AlgoConfig
from turnrl.envs import EnvConfig
from turnrl.errors import NothingToLearn
from turnrl.generation import BackendConfig
from turnrl.records import read_trajectories
from turnrl.stages.score import RewardConfig
from turnrl.stages.simulate import RolloutOptions
from turnrl.tasks import DatasetConfig
from turnrl.train import train
from turnrl.train.common import OptimConfig
from turnrl.workflows.pipeline import RunConfig, run


@pytest.mark.slow
def test_run_skips_an_algorithm_with_nothing_to_learn(tmp_path, tiny_model_dir, capsys):
    # Options no random 2-layer model names: every logged conversation has accuracy 0.
    rows = [{"id": f"q{i}", "question": f"Which word is number {i}?", "choices": ["qqq1", "qqq2", "qqq3", "qqq4"],
             "answer": "ABCD"[i % 4]} for i in range(3)]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig(run_dir=str(tmp_path / "run"), model=str(tiny_model_dir),
                    dataset=DatasetConfig(name=str(tmp_path / "tasks.jsonl"), n_train=2, n_test=1),
                    env=EnvConfig(turns=1, max_new_tokens=4), generation=BackendConfig(dtype="float32"),
                    rollout=RolloutOptions(samples=2, temperatures=[1.0]),
                    reward=RewardConfig(weights={"accuracy": 1.0}),
                    algorithms=["refit", "sft"], optim=OptimConfig(batch_size=2, precision="fp32"),
                    evaluate_base=False)
    result = run(cfg)
    scored = read_trajectories(tmp_path / "run/scored/trajectories.jsonl")
    assert {t.reward for t in scored} == {0.0}  # so Refit's weights are all 0
    assert list(result["skipped"]) == ["refit"] and "weight 0" in result["skipped"]["refit"]
    assert json.loads((tmp_path / "run/skipped.json").read_text()) == result["skipped"]
    assert "skipping refit" in capsys.readouterr().out
    table = json.loads((tmp_path / "run/results.json").read_text())["methods"]
    assert list(table) == ["sft"]  # trained on every logged conversation, and evaluated
    # Alone, the same training stops with the message (and a non-zero exit from the CLI).
    with pytest.raises(NothingToLearn, match="weight 0"):
        train(cfg.run_dir, cfg.model, AlgoConfig(name="refit"), cfg.optim)
