"""The ``hf`` backend: batched decoding with transformers models, per-conversation sampling, and KV-cache reuse.

Three things make multi-turn rollouts fast here, without changing what is sampled:

- **Conversations keep their KV cache between turns.** A request may name its conversation (``session``). When
  the next turn's prompt extends the previous prompt plus the reply the model gave, only the new tokens (the
  teacher's message and the template's glue) are run through the model; the earlier turns are not re-encoded.
  The model therefore conditions on the exact tokens it sampled, as a chat server with prefix caching would.
- **Identical prompts are encoded once**, and so is the start that distinct prompts share. The m trajectories of
  a task share their first prompt; it is run through the model once and its cache copied to the m rows. The
  prompts of different tasks share their system prompt and the template's opening: those tokens are run once
  for the whole batch, their cache copied to every row.
- **The cache grows in place** (preallocated, doubled when full) instead of being concatenated at every step.

Every row samples with its own ``torch.Generator`` seeded per request (temperature, top-k, top-p; greedy where the
temperature is 0), so a conversation's sample does not depend on which other conversations share its batch.
Rows of a batch are laid out in aligned columns: a row whose new segment is shorter than the others' leaves masked
holes, and positions are counted per row over unmasked tokens only.

``generate(..., on_step=f)`` calls ``f`` after every decoding step with the tokens just sampled, as
``[(request index, token id), ...]`` (end-of-turn tokens left out): what ``turnrl serve`` streams from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from turnrl.chat import render
from turnrl.generation.base import BackendConfig, GenRequest, GenResult, Sampling
from turnrl.models import default_device, load_model, load_tokenizer, resolve, stop_token_ids


class GrowingLayer(DynamicLayer):
    """A full-attention KV cache layer backed by a preallocated buffer that doubles when full."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self._k = self._v = None

    def _reserve(self, like_k: torch.Tensor, like_v: torch.Tensor, need: int) -> None:
        capacity = 0 if self._k is None else self._k.shape[-2]
        if need <= capacity:
            return
        new_capacity = max(need, 2 * capacity, 256)
        # Uninitialised: only the first `length` columns are ever read, and every one of them is written first.
        k = like_k.new_empty(*like_k.shape[:-2], new_capacity, like_k.shape[-1])
        v = like_v.new_empty(*like_v.shape[:-2], new_capacity, like_v.shape[-1])
        if self.length:
            k[..., : self.length, :] = self._k[..., : self.length, :]
            v[..., : self.length, :] = self._v[..., : self.length, :]
        self._k, self._v = k, v

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._reserve(key_states, value_states, self.length + n)
        self._k[..., self.length: self.length + n, :] = key_states
        self._v[..., self.length: self.length + n, :] = value_states
        self.length += n
        self.keys, self.values = self._k[..., : self.length, :], self._v[..., : self.length, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self._k is not None:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., : self.length, :], self._v[..., : self.length, :]


def new_cache(config) -> Cache:
    """A growing cache where every layer attends to the full context; the stock dynamic cache otherwise
    (sliding-window and hybrid models need their own layer types)."""
    text = config.get_text_config(decoder=True)
    if getattr(text, "sliding_window", None) or any(t != "full_attention" for t in getattr(text, "layer_types", None)
                                                     or []):
        return DynamicCache(config=config)
    return Cache(layer_class_to_replicate=GrowingLayer)


MIN_SHARED_PREFIX = 16
"""Tokens that distinct prompts must share at their start to be encoded once for all (a system prompt)."""


def shared_prefix(segments: list[list[int]]) -> int:
    """How many leading tokens every segment shares and can be encoded once for all: 0 below
    ``MIN_SHARED_PREFIX``, and always one token short of the shortest segment (its logits are needed)."""
    n = min(len(s) for s in segments) - 1
    first = segments[0]
    for s in segments[1:]:
        n = next((k for k in range(n) if s[k] != first[k]), n)
    return n if n >= MIN_SHARED_PREFIX else 0


PREFIX_WIDTHS = (64, 1024)  # how many top-ranked tokens are searched for a row's kept set before sorting it all


def sample_rows(scores: torch.Tensor, samplings: list[Sampling],
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """The next token of each row: argmax where temperature is 0, else a temperature/top-k/top-p sample drawn
    with the row's own generator.

    The kept set is the usual one (the top_k best tokens, cut after the token whose cumulative probability first
    reaches top_p), with probabilities normalised over the whole vocabulary. A full sort of 49k logits per row
    and step made sampling most of a decoding step, so each row's set is first looked for among its 64 best
    tokens (``torch.topk``), then its 1,024 best, and only then in a sort of the whole vocabulary: the set lies
    within a prefix once the prefix holds more than top_p of the mass (or top_k is within it). Each row draws one
    uniform number from its generator and inverts its kept set's CDF, so a row's sample depends only on its own
    logits and seed, not on its batch."""
    scores = scores.float()
    choice = scores.argmax(dim=-1)
    rows = [r for r, g in enumerate(generators) if g is not None]
    if not rows:
        return choice
    device = scores.device
    index = torch.tensor(rows, device=device)
    logits = scores[index] / torch.tensor([samplings[r].temperature for r in rows], device=device)[:, None]
    vocab = logits.shape[-1]
    top_k = torch.tensor([samplings[r].top_k or vocab for r in rows], device=device)
    top_p = torch.tensor([samplings[r].top_p for r in rows], device=device)
    uniform = torch.stack([torch.rand((), generator=generators[r], device=device) for r in rows])
    log_z = torch.logsumexp(logits, dim=-1, keepdim=True)
    pending = torch.arange(len(rows), device=device)
    for width in (*(w for w in PREFIX_WIDTHS if w < vocab), vocab):
        part = logits[pending]
        values, ids = torch.topk(part, width, dim=-1) if width < vocab else torch.sort(part, descending=True, dim=-1)
        probs = (values - log_z[pending]).exp()
        fits = (top_k[pending] <= width) | (probs.sum(dim=-1) > top_p[pending]) if width < vocab else \
            torch.ones(len(pending), dtype=torch.bool, device=device)
        done = pending[fits]
        choice[index[done]] = draw_ranked(probs[fits], ids[fits], top_k[done], top_p[done], uniform[done])
        pending = pending[~fits]
        if not len(pending):
            break
    return choice


def draw_ranked(probs: torch.Tensor, ids: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                uniform: torch.Tensor) -> torch.Tensor:
    """Per row, the token at ``uniform`` of the CDF of its kept set. ``probs`` [rows, width] in descending order
    (a prefix of the ranking, holding the whole kept set), ``ids`` their token ids."""
    rank = torch.arange(probs.shape[-1], device=probs.device)[None, :]
    mass_before = probs.cumsum(dim=-1) - probs
    kept = (rank < top_k[:, None]) & (mass_before <= top_p[:, None])  # the token crossing top_p is kept
    cdf = (probs * kept).cumsum(dim=-1)
    drawn = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None]).clamp_(max=probs.shape[-1] - 1)
    return ids.gather(1, drawn)[:, 0]


def hit_stop_string(tokenizer, tokens: list[int], stops: list[str]) -> bool:
    """Whether the reply's last tokens contain one of the stop strings."""
    tail = tokenizer.decode(tokens[-16:], skip_special_tokens=True)
    return any(s in tail for s in stops)


def finish_reason(tokenizer, tokens: list[int], sampling: Sampling, stop_ids: set[int]) -> str | None:
    """Why the reply whose last sampled token is ``tokens[-1]`` ends there (``stop``, ``stop_string``, ``length``),
    or None where it goes on."""
    if tokens[-1] in stop_ids:
        return "stop"
    if sampling.stop and hit_stop_string(tokenizer, tokens, sampling.stop):
        return "stop_string"
    if len(tokens) >= sampling.max_new_tokens:
        return "length"
    return None


def reply_result(tokenizer, tokens: list[int], finish: str, sampling: Sampling) -> GenResult:
    """The reply's text (its end-of-turn token left out, cut right after a stop string) and token count."""
    body = tokens[:-1] if finish == "stop" else tokens
    text = tokenizer.decode(body, skip_special_tokens=True)
    if finish == "stop_string":
        cut = min(text.find(s) + len(s) for s in sampling.stop if s in text)
        text = text[:cut]
    return GenResult(text=text, tokens=len(tokens), finish=finish)


@dataclass
class _Batch:
    """Rows decoded together, with their shared KV cache."""

    cache: Cache
    mask: torch.Tensor  # [rows, columns]: 1 where a cached column is a real token of that row
    n_valid: torch.Tensor  # [rows]: real tokens per row (the next token's position)
    sessions: list[str | None]


@dataclass
class _Session:
    """What the cache of a conversation holds, to recognise the next prompt as an extension of it."""

    batch: _Batch
    text: str  # prompt text plus the reply's text, as the template will render them next turn
    pending: int | None  # the last sampled token, not yet in the cache
    stopped: bool  # the reply ended with an end-of-turn token
    row: int


def cache_keyword(model) -> str:
    """The forward argument taking the KV cache: transformers renamed ``past_key_values`` to ``cache`` (the old
    name still works there, with a deprecation warning; older releases know only the old one)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


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
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self._cache_kw = cache_keyword(self.model)
        self.device = next(self.model.parameters()).device
        self.pad_id = self.tokenizer.pad_token_id
        self._sessions: dict[str, _Session] = {}

    def release(self, sessions: list[str]) -> None:
        """Forget finished conversations so their cache rows can be freed."""
        for s in sessions:
            self._sessions.pop(s, None)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _extension(self, request: GenRequest, prompt: str) -> list[int] | None:
        """The tokens to feed to continue the request's conversation from its cache, or None to start afresh."""
        session = self._sessions.get(request.session or "")
        if session is None or not prompt.startswith(session.text):
            return None
        rest = prompt[len(session.text):]
        lead = [] if session.pending is None else [session.pending]
        if session.stopped:
            eot_text = self.tokenizer.decode([session.pending])
            if not rest.startswith(eot_text):
                return None
            rest = rest[len(eot_text):]
        return lead + self._ids(rest)

    def generate(self, requests: list[GenRequest], desc: str | None = None,
                 on_step: Callable[[list[tuple[int, int]]], None] | None = None) -> list[GenResult]:
        """One result per request, in order. ``on_step``: called (in this thread) after each decoding step with
        the tokens of the replies' text sampled in it, ``[(index into requests, token id), ...]``."""
        was_training = self.model.training
        self.model.eval()
        prompts = [render(self.tokenizer, r.messages, add_generation_prompt=True) for r in requests]
        continuing: dict[int, list[tuple[int, list[int]]]] = {}  # id(batch) -> [(request, extension)]
        batches: dict[int, _Batch] = {}
        fresh: list[int] = []
        for i, (request, prompt) in enumerate(zip(requests, prompts)):
            ext = self._extension(request, prompt)
            if ext is None:
                fresh.append(i)
            else:
                batch = self._sessions[request.session].batch  # type: ignore[index]
                batches[id(batch)] = batch
                continuing.setdefault(id(batch), []).append((i, ext))
        results: list[GenResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc or "generate", unit="conv", leave=False, disable=desc is None)
        with torch.no_grad():
            for key, items in continuing.items():
                self._continue(batches[key], items, requests, prompts, results, on_step)
                bar.update(len(items))
            for group in self._fresh_groups(fresh, requests, prompts):
                self._start(group, requests, prompts, results, on_step)
                bar.update(len(group))
        bar.close()
        if was_training:
            self.model.train()
        return results  # type: ignore[return-value]

    def _fresh_groups(self, fresh: list[int], requests: list[GenRequest], prompts: list[str]) -> list[list[int]]:
        """Batches of new conversations: identical prompts kept together (encoded once), longest first."""
        by_prompt: dict[str, list[int]] = {}
        for i in fresh:
            by_prompt.setdefault(prompts[i], []).append(i)
        ordered = sorted(by_prompt.values(), key=lambda g: -len(prompts[g[0]]))
        groups: list[list[int]] = []
        for same in ordered:
            if groups and len(groups[-1]) + len(same) <= self.cfg.batch_size:
                groups[-1].extend(same)
            else:
                groups.extend(same[i: i + self.cfg.batch_size] for i in range(0, len(same), self.cfg.batch_size))
        return groups

    def _start(self, group: list[int], requests, prompts, results, on_step=None) -> None:
        """Encode the distinct prompts of a new batch once (their shared token prefix, such as the system prompt,
        once for all of them), copy their cache to every row, then decode."""
        unique = list(dict.fromkeys(prompts[i] for i in group))
        segments = [self._ids(p) for p in unique]
        shared = shared_prefix(segments) if len(segments) > 1 else 0
        first_rows = 1 if shared else len(unique)
        batch = _Batch(cache=new_cache(self.model.config),
                       mask=torch.zeros(first_rows, 0, dtype=torch.long, device=self.device),
                       n_valid=torch.zeros(first_rows, dtype=torch.long, device=self.device),
                       sessions=[None] * first_rows)
        if shared:
            self._feed(batch, [segments[0][:shared]])
            self._select(batch, torch.zeros(len(unique), dtype=torch.long, device=self.device))
            segments = [s[shared:] for s in segments]
        logits = self._feed(batch, segments)
        rows = torch.tensor([unique.index(prompts[i]) for i in group], device=self.device)
        self._select(batch, rows)
        self._decode(batch, logits[rows], group, requests, prompts, results, on_step)

    def _continue(self, batch: _Batch, items: list[tuple[int, list[int]]], requests, prompts, results,
                  on_step=None) -> None:
        """Feed each conversation's new tokens on top of its cached rows, then decode."""
        rows = torch.tensor([self._sessions[requests[i].session].row for i, _ in items], device=self.device)
        if len(rows) != len(batch.sessions) or not torch.equal(rows, torch.arange(len(rows), device=self.device)):
            batch = self._copy_rows(batch, rows)  # some conversations ended or are elsewhere: keep only these rows
        logits = self._feed(batch, [ext for _, ext in items])
        self._decode(batch, logits, [i for i, _ in items], requests, prompts, results, on_step)

    def _copy_rows(self, batch: _Batch, rows: torch.Tensor) -> _Batch:
        clone = _Batch(cache=batch.cache, mask=batch.mask, n_valid=batch.n_valid, sessions=list(batch.sessions))
        if len(rows) != len(batch.sessions):
            import copy

            clone.cache = copy.copy(batch.cache)
            clone.cache.layers = [copy.copy(layer) for layer in batch.cache.layers]
        self._select(clone, rows)
        return clone

    @staticmethod
    def _select(batch: _Batch, rows: torch.Tensor) -> None:
        for layer in batch.cache.layers:
            layer.batch_select_indices(rows)
        batch.mask, batch.n_valid = batch.mask[rows], batch.n_valid[rows]
        batch.sessions = [batch.sessions[r] for r in rows.tolist()]

    def _feed(self, batch: _Batch, segments: list[list[int]]) -> torch.Tensor:
        """Run right-padded segments through the model on top of the cache; logits at each row's last token."""
        width = max(len(s) for s in segments)
        ids = torch.full((len(segments), width), self.pad_id, dtype=torch.long, device=self.device)
        seg_mask = torch.zeros((len(segments), width), dtype=torch.long, device=self.device)
        for r, s in enumerate(segments):
            ids[r, : len(s)] = torch.tensor(s, device=self.device)
            seg_mask[r, : len(s)] = 1
        positions = batch.n_valid[:, None] + torch.arange(width, device=self.device)[None, :]
        batch.mask = torch.cat([batch.mask, seg_mask], dim=1)
        lengths = seg_mask.sum(dim=1)
        # Only the columns where some row's segment ends need logits (a vocabulary-sized row per position).
        last_columns, column_of_row = torch.unique(lengths - 1, return_inverse=True)
        out = self.model(input_ids=ids, attention_mask=batch.mask, position_ids=positions,
                         use_cache=True, logits_to_keep=last_columns, **{self._cache_kw: batch.cache})
        batch.n_valid = batch.n_valid + lengths
        return out.logits[torch.arange(len(segments), device=self.device), column_of_row]

    def _decode(self, batch: _Batch, logits: torch.Tensor, request_ids: list[int], requests, prompts, results,
                on_step: Callable[[list[tuple[int, int]]], None] | None = None) -> None:
        samplings = [requests[i].sampling for i in request_ids]
        generators = [torch.Generator(device=self.device).manual_seed(s.seed) if s.temperature > 0 else None
                      for s in samplings]
        caps = [s.max_new_tokens for s in samplings]
        rows = len(request_ids)
        generated: list[list[int]] = [[] for _ in range(rows)]
        finish: list[str | None] = [None] * rows
        stop_ids = set(self.stop_ids)
        for step in range(max(caps)):
            tokens = sample_rows(logits, samplings, generators)
            chosen = tokens.tolist()
            feed = torch.zeros(rows, dtype=torch.long, device=self.device)
            sampled: list[tuple[int, int]] = []
            for r in range(rows):
                if finish[r] is not None:
                    continue
                token = chosen[r]
                generated[r].append(token)
                if token not in stop_ids:
                    sampled.append((request_ids[r], token))
                finish[r] = finish_reason(self.tokenizer, generated[r], samplings[r], stop_ids)
                if finish[r] is None:
                    feed[r] = 1  # rows that go on feed their token; a row's final token stays pending
            if on_step is not None and sampled:
                on_step(sampled)
            if not feed.any():
                break
            batch.mask = torch.cat([batch.mask, feed[:, None]], dim=1)
            out = self.model(input_ids=torch.where(feed.bool(), tokens, self.pad_id)[:, None],
                             attention_mask=batch.mask, position_ids=batch.n_valid[:, None],
                             use_cache=True, **{self._cache_kw: batch.cache})
            batch.n_valid = batch.n_valid + feed
            logits = out.logits[:, -1]
        batch.sessions = [requests[i].session for i in request_ids]
        for r, i in enumerate(request_ids):
            results[i] = reply_result(self.tokenizer, generated[r], finish[r] or "length", samplings[r])
            self._remember(requests[i], batch, r, prompts[i], generated[r], results[i])

    def _remember(self, request: GenRequest, batch: _Batch, row: int, prompt: str, tokens: list[int],
                  result: GenResult) -> None:
        if not request.session:
            return
        body = tokens[:-1] if result.finish == "stop" else tokens
        if self.tokenizer.decode(body, skip_special_tokens=True) != result.text or not tokens:
            self._sessions.pop(request.session, None)  # text was cut: the cache no longer matches it
            return
        self._sessions[request.session] = _Session(batch=batch, text=prompt + result.text, pending=tokens[-1],
                                                   stopped=result.finish == "stop", row=row)
