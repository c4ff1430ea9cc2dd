"""One optimizer step's forward and backward passes (:func:`accumulate`, the skeleton every trainer family
shares), and what keeps processes in step under data parallelism, FSDP and DeepSpeed: how many passes each runs,
idle passes for a process whose share has run out, gradient synchronisation on the last pass only."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable


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


def accumulate(accelerator, model, plan: Callable[[int | None], list[Any]],
               micro_loss: Callable[[Any], tuple[Any, Any]], width: int, forwards: int = 0) -> list[float]:
    """The forward and backward passes of one optimizer step, shared by every trainer family; returns the logged
    figures summed over the step's micro-batches and processes.

    ``plan(rank)`` cuts process ``rank``'s share of the step into micro-batches (``plan(None)``: this process's).
    ``micro_loss(micro)`` runs the policy on one micro-batch and returns the loss to backpropagate, already divided
    by the whole step's normaliser, and a vector of ``width`` figures to sum. The process runs
    :func:`passes_in_step` passes, idle ones (each after ``forwards`` no-grad passes, what a real micro-batch runs
    before its training pass, e.g. a reference pass through the policy) past its own micro-batches, with gradients
    synchronised on the last pass only. The loss is multiplied by the number of processes because their gradients
    are averaged, so the summed gradient is the one-process gradient.
    """
    import torch

    micros = plan(None)
    passes = passes_in_step(accelerator, lambda rank: len(plan(rank)))
    totals = torch.zeros(width, device=accelerator.device)
    for k in range(passes):
        last = k == passes - 1
        if k >= len(micros):
            idle_pass(accelerator, model, last=last, forwards=forwards)
            continue
        with gradient_sync(accelerator, model, last=last):
            loss, figures = micro_loss(micros[k])
            accelerator.backward(loss * accelerator.num_processes)
        totals += figures.float()
    return accelerator.reduce(totals, reduction="sum").tolist()


def engine_asked() -> str | None:
    """The sharding engine an ``accelerate launch`` config asked for (its environment variables), if any."""
    for var, engine in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        if os.environ.get(var, "false").lower() == "true":
            return engine
    return None
