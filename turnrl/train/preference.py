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

The reference pi_ref is the policy training starts from (or ``algo.preference.ref_policy``). Its log-probabilities
are computed once before training by default (``algo.preference.precompute_reference``), each in the micro-batch its
step will run it in, and kept in ``reference_logps.json``, so a resumed run uses the values of the original start;
otherwise each step runs the reference too -- the base with the LoRA adapter disabled when training a fresh adapter, a frozen
copy otherwise. The reference always runs in eval mode (no dropout), which is what makes the two ways equal.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from turnrl.algorithms.preference import Completion, KTOExample, PreferencePair, build_preference_data, prompt_length
from turnrl.algorithms.registry import get_algorithm
from turnrl.chat import encode_conversation
from turnrl.errors import ConfigError, NothingToLearn
from turnrl.layout import BRANCHES
from turnrl.models import load_model, resolve, stop_token_ids
from turnrl.records import read_json, read_trajectories, write_json
from turnrl.train.config import checkpoint_or_start, OptimConfig, read_log, TrainConfig
from turnrl.train.data import epoch_steps, micro_batches, pad_batch, process_share, TokenizedSequence
from turnrl.train.loop import finish_training, load_for_training, set_seed, TrainLoop, write_training_files
from turnrl.train.passes import accumulate, collective_passes, idle_forward
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


# ------------------------------------------------------------------------------------------------ tokenisation

@dataclass
class PairItem:
    id: str
    chosen: TokenizedSequence
    rejected: TokenizedSequence

    @property
    def width(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass
class KTOItem:
    id: str
    seq: TokenizedSequence
    desirable: bool
    completion: Completion


@dataclass
class KTOStepItem:
    """A KTO example and its mismatched sequence (its prompt, the previous example's completion) for z0."""

    item: KTOItem
    mismatched: TokenizedSequence


def tokenize_completion(c: Completion, name: str, tokenizer, eot_ids: list[int],
                        mask_observations: bool = True) -> TokenizedSequence:
    """Token ids and the trained-token mask of a completion, from the chat template (docs/design.md section 3).

    With ``mask_observations`` off (003's single-turn baseline), everything from the first to the last trained
    assistant token counts, observations included; the prompt stays masked either way.
    """
    enc = encode_conversation(tokenizer, c.messages, eot_ids)
    mask = enc.loss_mask(c.train_turns, mask_eot=c.truncated)
    if not mask_observations and c.train_turns:
        first, last = enc.assistant_spans[c.train_turns[0]], enc.assistant_spans[c.train_turns[-1]]
        for p in range(first[0], last[1]):
            mask[p] = 1
        for i in c.train_turns:  # a capped turn never emitted its end-of-turn token
            if c.truncated[i] and enc.eot_included[i]:
                mask[enc.assistant_spans[i][1] - 1] = 0
    digest = hashlib.sha1(json.dumps([enc.input_ids, mask]).encode()).hexdigest()[:12]
    return TokenizedSequence(enc.input_ids, mask, f"{name}:{digest}")


def _usable(c: Completion, seq: TokenizedSequence, optim: OptimConfig, dropped: dict[str, int]) -> bool:
    if optim.truncated_turns == "drop" and any(c.truncated[i] for i in c.train_turns):
        dropped["truncated"] += 1
        return False
    if len(seq.input_ids) > optim.max_length:
        dropped["too_long"] += 1
        return False
    if not any(seq.label_mask):
        dropped["no_tokens"] += 1
        return False
    return True


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, eot_ids: list[int], optim: OptimConfig,
                   mask_observations: bool = True) -> tuple[list[PairItem], dict[str, int]]:
    """Tokenised pairs; a pair with an unusable side is left out and counted."""
    items, dropped = [], {"too_long": 0, "truncated": 0, "no_tokens": 0}
    for p in pairs:
        chosen = tokenize_completion(p.chosen, f"{p.id}:chosen", tokenizer, eot_ids, mask_observations)
        rejected = tokenize_completion(p.rejected, f"{p.id}:rejected", tokenizer, eot_ids, mask_observations)
        if _usable(p.chosen, chosen, optim, dropped) and _usable(p.rejected, rejected, optim, dropped):
            items.append(PairItem(p.id, chosen, rejected))
    return items, dropped


def tokenize_kto(examples: list[KTOExample], tokenizer, eot_ids: list[int], optim: OptimConfig,
                 mask_observations: bool = True) -> tuple[list[KTOItem], dict[str, int]]:
    items, dropped = [], {"too_long": 0, "truncated": 0, "no_tokens": 0}
    for e in examples:
        seq = tokenize_completion(e.completion, e.id, tokenizer, eot_ids, mask_observations)
        if _usable(e.completion, seq, optim, dropped):
            items.append(KTOItem(e.id, seq, e.desirable, e.completion))
    return items, dropped


def mismatched(prompt_of: Completion, completion_of: Completion) -> Completion:
    """One conversation's prompt followed by another's completion (its assistant and observation turns)."""
    a, b = prompt_length(prompt_of.messages), prompt_length(completion_of.messages)
    return Completion(messages=prompt_of.messages[:a] + completion_of.messages[b:],
                      train_turns=completion_of.train_turns, truncated=completion_of.truncated,
                      source=f"{prompt_of.source}|{completion_of.source}", reward=float("nan"))


def kto_steps(steps: list[list[KTOItem]], tokenizer, eot_ids: list[int],
              mask_observations: bool = True) -> list[list[KTOStepItem]]:
    """Attach to every example its mismatched sequence: its prompt with the completion of the example before it
    in the step (TRL's cycling by one); a step of one borrows the neighbouring step's first example."""
    if sum(len(s) for s in steps) < 2:
        raise ConfigError("m-kto needs at least two examples (z0 is estimated on mismatched pairs)")
    out = []
    for s, step in enumerate(steps):
        partners = step[-1:] + step[:-1] if len(step) > 1 else [steps[s - 1 if s > 0 else s + 1][0]]
        out.append([KTOStepItem(it, tokenize_completion(mismatched(it.completion, other.completion),
                                                        f"kl:{it.id}|{other.id}", tokenizer, eot_ids,
                                                        mask_observations))
                    for it, other in zip(step, partners)])
    return out


# ---------------------------------------------------------------------------------------------- micro-batches

def pair_batches(step: list[PairItem], max_tokens: int) -> list[list[PairItem]]:
    """A DPO step's micro-batches: whole pairs, each run as its chosen rows followed by its rejected rows."""
    return micro_batches(step, lambda p: 2 * p.width, max_tokens)


def pair_sequences(micro: list[PairItem]) -> list[TokenizedSequence]:
    return [p.chosen for p in micro] + [p.rejected for p in micro]


def kto_batches(step: list[KTOStepItem], max_tokens: int) -> tuple[list[list[TokenizedSequence]],
                                                                   list[list[KTOStepItem]]]:
    """A KTO step's micro-batches: first the mismatched sequences (for z0), then the examples."""
    return (micro_batches([s.mismatched for s in step], lambda s: len(s.input_ids), max_tokens),
            micro_batches(step, lambda s: len(s.item.seq.input_ids), max_tokens))


def step_sequences(step: list[Any], max_tokens: int) -> list[list[TokenizedSequence]]:
    """Every forward pass of one step, as the rows it runs together (what the reference must see too)."""
    if step and isinstance(step[0], KTOStepItem):
        mismatched, examples = kto_batches(step, max_tokens)
        return mismatched + [[s.item.seq for s in micro] for micro in examples]
    return [pair_sequences(micro) for micro in pair_batches(step, max_tokens)]


# -------------------------------------------------------------------------------------------- reference policy

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


def _reference_values(loop: TrainLoop, ref_lm, steps: list[list[Any]], out_dir: Path, pad_id: int,
                      micro_batch_tokens: int) -> dict[str, float]:
    """The precomputed reference log-probabilities: computed now, or, when resuming, those of the original start."""
    cache = out_dir / "reference_logps.json"
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
                                "diagnostics.json": diagnostics})
    pad = tokenizer.pad_token_id
    if params.precompute_reference:
        reference = Reference(values=_reference_values(loop, ref_lm, steps, cfg.out_dir, pad,
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
