"""turnrl's Python API: trainer objects in the style of TRL's, over the same stages as the command line.

A trainer takes the policy to start from (a model name, a folder, or a loaded ``transformers`` model), a
``datasets.Dataset`` (or a list of dicts) of conversations in the ``messages`` format with a reward column, and a
:class:`TrainerArgs`; :meth:`Trainer.train` returns the checkpoint folder (``save_pretrained``, with its model
card). ::

    from datasets import Dataset
    from turnrl import RefitTrainer, TrainerArgs

    data = Dataset.from_list([{"messages": [...], "reward": 0.9}, ...])
    trainer = RefitTrainer("smollm2-135m-instruct", args=TrainerArgs(output_dir="runs/api", learning_rate=1e-4),
                           train_dataset=data)
    checkpoint = trainer.train()

The dataset goes through ``turnrl import`` (its checks and error messages), the training through ``turnrl train``
(the algorithm's registered weights or pairs and the shared loop); the run directory ``output_dir`` is an ordinary
turnrl run directory, so ``turnrl evaluate`` and ``turnrl compare`` work on it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from turnrl.algorithms.config import AlgoConfig
from turnrl.train.config import OptimConfig
from turnrl.train.loop import train_callbacks, TrainerCallback


@dataclass
class TrainerArgs:
    """Where a trainer writes and how it trains (the fields of ``turnrl train``'s ``optim`` and ``algo``)."""

    output_dir: str = "runs/api"
    """The run directory: scored/trajectories.jsonl (the imported dataset), train/<algorithm>/checkpoint."""
    learning_rate: float = 1e-5
    epochs: float = 1.0
    batch_size: int = 8
    lora: bool = False
    seed: int = 0
    optim: OptimConfig | None = None
    """Every other optimisation setting (its learning_rate, epochs, batch_size, lora and seed are replaced by the
    fields above)."""
    algo: AlgoConfig | None = None
    """Algorithm parameters (e.g. ``AlgoConfig(preference=PreferenceParams(beta=0.2))``); its name is the
    trainer's."""
    reward_column: str = "reward"
    group_column: str = ""
    """The column naming each conversation's context x (default: a hash of its system and first user message)."""
    report_to: str = "none"
    push_to_hub: bool = False
    hub_model_id: str = ""
    overwrite: bool = True
    """Train again when output_dir already holds a checkpoint of this algorithm."""

    def optim_config(self) -> OptimConfig:
        return replace(self.optim or OptimConfig(), learning_rate=self.learning_rate, epochs=self.epochs,
                       batch_size=self.batch_size, lora=self.lora, seed=self.seed)


class Trainer:
    """Train one turnrl algorithm on a dataset of rated conversations; subclasses name the algorithm."""

    algorithm = ""

    def __init__(self, model: Any, args: TrainerArgs | None = None, train_dataset: Any = None,
                 processing_class: Any = None, callbacks: Iterable[TrainerCallback] = ()):
        if train_dataset is None:
            raise ValueError("train_dataset: give a datasets.Dataset (or a list of dicts) of conversations with a "
                             "'messages' column and a reward column")
        self.model, self.args = model, args or TrainerArgs()
        self.train_dataset, self.processing_class = train_dataset, processing_class
        self.callbacks = list(callbacks)

    @property
    def run_dir(self) -> Path:
        return Path(self.args.output_dir)

    def _model_name(self) -> str:
        """A name ``turnrl train`` resolves: the name or folder given, or a loaded model saved into the run."""
        if isinstance(self.model, (str, Path)):
            return str(self.model)
        if not hasattr(self.model, "save_pretrained"):
            raise TypeError(f"model: expected a name, a folder or a transformers model, got {type(self.model)}")
        folder = self.run_dir / "start_model"
        self.model.save_pretrained(folder)
        tokenizer = self.processing_class
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model.config.name_or_path)
        tokenizer.save_pretrained(folder)
        return str(folder)

    def _import(self) -> None:
        import datasets

        from turnrl.stages.importer import ImportConfig, import_log

        data = self.train_dataset
        if isinstance(data, list):
            data = datasets.Dataset.from_list(data)
        with tempfile.TemporaryDirectory() as tmp:
            data.save_to_disk(tmp)
            import_log(ImportConfig(run_dir=str(self.run_dir), source=tmp, reward_column=self.args.reward_column,
                                    group_column=self.args.group_column, overwrite=True))

    def train(self) -> Path:
        """Import the dataset as the run's scored log, train, and return the checkpoint folder."""
        from turnrl.train import train

        self.run_dir.mkdir(parents=True, exist_ok=True)
        model = self._model_name()
        self._import()
        algo = replace(self.args.algo or AlgoConfig(), name=self.algorithm)
        with train_callbacks(self.callbacks):
            return train(str(self.run_dir), model, algo, self.args.optim_config(), overwrite=self.args.overwrite,
                         report_to=self.args.report_to, push_to_hub=self.args.push_to_hub,
                         hub_model_id=self.args.hub_model_id)


class SFTTrainer(Trainer):
    """Every conversation, weight 1 (the baseline)."""

    algorithm = "sft"


class StarGateTrainer(Trainer):
    """The best conversation of each group (000 Sec. 4)."""

    algorithm = "star-gate"


class RefitTrainer(Trainer):
    """Reward-weighted fine-tuning (000 eq. 5)."""

    algorithm = "refit"


class SwiftTrainer(Trainer):
    """Standardised rewards within each group (000 eq. 9)."""

    algorithm = "swift"


class DriftTrainer(Trainer):
    """Return-weighted fine-tuning of the final turn (004)."""

    algorithm = "drift"


class DPOTrainer(Trainer):
    """Best vs worst final turn of each group (000 Sec. 4)."""

    algorithm = "dpo"


class MDPOTrainer(Trainer):
    """Whole-conversation preference pairs, observation tokens masked (003 eq. 12)."""

    algorithm = "m-dpo"


class MKTOTrainer(Trainer):
    """Desirable and undesirable whole conversations, observation tokens masked (003 eq. 13)."""

    algorithm = "m-kto"


__all__ = ["DPOTrainer", "DriftTrainer", "MDPOTrainer", "MKTOTrainer", "RefitTrainer", "SFTTrainer",
           "StarGateTrainer", "SwiftTrainer", "Trainer", "TrainerArgs", "TrainerCallback"]
