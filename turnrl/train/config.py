"""A training run's settings, and the resume policy: a finished output is kept, a killed run resumes only under
the settings it was saved with."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from turnrl.algorithms.config import AlgoConfig
from turnrl.errors import ConfigError
from turnrl.layout import RunDir, SCORED, TRAIN_LOG, TRAIN_SETTINGS
from turnrl.records import Trajectory, read_json, read_trajectories, write_json
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class OptimConfig:
    """How to fine-tune: LoRA or full, precision, optimiser and schedule, batching."""

    lora: bool = False
    """Train a LoRA adapter instead of all weights."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    learning_rate: float = 1e-5
    epochs: float = 1.0
    """Passes over the data (fractions allowed)."""
    batch_size: int = 8
    """Trajectories (or pairs) per optimizer step."""
    micro_batch_tokens: int = 4096
    """Most tokens (padded) per forward pass; a step is split into as many micro-batches as needed."""
    max_length: int = 2048
    """Longer conversations are left out (and counted)."""
    warmup_ratio: float = 0.05
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """constant, linear or cosine (after warm-up)."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """bf16: fp32 master weights under bf16 autocast; fp32: no autocast; auto: bf16 where it runs natively (a GPU,
    or a CPU with AVX512-BF16 / AMX), else fp32 (emulated bf16 autocast is many times slower than fp32)."""
    normalization: Literal["sum", "mean"] = "sum"
    """sum: the papers' objective, a trajectory's token log-probs summed (weights scale whole trajectories),
    averaged over the step's trajectories; mean: summed then divided by the step's trained tokens (TRL's SFT)."""
    truncated_turns: Literal["mask_eot", "drop"] = "mask_eot"
    """A turn cut at the token cap never emitted its end-of-turn token: mask_eot trains its text but not the
    stop; drop leaves such trajectories out."""
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 0
    """Save a resumable state every N optimizer steps (0: at the end of each epoch only)."""
    snapshot_epochs: list[int] = field(default_factory=list)
    """Also save the policy (save_pretrained) after each of these epochs, as epoch<k>/ beside checkpoint/:
    one run then gives the policies of several epoch counts (`turnrl sweep`; with the constant schedule they are
    those of shorter runs up to the warm-up's length)."""
    threads: int = 0
    """CPU threads for torch (0: torch's default, one per core)."""

    def check(self) -> None:
        """The choices the type allows, for configs built in Python (the CLI and YAML parser check them too)."""
        for name, allowed in (("precision", ("auto", "bf16", "fp32")), ("normalization", ("sum", "mean")),
                              ("truncated_turns", ("mask_eot", "drop")),
                              ("schedule", ("constant", "linear", "cosine"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"optim.{name}: {getattr(self, name)!r}; expected {' or '.join(allowed)}")


@dataclass
class TrainConfig:
    """Train a policy on the scored log."""

    run_dir: str = "runs/turnrl"
    model: str = ""
    """The policy to start from (default: the logging policy recorded in the trajectories)."""
    input: str = SCORED
    output: str = ""
    """Output folder inside the run directory (default: train/<algo.name>)."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    overwrite: bool = False
    """Train again even if the output already has a checkpoint."""
    push_to_hub: bool = False
    """Upload the checkpoint (with its model card) to the Hugging Face Hub as hub_model_id when training ends."""
    hub_model_id: str = ""
    """push_to_hub: the repository, e.g. my-org/smollm2-refit (the token comes from HF_TOKEN or `hf auth login`)."""
    hub_private: bool = False
    """push_to_hub: create the repository as private."""
    report_to: str = "none"
    """Experiment trackers: none, tensorboard, wandb or trackio, or several comma-separated (tensorboard: event
    files in <output>/tensorboard; see turnrl/train/tracking.py). Not a training setting: a resumed run may change
    it."""

    def __post_init__(self) -> None:
        from turnrl.train.tracking import tracker_names

        tracker_names(self.report_to)  # an unknown tracker is a config error, before anything is loaded
        if self.push_to_hub and not self.hub_model_id:
            from turnrl.errors import ConfigError

            raise ConfigError("push_to_hub: set hub_model_id, the repository to upload to (e.g. my-org/my-policy)")

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir) / self.output if self.output else RunDir(self.run_dir).train(self.algo.name)


def resolved_precision(precision: str) -> str:
    from turnrl.models import native_bf16

    return ("bf16" if native_bf16() else "fp32") if precision == "auto" else precision


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"learning_rate": 1e-4}} -> {"optim.learning_rate": 1e-4}."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _with_current_names(flat: dict[str, Any]) -> dict[str, Any]:
    """Settings saved before each algorithm's parameters had a section of ``algo`` (``algo.drift_beta``), under
    their names now (``algo.drift.beta``), so that a run killed then resumes; an unset ``negative_floor`` was
    Swift's floor of 0."""
    from turnrl.algorithms.config import RENAMED

    out = {}
    for key, value in flat.items():
        old = key.removeprefix("algo.")
        if key.startswith("algo.") and old in RENAMED:
            key, value = f"algo.{RENAMED[old]}", (0.0 if old == "negative_floor" and value is None else value)
        out[key] = value
    return out


UNTRACKED_SETTINGS = ("report_to", "push_to_hub", "hub_model_id", "hub_private")
"""Recorded with a run's settings but free to change on resume: they do not change what is trained."""


def checkpoint_or_start(cfg: TrainConfig) -> Path | None:
    """The checkpoint a finished run of this output left (nothing to do), unless ``overwrite`` asks to train
    again; otherwise None, and the run starts, or resumes a killed one from its saved state -- only under the
    settings that state was saved with: other settings are refused, naming them (``overwrite`` discards the
    state and starts over)."""
    from turnrl.train.tracking import parse_report_to

    parse_report_to(cfg.report_to)  # a tracker that is not installed stops here, before any work
    checkpoint = cfg.out_dir / "checkpoint"
    if (checkpoint / "turnrl_train.json").exists() and not cfg.overwrite:
        logger.info(f"train: {checkpoint} exists; nothing to do (--overwrite true to train again)")
        return checkpoint
    record, state = cfg.out_dir / TRAIN_SETTINGS, cfg.out_dir / "state"
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("run_dir", "overwrite")}
    if (state / "trainer_state.json").exists():
        saved = read_json(record) if record.exists() else {}
        now, before = _flat(settings), _with_current_names(_flat(saved))
        changed = sorted(k for k in now if before.get(k) != now[k] and k not in UNTRACKED_SETTINGS)
        if changed and not cfg.overwrite:
            raise ConfigError(f"{state}: a killed run saved this state with other settings ({', '.join(changed)}); "
                              "resume it with the same settings, or pass --overwrite true to start over")
        if changed:
            shutil.rmtree(state)
            (cfg.out_dir / TRAIN_LOG).unlink(missing_ok=True)
            logger.info(f"train: {cfg.out_dir}: settings changed ({', '.join(changed)}); starting over")
    write_json(record, settings)
    return None


def read_log(cfg: TrainConfig) -> tuple[list[Trajectory], str]:
    """The scored trajectories to train on and the policy to start from (default: the one that logged them)."""
    cfg.optim.check()
    path = Path(cfg.run_dir) / cfg.input
    trajectories = read_trajectories(path)
    if not trajectories:
        raise ConfigError(f"{path}: no trajectories to train on")
    model_name = cfg.model or trajectories[0].policy.get("model") or ""
    if not model_name:
        raise ConfigError("model: not given, and the trajectories do not record their policy")
    return trajectories, model_name
