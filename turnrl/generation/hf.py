"""The ``hf`` backend: batched transformers ``generate`` with per-conversation temperature and seed.

Every request carries its own sampling settings. They are applied by :class:`RowSampler`, a logits processor that
draws each row's next token with that row's own ``torch.Generator`` and hands ``generate`` a one-hot score, so
``generate`` runs in greedy mode and a batch can mix greedy and sampled rows at several temperatures. Because each
row consumes its own random stream, a conversation's sample does not depend on which other conversations share
its batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from turnrl.chat import encode_prompt
from turnrl.generation import BackendConfig, GenRequest, GenResult, Sampling
from turnrl.models import default_device, load_model, load_tokenizer, resolve, stop_token_ids


class RowSampler(LogitsProcessor):
    """Temperature / top-k / top-p sampling with one random generator per row (greedy where temperature is 0)."""

    def __init__(self, samplings: list[Sampling], device: torch.device):
        self.samplings = samplings
        self.generators = [
            torch.Generator(device=device).manual_seed(s.seed) if s.temperature > 0 else None for s in samplings
        ]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        choice = scores.argmax(dim=-1)
        for row, (s, gen) in enumerate(zip(self.samplings, self.generators)):
            if gen is None:
                continue
            logits = scores[row] / s.temperature
            if s.top_k > 0:
                kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, -math.inf)
            if s.top_p < 1.0:
                sorted_logits, order = torch.sort(logits, descending=True)
                cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
                drop = cumulative - torch.softmax(sorted_logits, dim=-1) > s.top_p  # keep the token crossing top_p
                logits = logits.scatter(0, order[drop], -math.inf)
            choice[row] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)[0]
        onehot = torch.full_like(scores, -math.inf)
        onehot[torch.arange(scores.shape[0], device=scores.device), choice] = 0.0
        return onehot


class HFGenerator:
    name = "hf"

    def __init__(self, cfg: BackendConfig, model: Any = None, tokenizer: Any = None):
        self.cfg = cfg
        if model is None:
            resolved = resolve(cfg.model)
            self.tokenizer = load_tokenizer(resolved)
            self.model = load_model(resolved, dtype=cfg.dtype, device=default_device())
            self.revision = resolved.revision
        else:
            self.model, self.tokenizer, self.revision = model, tokenizer, "in-memory"
        self.model.eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.device = next(self.model.parameters()).device

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]:
        prompts = [encode_prompt(self.tokenizer, r.messages) for r in requests]
        # Longest first, grouped by the settings a batch must share, so padding and wasted steps stay small.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].sampling.max_new_tokens,
                                                            tuple(requests[i].sampling.stop), -len(prompts[i])))
        batches: list[list[int]] = []
        for i in order:
            key = (requests[i].sampling.max_new_tokens, tuple(requests[i].sampling.stop))
            last = batches[-1] if batches else None
            if last and len(last) < self.cfg.batch_size and key == (
                requests[last[0]].sampling.max_new_tokens, tuple(requests[last[0]].sampling.stop)
            ):
                last.append(i)
            else:
                batches.append([i])
        results: list[GenResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc or "generate", unit="conv", leave=False,
                   disable=desc is None)
        for batch in batches:
            for i, res in zip(batch, self._generate_batch([prompts[i] for i in batch],
                                                          [requests[i].sampling for i in batch])):
                results[i] = res
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], samplings: list[Sampling]) -> list[GenResult]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        stop_strings = samplings[0].stop
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=samplings[0].max_new_tokens,
            do_sample=False,
            num_beams=1,
            logits_processor=LogitsProcessorList([RowSampler(samplings, self.device)]),
            eos_token_id=self.stop_ids,
            pad_token_id=pad,
            stop_strings=stop_strings or None,
            tokenizer=self.tokenizer if stop_strings else None,
            temperature=None, top_p=None, top_k=None,
        )
        if was_training:
            self.model.train()
        return [self._finish(row[width:].tolist(), samplings[0]) for row in out]

    def _finish(self, tokens: list[int], sampling: Sampling) -> GenResult:
        """Cut a generated row at its end-of-turn token or first stop string and say which ended it."""
        stop_at = next((p for p, t in enumerate(tokens) if t in self.stop_ids), None)
        body = tokens[:stop_at] if stop_at is not None else tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        hits = [(text.find(s) + len(s), s) for s in sampling.stop if s in text]
        if hits:
            cut = min(hits)[0]
            text = text[:cut]
            n_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            return GenResult(text=text, tokens=min(n_tokens, len(body)), finish="stop_string")
        if stop_at is not None:
            return GenResult(text=text, tokens=stop_at + 1, finish="stop")
        return GenResult(text=text, tokens=len(tokens), finish="length")
