"""Training data in steps: tokenised sequences with their loss masks, padded batches, micro-batches by a token
budget, the shuffled optimizer steps of a run, and a process's share of a step."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence


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
