"""``turnrl iterate`` on the tiny model: two iterations end to end, interrupted mid-training and resumed."""

from __future__ import annotations

import json

import pytest
import torch

from turnrl.algorithms.config import AlgoConfig
from turnrl.algorithms.preference import PreferenceParams
from turnrl.envs import EnvConfig
from turnrl.errors import ConfigError
from turnrl.stages.evaluate import EvalOptions
from turnrl.generation import BackendConfig
from turnrl.workflows.iterate import IterateConfig, iterate
from turnrl.records import read_json, read_trajectories
from turnrl.rewards.scoring import RewardConfig
from turnrl.stages.simulate import RolloutOptions
from turnrl.tasks import DatasetConfig
from turnrl.train.config import OptimConfig

from test_preference import hand_logp


def write_tasks(path):
    rows = [{"id": f"q{i}", "question": f"Which option is number {i % 4}?", "choices": ["one", "two", "three", "four"],
             "answer": "ABCD"[i % 4]} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path, model: str, **over) -> IterateConfig:
    cfg = IterateConfig(
        run_dir=str(tmp_path / "run"), model=model, split="test",
        dataset=DatasetConfig(name=str(write_tasks(tmp_path / "tasks.jsonl")), n_train=6, n_test=2),
        env=EnvConfig(name="reasoning", max_turns=2, max_new_tokens=6),
        generation=BackendConfig(dtype="float32", batch_size=16),
        rollout=RolloutOptions(samples=3, temperatures=[1.0]),
        previous_samples=1,
        reward=RewardConfig(weights={"gold_likelihood": 1.0}, likelihood_dtype="float32"),
        # The random tiny model is never right; the gold answer's likelihood still ranks its conversations.
        algo=AlgoConfig(name="m-dpo", preference=PreferenceParams(pairing="best-vs-worst")),
        optim=OptimConfig(learning_rate=1e-3, batch_size=2, precision="fp32", warmup_ratio=0.0, save_every=1),
        iterations=2, heldout=2, selection="reward", evaluation=EvalOptions())
    for key, value in over.items():
        setattr(cfg, key, value)
    return cfg


def test_iterate_two_iterations_interrupted_and_resumed(tmp_path, tiny_model_dir, monkeypatch):
    from turnrl.train import loop as train_loop
    import turnrl.workflows.iterate as iterate_module

    cfg = config(tmp_path, str(tiny_model_dir))
    run = tmp_path / "run"
    original_save = train_loop.TrainLoop.save_state

    def save_then_die(self, step):  # kill the loop right after iteration 2 saved its first training state
        original_save(self, step)
        if "iter_2" in str(self.out_dir):
            raise KeyboardInterrupt

    monkeypatch.setattr(train_loop.TrainLoop, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        iterate(cfg)
    monkeypatch.setattr(train_loop.TrainLoop, "save_state", original_save)
    assert (run / "iter_1" / "iteration.json").exists() and not (run / "iter_2" / "iteration.json").exists()
    assert (run / "iter_2" / "train" / "m-dpo" / "state" / "trainer_state.json").exists()
    done_1 = (run / "iter_1" / "iteration.json").stat().st_mtime_ns
    rollouts_2 = (run / "iter_2" / "rollouts" / "trajectories.jsonl").read_bytes()

    sampled_again = []
    real_log_rollouts = iterate_module.log_rollouts
    monkeypatch.setattr(iterate_module, "log_rollouts",
                        lambda *a, **k: sampled_again.append(real_log_rollouts(*a, **k)))
    summary = iterate(cfg)

    # Resumed at the stage it stopped: nothing was sampled again, iteration 1 untouched, training continued.
    assert sum(sampled_again) == 0
    assert (run / "iter_1" / "iteration.json").stat().st_mtime_ns == done_1
    assert (run / "iter_2" / "rollouts" / "trajectories.jsonl").read_bytes() == rollouts_2
    log = [json.loads(line) for line in (run / "iter_2/train/m-dpo/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]

    it1, it2 = read_json(run / "iter_1/iteration.json"), read_json(run / "iter_2/iteration.json")
    pi0, pi1, pi2 = str(tiny_model_dir), it1["policy"], it2["policy"]
    assert pi1 == str(run / "iter_1/train/m-dpo/checkpoint") and pi2 == str(run / "iter_2/train/m-dpo/checkpoint")
    assert (it1["started_from"], it1["reference"]) == (pi0, pi0)
    assert (it2["started_from"], it2["reference"]) == (pi1, pi1)
    # Mixture sampling: 4 training prompts x 3 samples; in iteration 2 the last sample comes from pi_0.
    for it, current, previous in ((1, pi0, pi0), (2, pi1, pi0)):
        trajectories = read_trajectories(run / f"iter_{it}/scored/trajectories.jsonl")
        assert len(trajectories) == 12 and len({t.task_id for t in trajectories}) == 4
        assert {(t.sample, t.policy["model"]) for t in trajectories} == {(0, current), (1, current), (2, previous)}
        heldout = {t.task_id for t in read_trajectories(run / f"iter_{it}/eval-train/heldout/conversations.jsonl")}
        assert len(heldout) == 2 and not heldout & {t.task_id for t in trajectories}  # never trained on
    # The reference of iteration 2 is pi_1: its precomputed log-probabilities are pi_1's, from full logits.
    from transformers import AutoModelForCausalLM
    from turnrl.models import load_tokenizer

    pair = json.loads((run / "iter_2/train/m-dpo/pairs.jsonl").read_text().splitlines()[0])
    values = read_json(run / "iter_2/train/m-dpo/reference_logps.json")
    key = next(k for k in values if k.startswith(f"{pair['id']}:chosen:"))
    tokenizer = load_tokenizer(pi1)
    with torch.no_grad():
        expected = hand_logp(AutoModelForCausalLM.from_pretrained(pi1), tokenizer, pair["chosen"]["messages"],
                             truncated=pair["chosen"]["truncated"])
    assert values[key] == pytest.approx(float(expected), rel=1e-4)

    rewards = {r["iteration"]: r["heldout"]["reward"]["mean"] for r in summary["iterations"]}
    assert summary["best"]["iteration"] == max(rewards, key=lambda i: (rewards[i], i))
    assert (run / "eval" / "iterate-m-dpo" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="other settings"):
        iterate(config(tmp_path, str(tiny_model_dir), previous_samples=0))
