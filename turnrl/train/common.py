"""What every trainer shares: the config, tokenised examples, batching, the loop, checkpoints and resumption.

Built on accelerate (device placement, bf16 autocast, gradient accumulation across micro-batches, DeepSpeed /
FSDP / multi-GPU through an accelerate config) and peft (LoRA). The loop is deliberately plain: one optimizer
step per batch of ``batch_size`` trajectories (or pairs), split into micro-batches by a token budget, each
micro-batch's loss already divided by the whole step's normaliser so that the accumulated gradient is exactly the
step's gradient.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from tqdm.auto import tqdm

from turnrl.algorithms.weighted import AlgoConfig
from turnrl.errors import ConfigError, TrainingDiverged
from turnrl.layout import SCORED, train_dir
from turnrl.records import Trajectory, atomic_write_text, read_json, read_trajectories, write_json, write_jsonl
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
        return Path(self.run_dir) / self.output if self.output else train_dir(self.run_dir, self.algo.name)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"learning_rate": 1e-4}} -> {"optim.learning_rate": 1e-4}."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
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
    record, state = cfg.out_dir / "train_settings.json", cfg.out_dir / "state"
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("run_dir", "overwrite")}
    if (state / "trainer_state.json").exists():
        saved = read_json(record) if record.exists() else {}
        now, before = _flat(settings), _flat(saved)
        changed = sorted(k for k in now if before.get(k) != now[k] and k not in UNTRACKED_SETTINGS)
        if changed and not cfg.overwrite:
            raise ConfigError(f"{state}: a killed run saved this state with other settings ({', '.join(changed)}); "
                              "resume it with the same settings, or pass --overwrite true to start over")
        if changed:
            shutil.rmtree(state)
            (cfg.out_dir / "train_log.jsonl").unlink(missing_ok=True)
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


def write_training_files(loop: "TrainLoop", files: dict[str, Any]) -> None:
    """The trainer's data files (diagnostics.json, pairs.jsonl, ...) beside the checkpoint, by the main process."""
    if loop.accelerator.is_main_process:
        loop.out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (write_jsonl if name.endswith(".jsonl") else write_json)(loop.out_dir / name, content)
    if "diagnostics.json" in files and loop.tracking and not loop.resuming_from:
        from turnrl.train.tracking import scalars

        loop.accelerator.log(scalars(files["diagnostics.json"], "diagnostics/"), step=0)
    loop.accelerator.wait_for_everyone()


def finish_training(loop: "TrainLoop", cfg: TrainConfig, model_name: str, history: list[dict[str, float]],
                    diagnostics: dict[str, Any]) -> Path:
    """Save the trained policy with what made it (config, start model, loss summary, data diagnostics)."""
    summary = summarise_history(history)
    checkpoint = loop.save_checkpoint({"config": asdict(cfg), "model": model_name, "summary": summary,
                                       "diagnostics": diagnostics})
    loop.end_tracking()
    loop.accelerator.print(summary_line(cfg.algo.name, summary, checkpoint))
    if loop.accelerator.is_main_process:
        for callback in _CALLBACKS.get():
            callback.on_train_end(checkpoint)
    if cfg.push_to_hub and loop.accelerator.is_main_process:
        from turnrl.train.card import push_to_hub

        url = push_to_hub(checkpoint, cfg.hub_model_id, private=cfg.hub_private)
        loop.accelerator.print(f"train {cfg.algo.name}: pushed to the Hub as {cfg.hub_model_id} ({url})")
    return checkpoint


def resolved_precision(precision: str) -> str:
    from turnrl.models import native_bf16

    return ("bf16" if native_bf16() else "fp32") if precision == "auto" else precision


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_for_training(model_name: str, optim: OptimConfig):
    """The policy to train (fp32 master weights), its tokenizer, and the resolved model."""
    from turnrl.models import load_model, load_tokenizer, resolve

    resolved = resolve(model_name)
    tokenizer = load_tokenizer(resolved)
    lm = load_model(resolved, dtype="float32", trainable_adapter=optim.lora)
    if optim.lora and not resolved.adapter:
        from peft import LoraConfig, get_peft_model

        lm = get_peft_model(lm, LoraConfig(r=optim.lora_r, lora_alpha=optim.lora_alpha,
                                           lora_dropout=optim.lora_dropout, target_modules=optim.lora_targets,
                                           task_type="CAUSAL_LM"))
    elif not optim.lora and resolved.adapter:
        lm = lm.merge_and_unload()  # full fine-tuning continues from the merged weights
    if optim.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if optim.lora:
            lm.enable_input_require_grads()
    lm.config.use_cache = False
    lm.train()
    return lm, tokenizer, resolved


@dataclass
class TokenizedSequence:
    """One tokenised training sequence with its loss mask."""

    input_ids: list[int]
    label_mask: list[int]
    key: str


def pad_batch(seqs: Sequence[TokenizedSequence], pad_id: int, device) -> dict[str, Any]:
    import torch

    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        attention[r, :n] = 1
        labels[r, :n] = torch.tensor(s.label_mask)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "label_mask": labels.to(device)}


def micro_batches(items: list[Any], length: Callable[[Any], int], max_tokens: int) -> list[list[Any]]:
    """Split a step's items into micro-batches of at most ``max_tokens`` padded tokens, longest first so that
    items of similar length share a micro-batch."""
    ordered = sorted(items, key=length, reverse=True)
    batches: list[list[Any]] = []
    for item in ordered:
        if batches and (len(batches[-1]) + 1) * length(batches[-1][0]) <= max_tokens:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def epoch_steps(items: list[Any], batch_size: int, epochs: float, seed: int) -> list[list[Any]]:
    """The optimizer steps of the whole run: each epoch shuffles the items (seeded) and cuts them into batches."""
    steps: list[list[Any]] = []
    whole, frac = int(epochs), epochs - int(epochs)
    for epoch in range(whole + (1 if frac > 0 else 0)):
        order = list(items)
        random.Random(seed * 1000 + epoch).shuffle(order)
        if epoch == whole:
            order = order[: max(1, round(len(order) * frac))]
        steps.extend(order[i: i + batch_size] for i in range(0, len(order), batch_size))
    return steps


def process_share(items: list[Any], accelerator, rank: int | None = None) -> list[Any]:
    """This process's part (or process ``rank``'s) of a step's items under data parallelism (all of them on one
    process)."""
    rank = accelerator.process_index if rank is None else rank
    return items[rank:: accelerator.num_processes]


def collective_passes(accelerator) -> bool:
    """Whether every forward and backward pass through the model is a collective operation across processes:
    under FSDP each layer's weights are gathered for its forward and its backward pass, under DeepSpeed ZeRO the
    backward passes reduce gradients. Every process must then run as many passes as every other in each step.
    Under DDP only the one synchronised backward pass per step is."""
    from accelerate.utils import DistributedType

    return accelerator.num_processes > 1 and accelerator.distributed_type in (DistributedType.FSDP,
                                                                              DistributedType.DEEPSPEED)


def passes_in_step(accelerator, count: Callable[[int], int]) -> int:
    """How many micro-batch passes this process runs in a step, ``count(rank)`` being the number of micro-batches
    in process ``rank``'s share: its own; under data parallelism at least one (an empty share still joins the
    step's gradient synchronisation); where passes are collective (:func:`collective_passes`), as many as the
    process with the most. Passes beyond a process's own micro-batches are :func:`idle_pass` es."""
    own = count(accelerator.process_index)
    if accelerator.num_processes == 1:
        return own
    if collective_passes(accelerator):
        return max(1, max(count(rank) for rank in range(accelerator.num_processes)))
    return max(own, 1)


@contextlib.contextmanager
def gradient_sync(accelerator, model, last: bool):
    """Accumulate a step's micro-batches locally and synchronise (and, under DeepSpeed, step) only on the last.

    Every process must run the same number of synchronised backward passes per step: exactly one, the last.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.gradient_state._set_sync_gradients(last)
        yield
    elif accelerator.num_processes > 1 and not last:
        with accelerator.no_sync(model):
            yield
    else:
        yield


def dummy_batch(accelerator) -> dict[str, Any]:
    """A two-token sequence with one target, in the trainers' wrappers' arguments (input_ids, attention_mask,
    label_mask)."""
    import torch

    ids = torch.zeros((1, 2), dtype=torch.long, device=accelerator.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "label_mask": torch.tensor([[0, 1]], device=accelerator.device)}


def idle_forward(accelerator, model) -> None:
    """A forward pass without gradients on :func:`dummy_batch`: what a process with no data left runs where another
    runs a no-grad pass through the (sharded) model, such as a reference pass."""
    import torch

    with torch.no_grad(), accelerator.autocast():
        model(**dummy_batch(accelerator))


def idle_pass(accelerator, model, last: bool = True, forwards: int = 0) -> None:
    """A micro-batch pass without data: a process whose share of the step has no micro-batch left still joins the
    step's collectives (:func:`passes_in_step`).

    DDP reduces gradients only in the backward pass of a forward pass through it; FSDP gathers weights in every
    pass. The process runs ``forwards`` no-grad passes (:func:`idle_forward`: what a real micro-batch runs before its
    training pass, e.g. a reference pass through the policy), then the model on the dummy sequence and
    backpropagates zero.
    """
    import torch

    for _ in range(forwards):
        idle_forward(accelerator, model)
    with gradient_sync(accelerator, model, last=last):
        with accelerator.autocast():
            outputs = model(**dummy_batch(accelerator))
        accelerator.backward(sum(t.float().sum() for t in outputs if torch.is_floating_point(t)) * 0.0)


def engine_asked() -> str | None:
    """The sharding engine an ``accelerate launch`` config asked for (its environment variables), if any."""
    for var, engine in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(var, "false").lower() == "true":
            return engine
    return None


class TrainerCallback:
    """Hooks into a training run (the Python API's ``callbacks``); override the ones needed."""

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        """After optimizer step ``step`` (1-based), with the row written to train_log.jsonl."""

    def on_train_end(self, checkpoint: Path) -> None:
        """After the checkpoint is saved."""


_CALLBACKS: contextvars.ContextVar[tuple[TrainerCallback, ...]] = contextvars.ContextVar("turnrl_callbacks",
                                                                                         default=())


@contextlib.contextmanager
def train_callbacks(callbacks: Iterable[TrainerCallback]):
    """Call ``callbacks`` from every training run started inside the ``with`` block (main process only)."""
    token = _CALLBACKS.set(tuple(callbacks))
    try:
        yield
    finally:
        _CALLBACKS.reset(token)


class TrainLoop:
    """The optimisation loop shared by the trainers, with logging, checkpoints and resumption.

    ``step_loss(step_items, accelerator, model)`` runs the forward/backward passes of one optimizer step (calling
    ``accelerator.backward`` per micro-batch) and returns a dict of metrics (including ``loss``).

    Experiment trackers (turnrl/train/tracking.py) are the ones the run's settings record names
    (``train_settings.json``, written by :func:`checkpoint_or_start` before every trainer builds its loop, so
    every trainer family tracks alike); a loop without that record tracks nothing. Each step's log row goes to
    them under ``train/``, with the record as the run's hyperparameters.
    """

    def __init__(self, lm, tokenizer, optim: OptimConfig, out_dir: Path, base_model_name: str,
                 steps: list[list[Any]], wrap: Callable[[Any], Any]):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType
        from transformers import get_scheduler

        optim.check()
        if optim.threads:
            torch.set_num_threads(optim.threads)
        self.optim, self.out_dir, self.base_model_name = optim, out_dir, base_model_name
        self.tokenizer, self.steps = tokenizer, steps
        from turnrl.models import default_device

        # cpu=True on a machine without a GPU is what lets torchrun / accelerate launch run data-parallel on CPUs.
        # A causal LM's buffers are constants (rotary frequencies): not broadcasting them keeps every forward pass
        # free of collectives under DDP, so processes may run different numbers of forward passes in a step (an
        # empty share, more micro-batches, a reference pass) without their collectives falling out of step. Under
        # FSDP and DeepSpeed every pass is collective: the trainers pad each process's passes (passes_in_step).
        bf16 = resolved_precision(optim.precision) == "bf16"
        self.state_dir = out_dir / "state"
        meta = self.state_dir / "trainer_state.json"
        self.resuming_from = json.loads(meta.read_text())["step"] if meta.exists() else 0
        trackers, settings = self._trackers(out_dir)
        # split_batches: each optimizer step's batch is split between the processes here, so the learning-rate
        # schedule advances once per step (accelerate otherwise steps it once per process: warm-up and decay would
        # run num_processes times too fast).
        self.accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no",
                                       cpu=default_device() == "cpu",
                                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
                                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                                       log_with=trackers or None)
        self._check_engine()
        plugin = self.accelerator.state.deepspeed_plugin if \
            self.accelerator.distributed_type == DistributedType.DEEPSPEED else None
        offload = False
        if plugin is not None:
            ds = plugin.deepspeed_config
            # Steps are cut into micro-batches here, not by DeepSpeed: one micro-batch per backward, no scaling.
            ds["train_micro_batch_size_per_gpu"] = 1
            ds["gradient_accumulation_steps"] = 1
            # DeepSpeed clips inside its step; clip_grad_norm_ below then only reads the norm.
            ds["gradient_clipping"] = max(0.0, optim.max_grad_norm)
            offload = str(ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")) in \
                ("cpu", "nvme")
        self.lm = lm
        model = wrap(lm)
        params = [p for p in model.parameters() if p.requires_grad]
        if offload:
            # ZeRO-Offload runs the update on the CPU and refuses torch's AdamW there: DeepSpeed's CPU Adam in AdamW
            # mode is the same update (compiled on first use).
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=optim.learning_rate, weight_decay=optim.weight_decay,
                                         adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=optim.learning_rate, weight_decay=optim.weight_decay)
        warmup = math.ceil(optim.warmup_ratio * len(steps))
        scheduler = get_scheduler(optim.schedule if optim.schedule != "constant" else "constant_with_warmup",
                                  optimizer, num_warmup_steps=warmup, num_training_steps=max(1, len(steps)))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.log_path = out_dir / "train_log.jsonl"
        self.done_steps = 0
        self.resumed_history: list[dict[str, Any]] = []
        self.tracking = bool(trackers)
        if trackers:
            from turnrl.train.tracking import PROJECT, hparams

            if self.accelerator.is_main_process:
                out_dir.mkdir(parents=True, exist_ok=True)
            self.accelerator.init_trackers(PROJECT, config=hparams(settings))

    def _check_engine(self) -> None:
        """Say so when the launch config asked for FSDP or DeepSpeed and accelerate runs plain data parallelism:
        it enables both only on GPUs (and similar devices), not on CPU processes."""
        from accelerate.utils import DistributedType

        asked = engine_asked()
        if asked and self.accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            self.accelerator.print(
                f"train: the accelerate config asks for {asked}, but accelerate runs "
                f"{self.accelerator.distributed_type.value} on {self.accelerator.device.type} (it enables FSDP and "
                "DeepSpeed on GPUs only); training goes on with plain data parallelism (docs/scaling.md)")

    def _trackers(self, out_dir: Path) -> tuple[list[Any], dict[str, Any]]:
        """The trackers the run's settings record asks for (not started), and the record."""
        from turnrl.train.tracking import make_trackers, parse_report_to, run_label

        record = out_dir / "train_settings.json"
        settings = read_json(record) if record.exists() else {}
        names = parse_report_to(settings.get("report_to", "none"))
        # TensorBoard hides what an earlier writer of the folder logged from the first step this run logs: after a
        # resume, the steps past the saved state; after a start over, everything.
        return make_trackers(names, out_dir, run_label(out_dir),
                             purge_step=self.resuming_from + 1 if self.resuming_from else 0), settings

    def end_tracking(self) -> None:
        """Close the trackers (flush and finish their runs). Not ``accelerator.end_training()``: that also destroys
        the process group, which later stages of the same launch (``turnrl run``'s next algorithm) still use."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers = []
        self.tracking = False

    def resume(self) -> None:
        meta = self.state_dir / "trainer_state.json"
        if meta.exists():
            self.accelerator.load_state(str(self.state_dir))
            self.done_steps = json.loads(meta.read_text())["step"]
            self.accelerator.print(f"train: resuming from step {self.done_steps} of {len(self.steps)} "
                                   f"({self.state_dir})")
            # The log keeps the steps the state holds (a kill after a step's log line but before the next save
            # would otherwise log that step twice), and the run's summary counts them.
            rows = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()] \
                if self.log_path.exists() else []
            self.resumed_history = [r for r in rows if r.get("step", 0) <= self.done_steps]
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in self.resumed_history))
        elif self.log_path.exists() and self.accelerator.is_main_process:
            self.log_path.unlink()  # a log without a state is from a run that saved nothing: start over
        self.accelerator.wait_for_everyone()

    def save_state(self, step: int) -> None:
        """A resumable state (weights, optimizer, scheduler, RNG of every process), swapped in whole."""
        tmp = self.state_dir.with_name("state.tmp")
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        tmp.mkdir(parents=True, exist_ok=True)
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
            shutil.rmtree(self.state_dir, ignore_errors=True)
            os.replace(tmp, self.state_dir)
        self.accelerator.wait_for_everyone()

    def run(self, step_loss: Callable[[list[Any], Any, Any], dict[str, float]],
            steps_per_epoch: int) -> list[dict[str, float]]:
        from turnrl.train.tracking import scalars

        self.resume()
        history: list[dict[str, float]] = list(self.resumed_history)
        main = self.accelerator.is_main_process
        bar = tqdm(total=len(self.steps), initial=self.done_steps, desc="train", unit="step", disable=not main)
        with self.log_path.open("a") if main else contextlib.nullcontext() as log:
            for index in range(self.done_steps, len(self.steps)):
                start = time.perf_counter()
                metrics = step_loss(self.steps[index], self.accelerator, self.model)
                grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.optim.max_grad_norm) \
                    if self.optim.max_grad_norm > 0 else None
                # DeepSpeed clips (and steps) inside its engine and reports the norm, or None when it has none
                measured = grad_norm is not None
                grad_norm = float(grad_norm) if measured else float("nan")
                if not math.isfinite(metrics["loss"]) or (measured and not math.isfinite(grad_norm)):
                    raise TrainingDiverged(
                        f"train: step {index + 1}: loss {metrics['loss']}, gradient norm {grad_norm}; stopped "
                        f"before the update (the last saved state in {self.state_dir} is intact). Check the rewards "
                        "and weights, or lower optim.learning_rate")
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                metrics.update({"step": index + 1, "epoch": (index + 1) / steps_per_epoch,
                                "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                                "seconds": time.perf_counter() - start})
                history.append(metrics)
                if main:
                    log.write(json.dumps(metrics) + "\n")
                    log.flush()
                    for callback in _CALLBACKS.get():
                        callback.on_step_end(index + 1, dict(metrics))
                if self.tracking:
                    self.accelerator.log(scalars(metrics, "train/", skip=("step",)), step=index + 1)
                bar.set_postfix(headline(metrics))
                bar.update(1)
                at_epoch_end = (index + 1) % steps_per_epoch == 0
                if at_epoch_end and round((index + 1) / steps_per_epoch) in self.optim.snapshot_epochs and \
                        index + 1 < len(self.steps):
                    epoch = round((index + 1) / steps_per_epoch)
                    self._save_pretrained(self.out_dir / f"epoch{epoch}", {"model": self.base_model_name,
                                                                           "epoch": epoch, "step": index + 1})
                if (self.optim.save_every and (index + 1) % self.optim.save_every == 0) or \
                        (at_epoch_end and index + 1 < len(self.steps)):
                    self.save_state(index + 1)
        bar.close()
        return history

    def save_checkpoint(self, extra: dict[str, Any]) -> Path:
        """The trained policy as a ``save_pretrained`` folder (full weights, or a PEFT adapter), written whole."""
        target = self._save_pretrained(self.out_dir / "checkpoint", extra)
        if self.accelerator.is_main_process:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return target

    def _save_pretrained(self, target: Path, extra: dict[str, Any]) -> Path:
        tmp = target.with_name(target.name + ".tmp")
        # Every process takes part in gathering the weights (sharded under FSDP / ZeRO-3); the main one writes.
        state = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            lm = self.accelerator.unwrap_model(self.model).lm
            if hasattr(lm, "peft_config"):
                from turnrl.models import resolve

                # PEFT loads the base from here: the weights' folder or hub id (for an alias, the converted GGUF in
                # this machine's cache). turnrl itself resolves the base by the name kept in turnrl_train.json
                # ("model"), which stays valid on another machine.
                base = resolve(self.base_model_name).path
                for cfg in lm.peft_config.values():
                    cfg.base_model_name_or_path = str(Path(base).resolve()) if Path(base).exists() else base
            lm.config.use_cache = True
            lm.save_pretrained(tmp, state_dict={k.removeprefix("lm."): v for k, v in state.items()})
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / "turnrl_train.json", extra)
            from turnrl.train.card import write_card

            write_card(tmp)  # over PEFT's blank template
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            lm.config.use_cache = False
        self.accelerator.wait_for_everyone()
        return target


def headline(metrics: dict[str, float]) -> dict[str, str]:
    """What the progress bar shows: NLL per token first where the loss has one (the token-sum objective grows
    with the number of tokens in a step, so it is not comparable from step to step), then the objective."""
    shown = {"nll/tok": f"{metrics['nll_per_token']:.3f}"} if "nll_per_token" in metrics else {}
    return {**shown, ("objective" if shown else "loss"): f"{metrics['loss']:.4g}",
            "gnorm": f"{metrics['grad_norm']:.3g}"}


def summary_line(name: str, summary: dict[str, float], checkpoint: Any) -> str:
    nan = float("nan")
    objective = f"{summary.get('first_loss', nan):.4g} -> {summary.get('last_loss', nan):.4g}"
    if "first_nll_per_token" in summary:
        return (f"train {name}: done, NLL per token {summary['first_nll_per_token']:.3f} -> "
                f"{summary['last_nll_per_token']:.3f} (objective {objective}); checkpoint {checkpoint}")
    return f"train {name}: done, loss {objective}; checkpoint {checkpoint}"


def summarise_history(history: Iterable[dict[str, float]]) -> dict[str, float]:
    rows = list(history)
    if not rows:
        return {}
    # First and last of the steps that trained something: a weighted step whose trajectories all have weight 0
    # makes no update, and its loss (0) and NLL per token (no tokens) say nothing about the policy.
    trained = [r for r in rows if r.get("active", 1)] or rows
    first, last = trained[0], trained[-1]
    nll = {"first_nll_per_token": first["nll_per_token"], "last_nll_per_token": last["nll_per_token"]} \
        if "nll_per_token" in first else {}
    return {"steps": len(rows), "first_loss": first["loss"], "last_loss": last["loss"], **nll,
            "max_grad_norm": max(r["grad_norm"] for r in rows if not math.isnan(r["grad_norm"])) if any(
                not math.isnan(r["grad_norm"]) for r in rows) else float("nan"),
            "seconds": sum(r["seconds"] for r in rows)}
