"""``turnrl train --algo {sft,star-gate,refit,swift,drift,sft-final}``: weighted fine-tuning.

The loss of one optimizer step over B logged trajectories (000 eq. 5/7, as a minimisation):

    L = -(1 / Z) * sum_{i in step} w_i * sum_{t in trained turns of i} sum_{tokens k of a_t} log pi(a_{t,k} | ...)

with Z = B (``normalization: sum``, the papers' objective, the default) or Z = the number of trained tokens in the
step (``normalization: mean``, TRL's SFT normalisation). Trained tokens are each assistant message's tokens
including its end-of-turn token, except where the turn hit the token cap (see ``OptimConfig.truncated_turns``).
Zero-weight trajectories contribute nothing to the gradient and are left out of the forward pass, but they count
in Z, so the loss is exactly the objective over the logged data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from turnrl.algorithms.weighted import WeightedExample, build_weighted_examples
from turnrl.chat import encode_conversation
from turnrl.errors import NothingToLearn
from turnrl.models import stop_token_ids
from turnrl.train.config import checkpoint_or_start, OptimConfig, read_log, TrainConfig
from turnrl.train.data import epoch_steps, micro_batches, pad_batch, process_share, TokenizedSequence
from turnrl.train.loop import finish_training, load_for_training, set_seed, TrainLoop, write_training_files
from turnrl.train.passes import accumulate
from turnrl.train.logprobs import MaskedLogprobLM
from turnrl.layout import DIAGNOSTICS


@dataclass
class WeightedItem:
    seq: TokenizedSequence
    weight: float
    tokens: int
    """Trained tokens (for the mean normalisation)."""


def tokenize_examples(examples: list[WeightedExample], tokenizer, eot_ids: list[int],
                      optim: OptimConfig) -> tuple[list[WeightedItem], dict[str, int]]:
    """Token ids and loss masks from the chat template (docs/design.md section 3); counts what was left out."""
    items, dropped = [], {"too_long": 0, "truncated": 0, "no_tokens": 0}
    for ex in examples:
        traj = ex.trajectory
        enc = encode_conversation(tokenizer, traj.messages, eot_ids)
        n_turns = len(enc.assistant_spans)
        chosen = list(range(n_turns)) if ex.turns == "all" else [n_turns - 1]
        # A scripted turn (rollout.explore's opening) is not the policy's: it conditions, it is never trained.
        scripted = set(traj.meta.get("scripted_turns", ()))
        chosen = [i for i in chosen if i not in scripted]
        truncated = [t.truncated for t in traj.turns] if len(traj.turns) == n_turns else [False] * n_turns
        if optim.truncated_turns == "drop" and any(truncated[i] for i in chosen):
            dropped["truncated"] += 1
            continue
        if len(enc.input_ids) > optim.max_length:
            dropped["too_long"] += 1
            continue
        mask = enc.loss_mask(chosen, mask_eot=truncated)
        if not any(mask):
            dropped["no_tokens"] += 1
            continue
        items.append(WeightedItem(TokenizedSequence(enc.input_ids, mask, traj.id), ex.weight, sum(mask)))
    return items, dropped


def weighted_step_loss(normalization: str, micro_batch_tokens: int, pad_id: int):
    """The function computing one step's loss and gradients (see the module docstring for the formula); the
    passes are :func:`turnrl.train.passes.accumulate`'s, Z is the whole step's."""
    import torch

    def step_loss(step: list[WeightedItem], accelerator, model) -> dict[str, float]:
        z = len(step) if normalization == "sum" else max(1, sum(it.tokens for it in step))
        active = [it for it in step if it.weight != 0]

        def plan(rank):
            return micro_batches(process_share(active, accelerator, rank), lambda it: len(it.seq.input_ids),
                                 micro_batch_tokens)

        def micro_loss(micro: list[WeightedItem]):
            batch = pad_batch([it.seq for it in micro], pad_id, accelerator.device)
            with accelerator.autocast():
                logprobs, rows = model(**batch)
            weights = torch.tensor([it.weight for it in micro], device=logprobs.device)[rows]
            loss = -(weights * logprobs).sum() / z
            return loss, torch.stack([loss.detach(), -logprobs.detach().sum(), torch.tensor(float(logprobs.numel()))])

        loss_total, nll_total, tokens = accumulate(accelerator, model, plan, micro_loss, width=3)  # loss, NLL, tokens
        return {"loss": loss_total, "nll_per_token": nll_total / tokens if tokens else float("nan"),
                "trajectories": len(step), "active": sum(it.weight != 0 for it in step), "tokens": int(tokens)}

    return step_loss


def train_weighted(cfg: TrainConfig) -> Path:
    if (done := checkpoint_or_start(cfg)) is not None:
        return done
    trajectories, model_name = read_log(cfg)
    examples, diagnostics = build_weighted_examples(trajectories, cfg.algo)
    set_seed(cfg.optim.seed)
    lm, tokenizer, _ = load_for_training(model_name, cfg.optim)
    items, dropped = tokenize_examples(examples, tokenizer, stop_token_ids(tokenizer, lm), cfg.optim)
    diagnostics["dropped"] = dropped
    if not any(it.weight != 0 for it in items):
        raise NothingToLearn(f"{cfg.algo.name}: every trajectory has weight 0 (e.g. all rewards equal); "
                             "nothing to learn")
    steps = epoch_steps(items, cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.seed)
    loop = TrainLoop(lm, tokenizer, cfg.optim, cfg.out_dir, model_name, steps, wrap=MaskedLogprobLM)
    write_training_files(loop, {DIAGNOSTICS: diagnostics})
    loop.accelerator.print(f"train {cfg.algo.name}: {len(items)} trajectories ({diagnostics['nonzero']} with non-zero "
                           f"weight, ESS {diagnostics['ess']:.1f}), {len(steps)} steps, dropped {dropped}")
    history = loop.run(weighted_step_loss(cfg.optim.normalization, cfg.optim.micro_batch_tokens,
                                          tokenizer.pad_token_id), -(-len(items) // cfg.optim.batch_size))
    return finish_training(loop, cfg, model_name, history,
                           {k: v for k, v in diagnostics.items() if k != "weights"})
