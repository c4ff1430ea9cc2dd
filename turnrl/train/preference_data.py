"""Preference data as token sequences: each pair's two sides, each KTO example with its mismatched sequence (its
prompt, the previous example's completion: z0's estimate), and the micro-batches a step runs them in.

Tokenisation and masks come from the chat template (docs/design.md section 3); the losses that read them are in
:mod:`turnrl.train.preference`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from turnrl.algorithms.preference import Completion, KTOExample, PreferencePair, prompt_length
from turnrl.chat import encode_conversation
from turnrl.errors import ConfigError
from turnrl.train.config import OptimConfig
from turnrl.train.data import micro_batches, TokenizedSequence


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
