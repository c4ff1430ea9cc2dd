"""The optimisation loop every trainer runs: accelerate (device placement, bf16 autocast, DeepSpeed / FSDP /
multi-GPU through an accelerate config) and peft (LoRA) underneath; one optimizer step per batch of ``batch_size``
trajectories (or pairs), whose passes :func:`turnrl.train.passes.accumulate` runs; logging, trackers, callbacks,
resumable states and the saved checkpoint."""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from turnrl.errors import TrainingDiverged
from turnrl.records import atomic_write_text, read_json, write_json, write_jsonl
from turnrl.train.config import OptimConfig, TrainConfig, resolved_precision
from turnrl.train.passes import engine_asked
from turnrl.layout import DIAGNOSTICS, TRAIN_LOG, TRAIN_SETTINGS


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
        self.log_path = out_dir / TRAIN_LOG
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

        record = out_dir / TRAIN_SETTINGS
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


def write_training_files(loop: "TrainLoop", files: dict[str, Any]) -> None:
    """The trainer's data files (diagnostics.json, pairs.jsonl, ...) beside the checkpoint, by the main process."""
    if loop.accelerator.is_main_process:
        loop.out_dir.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (write_jsonl if name.endswith(".jsonl") else write_json)(loop.out_dir / name, content)
    if DIAGNOSTICS in files and loop.tracking and not loop.resuming_from:
        from turnrl.train.tracking import scalars

        loop.accelerator.log(scalars(files[DIAGNOSTICS], "diagnostics/"), step=0)
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
