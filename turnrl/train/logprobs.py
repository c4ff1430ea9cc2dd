"""Log-probabilities of the trained tokens only.

The output layer of a small model dominates its cost (SmolLM2: 49k x 576; Gemma: 262k x 640), and training only
needs the log-probabilities of the tokens under the loss mask. :class:`MaskedLogprobLM` runs the decoder on the
whole batch but applies the output layer only at the positions that predict a masked token, in chunks whose
logits are recomputed in the backward pass instead of stored. It wraps the causal LM as a module so that
accelerate's DDP/FSDP/DeepSpeed wrappers see one forward call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def _base_lm(lm: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place, so they still apply)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def _head_logprobs(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return -F.cross_entropy(logits, targets, reduction="none")


def no_split_modules(lm: nn.Module) -> list[str] | None:
    """The model's decoder-layer classes (transformers' ``_no_split_modules``), passed on by the trainers' wrappers:
    FSDP's transformer auto-wrap policy reads them from the module it wraps, and without them it shards the whole
    model as one unit (gathered whole for every pass) instead of layer by layer."""
    return getattr(_base_lm(lm), "_no_split_modules", None)


class MaskedLogprobLM(nn.Module):
    """forward(input_ids, attention_mask, label_mask) -> (log p of each masked token, its row index).

    ``label_mask[b, p] == 1`` marks token p of row b as a target, predicted from position p - 1.
    """

    def __init__(self, lm: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens
        self._no_split_modules = no_split_modules(lm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                label_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = _base_lm(self.lm)
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        predicts = label_mask[:, 1:].bool()
        rows = predicts.nonzero()[:, 0]
        h = hidden[:, :-1][predicts]
        targets = input_ids[:, 1:][predicts]
        head = base.get_output_embeddings()
        softcap = getattr(base.config, "final_logit_softcapping", None)
        pieces = []
        for start in range(0, h.shape[0], self.chunk_tokens):
            hs, ts = h[start: start + self.chunk_tokens], targets[start: start + self.chunk_tokens]
            if torch.is_grad_enabled() and hs.requires_grad:
                pieces.append(checkpoint(_head_logprobs, head, hs, ts, softcap, use_reentrant=False))
            else:
                pieces.append(_head_logprobs(head, hs, ts, softcap))
        logprobs = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
        return logprobs, rows


def sequence_logprobs(logprobs: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of the masked tokens' log-probabilities per row."""
    return torch.zeros(n_rows, dtype=logprobs.dtype, device=logprobs.device).index_add(0, rows, logprobs)
