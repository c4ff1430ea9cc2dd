"""Experiment tracking through accelerate's trackers: TensorBoard, Weights & Biases, trackio.

``report_to`` names them: ``none`` (the default), one name, or several separated by commas
(``tensorboard,wandb``). Where each run goes:

- **tensorboard**: event files in ``<output>/tensorboard/`` (a training run: ``train/<algo>/tensorboard``;
  ``turnrl iterate``: ``<run_dir>/tensorboard`` for the per-iteration evaluation, and each iteration's training
  in its own ``iter_t/train/<algo>/tensorboard``), so ``tensorboard --logdir RUN_DIR`` shows every run of a run
  directory. The hyperparameters (the run's settings) go in as TensorBoard hparams.
- **wandb** / **trackio**: the project ``turnrl`` (``WANDB_PROJECT`` / ``TRACKIO_PROJECT`` override it), the run
  named after its output folder; wandb keeps its local files in ``<output>/wandb``.

What is logged: every number of a training step's ``train_log.jsonl`` row under ``train/`` (loss, NLL per token,
gradient norm, learning rate, epoch, seconds, and what the trainer adds: trajectories and tokens, the DPO/KTO
rewards, the distillation KL), at the optimizer step; the trainer's data diagnostics (``diagnostics.json``:
weights, ESS, pairs, dropped examples) once, under ``diagnostics/`` at step 0; ``turnrl iterate``'s held-out
metrics at each iteration.

A tracker that is asked for must be installed: a missing one is a :class:`ConfigError` naming the package to
install, before anything runs; an unknown name is one already when the config is made (``turnrl train
--report_to x`` prints one line naming the known trackers and exits with status 2).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Sequence

from turnrl.errors import ConfigError

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
"""The trackers ``report_to`` accepts, each with the package that must be installed for it."""

PROJECT = "turnrl"
TENSORBOARD_DIR = "tensorboard"


def tracker_names(value: str | Sequence[str] | None) -> list[str]:
    """``"none"`` -> []; ``"tensorboard"`` -> ["tensorboard"]; ``"tensorboard,wandb"`` (or a list) -> both.
    Unknown names are refused (a config's own check: nothing is imported)."""
    if value is None:
        return []
    parts = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    names = list(dict.fromkeys(str(p).strip().lower() for p in parts if str(p).strip()))
    if names in ([], ["none"]):
        return []
    if "none" in names:
        raise ConfigError(f"report_to: {value!r}; 'none' cannot be combined with trackers")
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"report_to: {', '.join(unknown)}; expected none, {', '.join(TRACKERS)} "
                          "(or several, comma-separated)")
    return names


def parse_report_to(value: str | Sequence[str] | None) -> list[str]:
    """:func:`tracker_names`, and the trackers whose package is missing are refused too."""
    names = tracker_names(value)
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    for name in names:
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"report_to: {name} is not installed; pip install {TRACKERS[name]}")
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"report_to: this accelerate has no {name} tracker; pip install -U accelerate")
    return names


def make_trackers(names: list[str], out_dir: Path, run_name: str, purge_step: int | None = None) -> list[Any]:
    """accelerate tracker objects for ``names`` (not started), writing under ``out_dir``.

    ``purge_step``: TensorBoard hides the events of earlier writers of the same folder from this step on (a
    resumed run re-logs the steps after its saved state; a run started over, everything).
    """
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = []
    for name in names:
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            extra = {} if purge_step is None else {"purge_step": purge_step}
            # The run name is TensorBoard's sub-folder: <out_dir>/tensorboard.
            trackers.append(cls(TENSORBOARD_DIR, str(out_dir), **extra))
        elif name == "wandb":
            trackers.append(cls(os.environ.get("WANDB_PROJECT", PROJECT), name=run_name, dir=str(out_dir)))
        else:
            trackers.append(cls(os.environ.get("TRACKIO_PROJECT", PROJECT), name=run_name))
    return trackers


def run_label(out_dir: Path) -> str:
    """A run's name in wandb / trackio: the last three parts of its output folder (``sciq/train/swift``)."""
    return "/".join(Path(out_dir).resolve().parts[-3:])


def hparams(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as the flat ``{"optim.learning_rate": 1e-5}`` that trackers take: scalars as they are,
    lists and other values as JSON text."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(hparams(value, f"{prefix}{key}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def scalars(values: dict[str, Any], prefix: str, skip: Sequence[str] = ()) -> dict[str, float | int]:
    """The numbers of ``values`` (nested dicts flattened with ``/``) under ``prefix``; text, lists and booleans
    are left out."""
    out: dict[str, float | int] = {}
    for key, value in values.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


class StandaloneTrackers:
    """accelerate's trackers outside a training loop (``turnrl iterate``'s per-iteration metrics).

    No Accelerator here: it would fix accelerate's process-wide mixed precision before the trainers choose theirs.
    The trackers need accelerate's ``PartialState`` (the main-process check, accelerate's logging), which is made
    here as the trainers make it (``cpu=True`` on a machine without a GPU, which is what lets a launcher run
    data-parallel on CPUs), so that the trainers' Accelerators find it as they would have made it.
    """

    def __init__(self, report_to: str | Sequence[str], out_dir: Path, config: dict[str, Any] | None = None,
                 purge_step: int | None = 0):
        names = parse_report_to(report_to)
        self.trackers: list[Any] = []
        if not names:
            return
        from accelerate import PartialState

        from turnrl.models import default_device

        if not PartialState(cpu=default_device() == "cpu").is_main_process:
            return  # wandb and trackio would start a run in every process otherwise
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.trackers = make_trackers(names, Path(out_dir), run_label(out_dir), purge_step=purge_step)
        for tracker in self.trackers:
            tracker.start()
            if config:
                tracker.store_init_configuration(config)

    def log(self, values: dict[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
