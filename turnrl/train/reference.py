"""The reference policy pi_ref of preference learning: a frozen model, the policy with its LoRA adapter switched off,
or log-probabilities computed once before training (``algo.preference.precompute_reference``) and kept in
``reference_logps.json`` so that a resumed run uses the values of the original start. The reference always runs in
eval mode (no dropout), which is what makes the ways equal.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from turnrl.errors import ConfigError
from turnrl.layout import REFERENCE_LOGPS
from turnrl.models import load_model, resolve
from turnrl.records import read_json, write_json
from turnrl.train.data import pad_batch, process_share, TokenizedSequence
from turnrl.train.logprobs import MaskedLogprobLM, sequence_logprobs
from turnrl.train.loop import TrainLoop
from turnrl.train.passes import collective_passes, idle_forward
from turnrl.train.preference_data import step_sequences


@torch.no_grad()
def precompute_reference(module, steps: list[list[Any]], pad_id: int, accelerator, max_tokens: int,
                         desc: str | None = None, collective: bool = False) -> dict[str, float]:
    """log pi_ref(y | x) of every sequence of the run under ``module`` (a :class:`MaskedLogprobLM`), in eval mode.

    Each sequence is computed in the very micro-batch (same rows, same padding) the training step will run it in
    first, so that under bf16 autocast the reference matches the starting policy bit for bit rather than up to
    shape-dependent rounding; later epochs reuse the values. Under data parallelism each process computes its
    own share and every process gets all the values. ``collective``: ``module`` is the sharded policy (FSDP,
    DeepSpeed), whose every pass every process must join: each runs as many passes as the process with the most
    and computes every pass of its share."""
    from accelerate.utils import gather_object

    was_training = module.training
    module.eval()
    values: dict[str, float] = {}
    for step in tqdm(steps, desc=desc, unit="step", disable=desc is None or not accelerator.is_main_process):
        own = step_sequences(process_share(step, accelerator), max_tokens)
        passes = max(len(step_sequences(process_share(step, accelerator, rank), max_tokens))
                     for rank in range(accelerator.num_processes)) if collective else len(own)
        for k in range(passes):
            if k >= len(own):
                idle_forward(accelerator, module)
                continue
            seqs = own[k]
            if all(s.key in values for s in seqs) and not collective:
                continue
            batch = pad_batch(seqs, pad_id, accelerator.device)
            with accelerator.autocast():
                logprobs, rows = module(**batch)
            for s, v in zip(seqs, sequence_logprobs(logprobs.float(), rows, len(seqs)).tolist()):
                values.setdefault(s.key, v)
    module.train(was_training)
    if accelerator.num_processes > 1:
        values = {k: v for part in gather_object([values]) for k, v in part.items()}
    return values


@contextlib.contextmanager
def adapters_off(lm):
    """The policy's LoRA adapters switched off for a pass (the base model: the reference of a fresh adapter).

    Not PEFT's ``disable_adapter()``: that also clears and then sets the adapter weights' ``requires_grad``, and
    under FSDP2 a pass after such a flip finds the adapters frozen ("element 0 of tensors does not require grad").
    Only the layers' switch is flipped here; under ``no_grad`` the pass is the same.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    kinds: tuple[type, ...] = (BaseTunerLayer,)
    try:
        from peft.utils.other import AuxiliaryTrainingWrapper  # modules_to_save, trainable tokens

        kinds += (AuxiliaryTrainingWrapper,)
    except ImportError:
        pass
    layers = [m for m in lm.modules() if isinstance(m, kinds)]
    before = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, was in zip(layers, before):
            m._disable_adapters = was


class Reference:
    """log pi_ref of a micro-batch: looked up from the precomputed values, or computed now by a frozen model or by
    the policy with its LoRA adapter disabled (``module=None``)."""

    def __init__(self, values: dict[str, float] | None = None, module=None):
        self.values, self.module = values, module

    @property
    def through_policy(self) -> bool:
        """Whether a reference pass is a pass through the (possibly sharded) policy."""
        return self.values is None and self.module is None

    @torch.no_grad()
    def __call__(self, seqs: list[TokenizedSequence], batch: dict[str, Any], accelerator, model) -> torch.Tensor:
        if self.values is not None:
            return torch.tensor([self.values[s.key] for s in seqs], device=accelerator.device)
        if self.module is not None:
            with accelerator.autocast():
                logprobs, rows = self.module(**batch)
        else:
            policy = accelerator.unwrap_model(model)
            was_training = policy.training
            policy.eval()
            with adapters_off(policy.lm), accelerator.autocast():
                logprobs, rows = model(**batch)
            policy.train(was_training)
        return sequence_logprobs(logprobs.float(), rows, len(seqs))


def freeze(lm):
    """A model for inference only: LoRA merged in, no gradients, eval mode."""
    if hasattr(lm, "merge_and_unload"):
        lm = lm.merge_and_unload()
    lm.requires_grad_(False)
    return lm.eval()


def reference_model(reference: str, lm, fresh_adapter: bool, precompute: bool):
    """The frozen reference model, or None where the policy itself serves: a fresh LoRA adapter (disabled, it
    is the base) or a precomputation before the first step (the policy then is the start policy)."""
    if reference:
        return freeze(load_model(resolve(reference), dtype="float32")), reference
    if fresh_adapter:
        return None, "the base model (LoRA adapter disabled)"
    if precompute:
        return None, "the starting policy"
    return freeze(copy.deepcopy(lm)), "a frozen copy of the starting policy"


def reference_values(loop: TrainLoop, ref_lm, steps: list[list[Any]], out_dir: Path, pad_id: int,
                      micro_batch_tokens: int) -> dict[str, float]:
    """The precomputed reference log-probabilities: computed now, or, when resuming, those of the original start."""
    cache = out_dir / REFERENCE_LOGPS
    needed = {s.key for step in steps for seqs in step_sequences(step, micro_batch_tokens) for s in seqs}
    if (loop.state_dir / "trainer_state.json").exists():
        values = read_json(cache) if cache.exists() else {}
        missing = needed - set(values)
        if missing:
            raise ConfigError(f"{out_dir}: resuming, but the saved reference log-probabilities ({cache}) lack "
                              f"{len(missing)} of this run's sequences (the data or settings changed); "
                              "train again with --overwrite true")
        return values
    module = MaskedLogprobLM(ref_lm).to(loop.accelerator.device) if ref_lm is not None else loop.model
    values = precompute_reference(module, steps, pad_id, loop.accelerator, micro_batch_tokens,
                                  desc="reference log-probs",
                                  collective=ref_lm is None and collective_passes(loop.accelerator))
    if loop.accelerator.is_main_process:
        write_json(cache, values)
    return values
