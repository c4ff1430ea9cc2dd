"""``turnrl train --algo {dpo,step-dpo,m-dpo,m-kto}``: preference learning on conversations.

A sequence's log-probability is the SUM of its trained tokens' log-probabilities (003 eq. 12; TRL's DPOTrainer):
the tokens of the assistant messages that carry the loss, each with its end-of-turn token; observation tokens are
never counted (they cancel between pi and pi_ref, 003 Sec. 2.2). With r(y) = log pi(y | x) - log pi_ref(y | x):

    DPO / StepDPO / M-DPO (003 eq. 12):
        L = mean over the step's pairs of  -log sigmoid(beta * [r(y_w) - r(y_l)])

    M-KTO (003 eq. 13, in the form of TRL's KTOTrainer, which 003 used):
        z0 = max(0, mean over the step of [log pi - log pi_ref](y_{i-1} | x_i))    (no gradient)
        L  = mean over the step of  lambda_D * (1 - sigmoid(beta * (r(y) - z0)))   for desirable y
                                    lambda_U * (1 - sigmoid(beta * (z0 - r(y))))   for undesirable y

z0 is the KL reference point, estimated on mismatched (prompt, completion) pairs: each example's prompt with the
previous example's completion in the step (TRL's cycling by one). beta is 003's eta (0.1); label smoothing is off.

The reference pi_ref is the policy training starts from (or ``algo.preference.ref_policy``): log-probabilities
computed once before training by default, or a reference pass in every step (:mod:`turnrl.train.reference`). The
pairs and KTO examples become token sequences and micro-batches in :mod:`turnrl.train.preference_data`.
"""

from __future__ import annotations

import gc
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from turnrl.algorithms.preference import build_preference_data
from turnrl.algorithms.registry import get_algorithm
from turnrl.errors import ConfigError, NothingToLearn
from turnrl.layout import BRANCHES, DIAGNOSTICS
from turnrl.models import stop_token_ids
from turnrl.records import read_trajectories
from turnrl.train.config import checkpoint_or_start, read_log, TrainConfig
from turnrl.train.data import epoch_steps, pad_batch, process_share
from turnrl.train.loop import finish_training, load_for_training, set_seed, TrainLoop, write_training_files
from turnrl.train.passes import accumulate, collective_passes, idle_forward
from turnrl.train.preference_data import (KTOStepItem, PairItem, kto_batches, kto_steps, pair_batches, pair_sequences,
                                          tokenize_kto, tokenize_pairs)
from turnrl.train.reference import Reference, reference_model, reference_values
from turnrl.train.logprobs import MaskedLogprobLM, sequence_logprobs


# ---------------------------------------------------------------------------------------------------- the losses

def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair DPO loss -log sigmoid(beta * [(log pi_w - log ref_w) - (log pi_l - log ref_l)]) (003 eq. 12)."""
    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))


def kto_reference_point(log_ratio_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """KTO's z0: the step's estimate of KL(pi || pi_ref), the mean log-ratio of its mismatched pairs, clamped at 0,
    without gradient."""
    return (log_ratio_sum / count).clamp(min=0).detach()


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor,
             beta: float, lambda_d: float, lambda_u: float) -> torch.Tensor:
    """Per-example KTO loss (003 eq. 13 as in TRL): lambda_D (1 - sigmoid(beta (r - z0))) for desirable examples,
    lambda_U (1 - sigmoid(beta (z0 - r))) for undesirable ones."""
    r = policy_logps - ref_logps
    return torch.where(desirable, lambda_d * (1 - torch.sigmoid(beta * (r - z0))),
                       lambda_u * (1 - torch.sigmoid(beta * (z0 - r))))


# ----------------------------------------------------------------------------------------------- step losses
#
# Under data parallelism each process takes its share of the step (``process_share``); every loss is divided by
# the whole step's size and multiplied by the number of processes (their gradients are averaged), so the summed
# gradient is the one-process gradient, and the logged figures are summed over processes before dividing.

def dpo_step_loss(beta: float, micro_batch_tokens: int, pad_id: int, reference: Reference):
    """One optimizer step of DPO over a list of :class:`PairItem` (see the module docstring)."""

    def step_loss(step: list[PairItem], accelerator, model) -> dict[str, float]:
        def plan(rank):
            return pair_batches(process_share(step, accelerator, rank), micro_batch_tokens)

        def micro_loss(micro: list[PairItem]):
            seqs = pair_sequences(micro)
            batch = pad_batch(seqs, pad_id, accelerator.device)
            ref = reference(seqs, batch, accelerator, model)
            with accelerator.autocast():
                logprobs, rows = model(**batch)
            logps = sequence_logprobs(logprobs.float(), rows, len(seqs))
            n = len(micro)
            losses = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)
            chosen, rejected = beta * (logps[:n] - ref[:n]).detach(), beta * (logps[n:] - ref[n:]).detach()
            return losses.sum() / len(step), torch.stack([
                losses.detach().sum(), chosen.sum(), rejected.sum(), (chosen > rejected).float().sum(),
                logps[:n].detach().sum(), logps[n:].detach().sum(), torch.tensor(float(logprobs.numel()))])

        # loss, beta r(chosen), beta r(rejected), chosen ahead, log pi(chosen), log pi(rejected), tokens
        loss, chosen, rejected, ahead, logp_c, logp_r, tokens = accumulate(
            accelerator, model, plan, micro_loss, width=7, forwards=int(reference.through_policy))
        n = len(step)
        return {"loss": loss / n, "rewards/chosen": chosen / n, "rewards/rejected": rejected / n,
                "rewards/margin": (chosen - rejected) / n, "rewards/accuracy": ahead / n,
                "logps/chosen": logp_c / n, "logps/rejected": logp_r / n, "pairs": n, "tokens": int(tokens)}

    return step_loss


def kto_step_loss(beta: float, lambda_d: float, lambda_u: float, micro_batch_tokens: int, pad_id: int,
                  reference: Reference):
    """One optimizer step of KTO over a list of :class:`KTOStepItem` (see the module docstring): first the
    reference point z0 from the mismatched pairs (no gradient), then :func:`turnrl.train.passes.accumulate`'s
    passes over the examples."""

    def step_loss(step: list[KTOStepItem], accelerator, model) -> dict[str, float]:
        mismatched, examples = kto_batches(process_share(step, accelerator), micro_batch_tokens)
        shares = [kto_batches(process_share(step, accelerator, rank), micro_batch_tokens)
                  for rank in range(accelerator.num_processes)] if collective_passes(accelerator) else []
        kl = torch.zeros(2, device=accelerator.device)  # sum of the mismatched log-ratios, their number
        # Where passes are collective, a process with fewer mismatched batches than another joins the rest idle.
        for _ in range(max([len(m) for m, _ in shares], default=0) - len(mismatched)):
            for _ in range(1 + int(reference.through_policy)):
                idle_forward(accelerator, model)
        for seqs in mismatched:
            batch = pad_batch(seqs, pad_id, accelerator.device)
            ref = reference(seqs, batch, accelerator, model)
            with torch.no_grad(), accelerator.autocast():
                logprobs, rows = model(**batch)
            kl += torch.stack([(sequence_logprobs(logprobs.float(), rows, len(seqs)) - ref).sum(),
                               torch.tensor(float(len(seqs)))])
        kl = accelerator.reduce(kl, reduction="sum")
        z0 = kto_reference_point(kl[0], kl[1])

        def plan(rank):
            return examples if rank is None else kto_batches(process_share(step, accelerator, rank),
                                                             micro_batch_tokens)[1]

        def micro_loss(micro: list[KTOStepItem]):
            seqs = [s.item.seq for s in micro]
            batch = pad_batch(seqs, pad_id, accelerator.device)
            ref = reference(seqs, batch, accelerator, model)
            with accelerator.autocast():
                logprobs, rows = model(**batch)
            logps = sequence_logprobs(logprobs.float(), rows, len(seqs))
            desirable = torch.tensor([s.item.desirable for s in micro], device=logps.device)
            losses = kto_loss(logps, ref, desirable, z0, beta, lambda_d, lambda_u)
            rewards = beta * (logps - ref).detach()
            return losses.sum() / len(step), torch.stack([
                losses.detach().sum(), rewards[desirable].sum(), desirable.sum(), rewards[~desirable].sum(),
                (~desirable).sum(), torch.tensor(float(logprobs.numel()))]).float()

        # loss, beta r summed over desirable examples, their number, the same for undesirable ones, tokens
        loss, r_d, n_d, r_u, n_u, tokens = accumulate(accelerator, model, plan, micro_loss, width=6,
                                                      forwards=int(reference.through_policy))
        return {"loss": loss / len(step), "kl": float(z0), "rewards/desirable": r_d / n_d if n_d else float("nan"),
                "rewards/undesirable": r_u / n_u if n_u else float("nan"), "desirable": int(n_d),
                "undesirable": int(n_u), "tokens": int(tokens)}

    return step_loss


# --------------------------------------------------------------------------------------------------- training

def _load_branches(cfg: TrainConfig) -> list:
    path = Path(cfg.run_dir) / cfg.algo.step_dpo.branches
    if not path.exists():
        raise ConfigError(
            f"{path}: missing. step-dpo trains on branch rollouts; with the logging run's settings, run "
            f"`turnrl simulate --continue_from {cfg.input}` (writes {BRANCHES}) and `turnrl score --input "
            f"{BRANCHES} --output {cfg.algo.step_dpo.branches}` first (`turnrl run` and `turnrl iterate` do this themselves)")
    return read_trajectories(path)


def train_preference(cfg: TrainConfig) -> Path:
    """Train one preference algorithm on the run's scored log."""
    algo, optim = cfg.algo, cfg.optim
    if (done := checkpoint_or_start(cfg)) is not None:
        return done
    algorithm = get_algorithm(algo.name, family="preference")
    params = algo.preference
    if params.beta <= 0:
        raise ConfigError(f"algo.preference.beta: {params.beta}; expected > 0")
    if algorithm.unpaired and optim.batch_size < 2:
        raise ConfigError(f"optim.batch_size: {algo.name} needs at least 2 examples per step (z0 is estimated on "
                          "mismatched pairs within the step)")
    trajectories, model_name = read_log(cfg)
    branches = _load_branches(cfg) if algorithm.needs_branches else None
    data, diagnostics = build_preference_data(trajectories, algo, branches)
    if not data:
        raise NothingToLearn(f"{algo.name}: no pairs could be built from {Path(cfg.run_dir) / cfg.input} "
                             f"({diagnostics}); every group is tied (or all correct / all incorrect)")
    set_seed(optim.seed)
    lm, tokenizer, resolved = load_for_training(model_name, optim)
    eot = stop_token_ids(tokenizer, lm)
    kto = algorithm.unpaired
    items, dropped = (tokenize_kto if kto else tokenize_pairs)(data, tokenizer, eot, optim, params.mask_observations)
    diagnostics["dropped"] = dropped
    if not items:
        raise ConfigError(f"{algo.name}: every pair was dropped ({dropped}); raise optim.max_length?")
    steps = epoch_steps(items, optim.batch_size, optim.epochs, optim.seed)
    if kto:
        steps = kto_steps(steps, tokenizer, eot, params.mask_observations)
    steps_per_epoch = -(-len(items) // optim.batch_size)
    ref_lm, ref_name = reference_model(params.ref_policy, lm, optim.lora and not resolved.adapter,
                                       params.precompute_reference)
    diagnostics.update({"reference": ref_name, "precompute_reference": params.precompute_reference})
    loop = TrainLoop(lm, tokenizer, optim, cfg.out_dir, model_name, steps, wrap=MaskedLogprobLM)
    write_training_files(loop, {"examples.jsonl" if kto else "pairs.jsonl": [asdict(d) for d in data],
                                DIAGNOSTICS: diagnostics})
    pad = tokenizer.pad_token_id
    if params.precompute_reference:
        reference = Reference(values=reference_values(loop, ref_lm, steps, cfg.out_dir, pad,
                                                       optim.micro_batch_tokens))
        del ref_lm
        gc.collect()
    else:
        reference = Reference(module=MaskedLogprobLM(ref_lm).to(loop.accelerator.device) if ref_lm is not None
                              else None)
    loop.accelerator.print(f"train {algo.name}: {len(items)} {'examples' if kto else 'pairs'} "
                           f"({diagnostics['skipped_ties']} tied groups skipped, dropped {dropped}), {len(steps)} "
                           f"steps, reference: {ref_name}{' (precomputed)' if params.precompute_reference else ''}"
                           + (f"; {diagnostics['pairing_chosen_because']}" if "pairing_chosen_because" in diagnostics
                              else ""))
    if kto:
        step_fn = kto_step_loss(params.beta, algo.m_kto.lambda_d, algo.m_kto.lambda_u, optim.micro_batch_tokens,
                                pad, reference)
    else:
        step_fn = dpo_step_loss(params.beta, optim.micro_batch_tokens, pad, reference)
    history = loop.run(step_fn, steps_per_epoch)
    return finish_training(loop, cfg, model_name, history, diagnostics)
