"""STaR-GATE's reward: the reference model's probability of the gold answer after the conversation.

For a multiple-choice conversation of n turns, take the conversation up to the teacher's final-answer request
(everything the assistant said before answering), let the reference model begin its reply with "The answer is",
and read the probability of each option letter as the next token. The reward is the gold letter's probability
renormalised over the options: 1/k for a conversation that tells the model nothing, more for one whose reasoning
points at the right answer. With n = 1 there is nothing before the answer and the value is the same for every
trajectory of a task.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from turnrl.chat import render
from turnrl.records import Task, Trajectory, shown_task


def answer_context(traj: Trajectory) -> list[dict[str, str]]:
    """The conversation before the final assistant turn."""
    return traj.messages[: traj.assistant_indices()[-1]]


def letter_token_ids(tokenizer, letters: list[str], lead: str) -> list[int]:
    """The first token of each option letter as it follows ``lead`` (e.g. " A" after "The answer is")."""
    base = tokenizer(lead, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in letters:
        full = tokenizer(lead + " " + letter, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError(f"cannot isolate the token of option {letter!r} after {lead!r}")
        ids.append(full[len(base)])
    return ids


@torch.no_grad()
def gold_likelihoods(model, tokenizer, trajectories: list[Trajectory], tasks: dict[str, Task],
                     lead: str = "The answer is", batch_size: int = 16, desc: str | None = None) -> list[float]:
    """p(gold | conversation so far) / sum over options, one value per trajectory (multiple choice only)."""
    model.eval()
    device = next(model.parameters()).device
    texts, letter_ids, golds = [], [], []
    for traj in trajectories:
        task = shown_task(tasks[traj.task_id], traj)  # the gold letter as the conversation showed it
        texts.append(render(tokenizer, answer_context(traj), add_generation_prompt=True) + lead)
        letter_ids.append(letter_token_ids(tokenizer, task.letters, lead))
        golds.append(task.letters.index(task.answer))
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    values = [0.0] * len(texts)
    pad = tokenizer.pad_token_id
    for start in tqdm(range(0, len(order), batch_size), desc=desc or "gold likelihood", leave=False,
                      disable=desc is None):
        rows = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in rows], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=1).logits[:, -1, :].float()
        for r, i in enumerate(rows):
            option_logits = logits[r, letter_ids[i]]
            values[i] = float(torch.softmax(option_logits, dim=-1)[golds[i]])
    return values
