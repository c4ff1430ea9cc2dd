"""Model cards on every checkpoint, and `--push_to_hub` through the real Hub client against a loopback stand-in."""

from __future__ import annotations

import json

from turnrl.cli import main
from turnrl.records import Trajectory, TurnInfo, write_jsonl



def logged(model: str) -> list[Trajectory]:
    out = []
    for g, rewards in (("q1", (1.0, 0.2)), ("q2", (0.0, 0.6))):
        for k, r in enumerate(rewards):
            out.append(Trajectory(
                id=f"{g}#{k}", task_id=g, group_id=g, sample=k, reward=r, rewards={"accuracy": float(r == 1.0),
                                                                                    "turn_accuracy": r},
                messages=[{"role": "user", "content": f"Question {g}?"},
                          {"role": "assistant", "content": f"The answer is {'AB'[k]}."}],
                turns=[TurnInfo(tokens=5, truncated=False)], policy={"model": model}))
    return out


def test_every_checkpoint_has_a_card_and_push_to_hub_uploads_it(tmp_path, tiny_model_dir, hub):
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    write_jsonl(run / "scored" / "trajectories.jsonl", logged(str(tiny_model_dir)))
    assert main(["train", "--run_dir", str(run), "--algo.name", "refit", "--optim.batch_size", "2",
                 "--optim.precision", "fp32", "--optim.learning_rate", "1e-3", "--push_to_hub", "true",
                 "--hub_model_id", "my-org/tiny-refit"]) == 0
    checkpoint = run / "train" / "refit" / "checkpoint"
    card = ModelCard.load(checkpoint / "README.md")
    # A local base of unknown origin is not named as a hub id; the card says what was trained and on what.
    assert card.data.library_name == "transformers" and card.data.base_model is None
    assert "turnrl" in card.data.tags and "refit" in card.data.tags
    assert "Refit" in card.text and "000 eq. 5" in card.text
    assert "4 logged conversations (4 with a reward, mean reward 0.450)" in card.text  # (1 + .2 + 0 + .6) / 4
    assert "accuracy, turn_accuracy" in card.text and "| optim.learning_rate | 0.001 |" in card.text
    # refit's own parameters, not every algorithm's
    assert "| algo.refit.shift_negative | False |" in card.text and "algo.swift" not in card.text
    assert "Not evaluated yet" in card.text
    # Uploaded through huggingface_hub's client: repository created, every file of the checkpoint sent.
    assert "my-org/tiny-refit" in hub.repos and hub.card_metadata[-1]["library_name"] == "transformers"
    sent = hub.files["my-org/tiny-refit"]
    assert set(sent) == {p.name for p in checkpoint.iterdir()}
    assert sent["README.md"] == (checkpoint / "README.md").read_bytes()
    assert sent["model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()


def test_push_without_a_repository_is_a_config_error(tmp_path, capsys):
    assert main(["train", "--run_dir", str(tmp_path), "--push_to_hub", "true"]) == 2
    assert "hub_model_id" in capsys.readouterr().err


def test_hub_ids_of_aliases_checkpoints_and_local_folders(tmp_path, tiny_model_dir):
    from turnrl.train.card import hub_id

    assert hub_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id(str(tiny_model_dir)) is None and hub_id("model.gguf") is None
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    (checkpoint / "turnrl_train.json").write_text(json.dumps({"model": "smollm2-135m-instruct"}))
    assert hub_id(str(checkpoint)) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a checkpoint's base, recursively
