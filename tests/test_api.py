"""The Python API: the documented example runs as written, a loaded model and callbacks work, and the trainer's
weights are Refit's, recomputed here from the rewards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import turnrl

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_version_and_exports():
    from importlib.metadata import version

    assert turnrl.__version__ == version("turnrl")
    assert {"RefitTrainer", "TrainerArgs", "TrainerCallback", "__version__"} <= set(dir(turnrl))
    with pytest.raises(AttributeError):
        turnrl.NoSuchTrainer  # noqa: B018


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "api_example"})
    out = capsys.readouterr().out
    checkpoint = tmp_path / "runs" / "api-example" / "train" / "refit" / "checkpoint"
    assert str(Path("runs/api-example/train/refit/checkpoint")) in out
    assert (checkpoint / "adapter_model.safetensors").exists() and (checkpoint / "README.md").exists()
    assert re.findall(r"step (\d+): NLL per token", out) == ["1", "2"]  # 4 conversations, batch 2
    # Refit's weights are the rewards (000 eq. 5; all in [0, 1]), in the dataset's order.
    diag = json.loads((tmp_path / "runs/api-example/train/refit/diagnostics.json").read_text())
    assert diag["weights"] == pytest.approx([1.0, 0.0, 0.9, 0.2])


def test_a_loaded_model_and_its_tokenizer_and_callbacks(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turnrl import SwiftTrainer, TrainerArgs, TrainerCallback

    class Record(TrainerCallback):
        def __init__(self):
            self.steps, self.end = [], None

        def on_step_end(self, step, metrics):
            self.steps.append((step, metrics["loss"]))

        def on_train_end(self, checkpoint):
            self.end = checkpoint

    rows = [{"messages": [{"role": "user", "content": f"Q{g}?"}, {"role": "assistant", "content": a}], "score": r}
            for g in (1, 2) for a, r in (("yes", 1.0), ("no", 0.0))]
    record = Record()
    trainer = SwiftTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           args=TrainerArgs(output_dir=str(tmp_path / "run"), learning_rate=1e-3, batch_size=2,
                                            reward_column="score"),
                           train_dataset=rows, processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
                           callbacks=[record])
    checkpoint = trainer.train()
    assert record.end == checkpoint and [s for s, _ in record.steps] == [1, 2]
    assert json.loads((checkpoint / "turnrl_train.json").read_text())["model"] == str(tmp_path / "run" /
                                                                                      "start_model")
    # Swift: (r - mean) / std within each two-member group (ddof 1): +0.707 and -0.707, the negative floored at 0.
    diag = json.loads((tmp_path / "run/train/swift/diagnostics.json").read_text())
    assert diag["weights"] == pytest.approx([2 ** -0.5, 0.0, 2 ** -0.5, 0.0], abs=1e-6)


def test_a_missing_dataset_is_refused():
    from turnrl import RefitTrainer

    with pytest.raises(ValueError, match="train_dataset"):
        RefitTrainer("smollm2-135m-instruct")
