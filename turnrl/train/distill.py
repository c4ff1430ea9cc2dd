"""``turnrl train --algo star-gate-d``: STaR-GATE distilled into the base model (000 Sec. 4 and Table 27).

The teacher is the STaR-GATE checkpoint of the run (trained first with the weighted trainer if absent), the student
is the base model, and the data are STaR-GATE's: the selected (best) trajectory of each group. At every trained
token k (the assistant messages' tokens with their end-of-turn token, as in SFT):

    l_k = alpha * (-log p_student(y_k | ...)) + (1 - alpha) * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T))

summed over a trajectory's trained tokens and averaged over the step's trajectories (``optim.normalization: sum``,
the default) or divided by the step's trained tokens (``mean``). alpha = 0.5 and T = 2.0 are 000's values; the
T^2 keeps the KL term's gradient on the scale of the NLL's whatever T is (Hinton et al., 2015). Table 27's
"student_layers 8" is not explained in 000; the student here is the whole base model.

The KL needs both models' full-vocabulary distributions at every trained token. Only the trained positions go
through the output layers, in chunks of tokens whose logits are recomputed in the backward pass, so at most one
chunk's vocabulary-sized tensors exist at a time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from turnrl.algorithms.registry import get_algorithm
from turnrl.errors import ConfigError, InputError, NothingToLearn
from turnrl.models import load_model, resolve, stop_token_ids
from turnrl.layout import DIAGNOSTICS, RunDir
from turnrl.train.config import checkpoint_or_start, OptimConfig, read_log, TrainConfig
from turnrl.train.data import epoch_steps, micro_batches, pad_batch, process_share
from turnrl.train.loop import finish_training, load_for_training, set_seed, TrainLoop, write_training_files
from turnrl.train.passes import accumulate
from turnrl.train.logprobs import _base_lm, no_split_modules
from turnrl.train.reference import freeze
from turnrl.train.weighted import tokenize_examples, train_weighted
from turnrl.log import get_logger

logger = get_logger(__name__)

TEACHER = "star-gate"
"""The teacher: the run's STaR-GATE policy (train/star-gate/), trained first if absent."""


def _capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _distill_terms(student_head: nn.Module, teacher_head: nn.Module, hs: torch.Tensor, ht: torch.Tensor,
                   targets: torch.Tensor, temperature: float, student_cap: float | None,
                   teacher_cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: the student's NLL of the target, and KL(teacher_T || student_T) over the whole vocabulary."""
    student = _capped(student_head(hs).float(), student_cap)
    with torch.no_grad():
        log_p_teacher = F.log_softmax(_capped(teacher_head(ht).float(), teacher_cap) / temperature, dim=-1)
    nll = F.cross_entropy(student, targets, reduction="none")
    log_q_student = F.log_softmax(student / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_q_student)).sum(-1)
    return nll, kl


class DistillLM(nn.Module):
    """forward(input_ids, attention_mask, label_mask) -> (NLL per trained token, KL per trained token, row index).

    ``self.lm`` is the student (saved as the checkpoint); the teacher is held outside the module tree, so it is
    neither optimised nor written into the training state.
    """

    def __init__(self, lm: nn.Module, teacher: nn.Module, temperature: float, chunk_tokens: int = 256):
        super().__init__()
        self.lm = lm
        self.__dict__["teacher"] = teacher
        self.temperature = temperature
        self.chunk_tokens = chunk_tokens
        self._no_split_modules = no_split_modules(lm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                label_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        student, teacher = _base_lm(self.lm), _base_lm(self.teacher)
        hidden = student.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        with torch.no_grad():
            t_hidden = teacher.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        predicts = label_mask[:, 1:].bool()
        rows = predicts.nonzero()[:, 0]
        hs, ht, targets = hidden[:, :-1][predicts], t_hidden[:, :-1][predicts], input_ids[:, 1:][predicts]
        args = (student.get_output_embeddings(), teacher.get_output_embeddings())
        caps = (getattr(student.config, "final_logit_softcapping", None),
                getattr(teacher.config, "final_logit_softcapping", None))
        nll, kl = [], []
        for start in range(0, hs.shape[0], self.chunk_tokens):
            chunk = (hs[start: start + self.chunk_tokens], ht[start: start + self.chunk_tokens],
                     targets[start: start + self.chunk_tokens], self.temperature, *caps)
            if torch.is_grad_enabled() and hs.requires_grad:
                n, k = checkpoint(_distill_terms, *args, *chunk, use_reentrant=False)
            else:
                n, k = _distill_terms(*args, *chunk)
            nll.append(n)
            kl.append(k)
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return (torch.cat(nll) if nll else empty), (torch.cat(kl) if kl else empty), rows


def distill_step_loss(alpha: float, temperature: float, normalization: str, micro_batch_tokens: int, pad_id: int):
    """One optimizer step of the distillation loss over weighted items (see the module docstring); the passes
    are :func:`turnrl.train.passes.accumulate`'s, normalised as in the weighted trainer."""

    def step_loss(step, accelerator, model) -> dict[str, float]:
        z = len(step) if normalization == "sum" else max(1, sum(it.tokens for it in step))

        def plan(rank):
            return micro_batches(process_share(step, accelerator, rank), lambda it: len(it.seq.input_ids),
                                 micro_batch_tokens)

        def micro_loss(micro):
            batch = pad_batch([it.seq for it in micro], pad_id, accelerator.device)
            with accelerator.autocast():
                nll, kl, _ = model(**batch)
            loss = (alpha * nll + (1 - alpha) * temperature ** 2 * kl).sum() / z
            return loss, torch.stack([loss.detach(), nll.detach().sum(), kl.detach().sum(),
                                      torch.tensor(float(nll.numel()))])

        # loss, summed NLL, summed KL, tokens
        loss, nll_sum, kl_sum, tokens = accumulate(accelerator, model, plan, micro_loss, width=4)
        return {"loss": loss, "nll_per_token": nll_sum / max(1, tokens), "kl_per_token": kl_sum / max(1, tokens),
                "trajectories": len(step), "tokens": int(tokens)}

    return step_loss


def train_distill(cfg: TrainConfig, teacher_optim: OptimConfig | None = None) -> Path:
    """Train STaR-GATE-D; returns the student's checkpoint folder."""
    algo, optim = cfg.algo, cfg.optim
    if (done := checkpoint_or_start(cfg)) is not None:
        return done
    params = algo.star_gate_d
    if not 0.0 <= params.alpha <= 1.0:
        raise ConfigError(f"algo.star_gate_d.alpha: {params.alpha}; expected a value in [0, 1]")
    if params.temperature <= 0:
        raise ConfigError(f"algo.star_gate_d.temperature: {params.temperature}; expected > 0")
    teacher_dir = RunDir(cfg.run_dir).train(TEACHER)
    teacher = params.teacher or str(teacher_dir / "checkpoint")
    if params.teacher and not Path(params.teacher).exists():
        raise InputError(f"algo.star_gate_d.teacher: {params.teacher}: no such checkpoint")
    if not params.teacher and not (Path(teacher) / "turnrl_train.json").exists():
        logger.info(f"train {algo.name}: no STaR-GATE teacher in {teacher_dir}; training it first")
        train_weighted(TrainConfig(run_dir=cfg.run_dir, model=cfg.model, input=cfg.input,
                                   algo=replace(algo, name=TEACHER), optim=teacher_optim or optim))
    trajectories, model_name = read_log(cfg)
    examples, diagnostics = get_algorithm(algo.name, family="distillation").build(trajectories, algo)
    if not examples:
        raise NothingToLearn(f"{algo.name}: STaR-GATE selected no trajectory ({diagnostics}); nothing to distil")
    set_seed(optim.seed)
    lm, tokenizer, _ = load_for_training(model_name, optim)
    teacher_lm = freeze(load_model(resolve(teacher), dtype="float32"))
    sizes = (lm.get_output_embeddings().weight.shape[0], teacher_lm.get_output_embeddings().weight.shape[0])
    if sizes[0] != sizes[1]:
        raise ConfigError(f"{algo.name}: the teacher {teacher} has a {sizes[1]}-token vocabulary and the student "
                          f"{model_name} {sizes[0]}; distillation needs the same tokenizer")
    items, dropped = tokenize_examples(examples, tokenizer, stop_token_ids(tokenizer, lm), optim)
    diagnostics.update({"dropped": dropped, "teacher": teacher, "alpha": params.alpha,
                        "temperature": params.temperature})
    if not items:
        raise ConfigError(f"{algo.name}: every selected trajectory was dropped ({dropped})")
    steps = epoch_steps(items, optim.batch_size, optim.epochs, optim.seed)
    loop = TrainLoop(lm, tokenizer, optim, cfg.out_dir, model_name, steps,
                     wrap=lambda student: DistillLM(student, teacher_lm, params.temperature))
    teacher_lm.to(loop.accelerator.device)
    write_training_files(loop, {DIAGNOSTICS: diagnostics})
    loop.accelerator.print(f"train {algo.name}: {len(items)} trajectories distilled from {teacher}, {len(steps)} "
                           f"steps, dropped {dropped}")
    history = loop.run(distill_step_loss(params.alpha, params.temperature, optim.normalization,
                                         optim.micro_batch_tokens, tokenizer.pad_token_id),
                       -(-len(items) // optim.batch_size))
    return finish_training(loop, cfg, model_name, history, diagnostics)
