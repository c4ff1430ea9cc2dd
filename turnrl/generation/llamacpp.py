"""The ``llamacpp`` backend: llama.cpp's CPU kernels through llama-cpp-python, for rollouts and evaluation on a CPU.

llama.cpp is the standard engine for language models on a CPU (kernels for AVX2, AVX-512 and AMX, quantised and
float weights). On the 2-core AVX2 machine this was measured on, at float32 and 64 conversations, it ran at
0.84-0.97x the hf backend's speed (docs/benchmarks.md, "hf vs llama.cpp on an AVX2-only CPU"), so hf stays the
default; this backend drives llama.cpp through llama-cpp-python's low-level API, many conversations at once in one
context:

- **Inputs as the hf backend sees them.** Prompts are rendered and tokenised with the checkpoint's own chat
  template and tokenizer (:func:`turnrl.chat.encode_prompt`) and handed over as token ids; the end-of-turn ids are
  the tokenizer's and generation config's (:func:`turnrl.models.stop_token_ids`).
- **The same sampler and seeds.** Each step's logits are read from llama.cpp and sampled by the hf backend's
  :func:`turnrl.generation.hf.sample_rows`, each conversation with its own ``torch.Generator`` seeded from its
  request: where the two engines' logits agree, so do their samples.
- **One sequence per conversation, kept between turns.** Each conversation occupies a llama.cpp sequence (its own
  KV stream). The next turn's prompt is compared token by token with what the sequence holds; only the tokens
  after the common prefix are run through the model. m conversations that open with the same prompt run it once
  and copy the cache.
- **Weights converted once.** A checkpoint (a folder, an alias, a hub id, a PEFT adapter merged into its base) is
  converted to a GGUF file by llama.cpp's own converter (``convert_hf_to_gguf.py``, shipped in the
  llama-cpp-python source distribution that ``python -m turnrl.assets`` unpacks) at the generation dtype (f32 where
  bf16 is not native), and cached under ``$TURNRL_CACHE/gguf`` by the weights' revision.

Install: ``pip install "turnrl[llamacpp]"`` (llama-cpp-python builds llama.cpp from source, about 8 minutes on two
cores), then ``python -m turnrl.assets`` for the converter; ``scripts/setup.sh`` does both.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from turnrl.chat import encode_prompt
from turnrl.errors import InputError
from turnrl.generation.base import BackendConfig, GenRequest, GenResult
from turnrl.generation.hf import finish_reason, reply_result, sample_rows, shared_prefix
from turnrl.log import get_logger
from turnrl.models import ResolvedModel, cache_dir, checkpoint_stop_ids, load_tokenizer, resolve, torch_dtype

logger = get_logger(__name__)

INSTALL_HINT = ("pip install 'turnrl[llamacpp]' (builds llama.cpp, about 8 minutes on two cores) and "
                "python -m turnrl.assets; scripts/setup.sh does both")

GGML_LOG_LEVEL_ERROR = 4  # ggml's enum ggml_log_level

OUTTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
"""The GGUF weight type for each generation dtype."""


def available() -> bool:
    """Whether llama-cpp-python is installed and its converter unpacked (what ``backend: auto`` checks)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None and converter_script() is not None


def converter_script() -> Path | None:
    """llama.cpp's ``convert_hf_to_gguf.py``, as unpacked from the llama-cpp-python source distribution."""
    from turnrl.assets import llama_cpp_source

    source = llama_cpp_source()
    return None if source is None else source / "convert_hf_to_gguf.py"


def _weights_folder(resolved: ResolvedModel, into: Path) -> Path:
    """A folder of full weights: the model's own, or (for a PEFT adapter) the adapter merged into its base."""
    if not resolved.adapter:
        if not Path(resolved.path).is_dir():
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(resolved.path))
        return Path(resolved.path)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, resolved.adapter).merge_and_unload()
    merged.save_pretrained(into)
    load_tokenizer(resolved).save_pretrained(into)
    return into


def gguf_file(resolved: ResolvedModel, dtype: str = "auto") -> Path:
    """The model as a GGUF file at the generation dtype, converted once and cached by the weights' revision.
    The conversion is atomic (a killed one leaves no file) and its time is logged."""
    outtype = OUTTYPES[torch_dtype(dtype)]
    target = cache_dir() / "gguf" / f"{Path(resolved.path).name}-{resolved.revision}-{outtype}.gguf"
    if target.exists():
        return target
    script = converter_script()
    if script is None:
        raise InputError(f"backend llamacpp: llama.cpp's converter is not unpacked; {INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        folder = _weights_folder(resolved, Path(tmp) / "merged")
        out = Path(tmp) / target.name
        proc = subprocess.run([sys.executable, str(script), str(folder), "--outtype", outtype, "--outfile", str(out)],
                              capture_output=True, text=True, cwd=script.parent)
        if proc.returncode != 0 or not out.exists():
            raise InputError(f"backend llamacpp: llama.cpp's converter could not convert {resolved.name} "
                             f"({folder}):\n{proc.stderr[-2000:]}")
        out.replace(target)
    logger.info("llamacpp: converted %s to %s (%s) in %.1f s", resolved.name, target, outtype,
                time.perf_counter() - start)
    return target


@dataclass
class _Sequence:
    """A llama.cpp sequence and the tokens its KV cache holds, in order from position 0."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)


_LOG_CALLBACK = None


def _route_logs(ll) -> None:
    """llama.cpp's own log lines go to turnrl's logger at debug level (errors at warning). The callback is set once
    and kept for the life of the process: llama.cpp holds only its pointer, and logs while freeing a context."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return

    @ll.llama_log_callback
    def forward(level, text, _user_data):
        message = text.decode("utf-8", "replace").rstrip()
        if message:
            logger.log(30 if level == GGML_LOG_LEVEL_ERROR else 10, "llama.cpp: %s", message)

    _LOG_CALLBACK = forward
    ll.llama_log_set(forward, ctypes.c_void_p(0))


def _free_engine(ll, model, ctx, batch) -> None:
    ll.llama_batch_free(batch)
    ll.llama_free(ctx)
    ll.llama_model_free(model)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


class LlamaCppGenerator:
    name = "llamacpp"

    def __init__(self, cfg: BackendConfig):
        try:
            import llama_cpp
        except ImportError:
            raise InputError(f"backend llamacpp: llama-cpp-python is not installed ({INSTALL_HINT}), or use "
                             "backend hf") from None
        self.ll = llama_cpp
        resolved = resolve(cfg.model)
        self.tokenizer = load_tokenizer(resolved)
        self.revision = resolved.revision
        self.stop_ids = checkpoint_stop_ids(self.tokenizer, resolved.path)
        self.path = gguf_file(resolved, cfg.dtype)
        _route_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self.model:
            raise InputError(f"backend llamacpp: llama.cpp could not load {self.path}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.n_seq = min(cfg.batch_size, 256)  # llama.cpp's LLAMA_MAX_SEQ
        f32 = torch_dtype(cfg.dtype) == torch.float32
        # KV cells per conversation: the KV cache budget shared by the sequences, at most the trained context.
        layers = llama_cpp.llama_model_n_layer(self.model)
        kv_width = llama_cpp.llama_model_n_embd(self.model) // llama_cpp.llama_model_n_head(self.model) * \
            llama_cpp.llama_model_n_head_kv(self.model)
        cell_bytes = 2 * layers * kv_width * (4 if f32 else 2)
        per_seq = int(cfg.kv_cache_gb * 2**30 / (self.n_seq * cell_bytes)) // 256 * 256
        self.seq_len = max(256, min(per_seq, llama_cpp.llama_model_n_ctx_train(self.model)))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.seq_len * self.n_seq
        params.n_seq_max = self.n_seq
        params.n_batch = params.n_ubatch = 512
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False  # a KV stream per sequence: attention reads only its own conversation
        params.no_perf = True
        # Measured on a 2-core AVX2 CPU, 64 sequences: a decoding step takes 360 ms with the plain attention, 650 ms
        # with flash attention (docs/benchmarks.md).
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if f32:  # the cache at the weights' precision, as the hf backend keeps it
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise InputError(f"backend llamacpp: llama.cpp could not create a context of {params.n_ctx} cells for "
                             f"{self.n_seq} sequences (kv_cache_gb {cfg.kv_cache_gb}, batch_size {cfg.batch_size})")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        weakref.finalize(self, _free_engine, llama_cpp, self.model, self.ctx, self.batch)
        self.batch_capacity = params.n_batch
        self._free = list(range(self.n_seq))  # a heap: the lowest free id first
        self._sessions: dict[str, _Sequence] = {}  # in least-recently-used order

    # -- sequences ---------------------------------------------------------------------------------------------

    def release(self, sessions: list[str]) -> None:
        """Forget finished conversations and free their sequences."""
        for s in sessions:
            seq = self._sessions.pop(s, None)
            if seq is not None:
                self._drop(seq)

    def _drop(self, seq: _Sequence) -> None:
        self.ll.llama_memory_seq_rm(self.memory, seq.seq_id, -1, -1)
        seq.tokens = []
        heapq.heappush(self._free, seq.seq_id)

    def _sequence(self, request: GenRequest, keep: set[str]) -> _Sequence:
        """The request's sequence: its conversation's, or a free one (evicting the least recently used
        conversation outside ``keep`` when none is free)."""
        if request.session and request.session in self._sessions:
            seq = self._sessions.pop(request.session)
        else:
            if not self._free:
                victim = next(s for s in self._sessions if s not in keep)
                self._drop(self._sessions.pop(victim))
            seq = _Sequence(heapq.heappop(self._free))
        if request.session:
            self._sessions[request.session] = seq  # most recently used last
        return seq

    # -- generation --------------------------------------------------------------------------------------------

    def generate(self, requests: list[GenRequest], desc: str | None = None,
                 on_step: Callable[[list[tuple[int, int]]], None] | None = None) -> list[GenResult]:
        """One result per request, in order, at most ``batch_size`` conversations decoded at once."""
        prompts = [encode_prompt(self.tokenizer, r.messages) for r in requests]
        for i, p in enumerate(prompts):
            if len(p) + requests[i].sampling.max_new_tokens > self.seq_len:
                raise InputError(f"backend llamacpp: a conversation of {len(p)} prompt tokens plus "
                                 f"{requests[i].sampling.max_new_tokens} new ones exceeds the {self.seq_len} KV "
                                 f"cells each of the {self.n_seq} sequences has; raise kv_cache_gb or lower "
                                 "batch_size")
        results: list[GenResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc or "generate", unit="conv", leave=False, disable=desc is None)
        for start in range(0, len(requests), self.n_seq):
            chunk = list(range(start, min(start + self.n_seq, len(requests))))
            self._generate_chunk(chunk, requests, prompts, results, on_step)
            bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _generate_chunk(self, chunk: list[int], requests, prompts, results, on_step) -> None:
        keep = {requests[i].session for i in chunk if requests[i].session}
        seqs = [self._sequence(requests[i], keep) for i in chunk]
        logits = self._prefill(seqs, [prompts[i] for i in chunk])
        self._decode(seqs, logits, chunk, requests, results, on_step)
        for seq, i in zip(seqs, chunk):
            if not requests[i].session:
                self._drop(seq)

    def _prefill(self, seqs: list[_Sequence], prompts: list[list[int]]) -> torch.Tensor:
        """Bring each sequence's cache to its prompt and return the logits after each prompt's last token. A
        sequence keeps the prefix of the prompt it already holds (an earlier turn); new conversations run the start
        their distinct prompts share (the system prompt) once, and an identical prompt once, the others copying
        the cache."""
        feeds: list[tuple[int, list[int], int]] = []  # (row, tokens to run, position of the first)
        leader_of: dict[tuple[int, ...], int] = {}
        copies: list[tuple[int, int]] = []  # (row, row whose identical fresh prompt it copies)
        for row, (seq, prompt) in enumerate(zip(seqs, prompts)):
            keep = min(_common_prefix(seq.tokens, prompt), len(prompt) - 1)  # the last token is run for logits
            if keep < len(seq.tokens):
                self.ll.llama_memory_seq_rm(self.memory, seq.seq_id, keep, -1)
                del seq.tokens[keep:]
            key = tuple(prompt)
            if keep == 0 and key in leader_of:
                copies.append((row, leader_of[key]))
                continue
            if keep == 0:
                leader_of[key] = row
            feeds.append((row, prompt[keep:], keep))
        logits = torch.empty(len(seqs), self.n_vocab)
        fresh = [f for f in feeds if f[2] == 0]
        shared = shared_prefix([tokens for _, tokens, _ in fresh]) if len(fresh) > 1 else 0
        if shared:
            first = fresh[0][0]
            self._run(seqs, [(first, fresh[0][1][:shared], 0)], logits, want_logits=False)
            for row, _, _ in fresh[1:]:
                self.ll.llama_memory_seq_cp(self.memory, seqs[first].seq_id, seqs[row].seq_id, -1, -1)
                seqs[row].tokens = list(seqs[first].tokens)
            feeds = [(row, tokens[shared:], shared) if pos == 0 else (row, tokens, pos) for row, tokens, pos in feeds]
        self._run(seqs, feeds, logits)
        for row, leader in copies:
            # A full copy of the leader's stream (llama.cpp copies between streams only whole).
            self.ll.llama_memory_seq_cp(self.memory, seqs[leader].seq_id, seqs[row].seq_id, -1, -1)
            seqs[row].tokens = list(seqs[leader].tokens)
            logits[row] = logits[leader]
        return logits

    def _run(self, seqs: list[_Sequence], feeds: list[tuple[int, list[int], int]], logits: torch.Tensor,
             want_logits: bool = True) -> None:
        """Run the tokens through the model in batches of at most ``batch_capacity`` tokens; each feed's logits
        after its last token go to ``logits[row]`` (with ``want_logits``)."""
        # In ascending sequence order: llama.cpp batches the sequences of a split KV cache together only when their
        # ids come in order (otherwise each runs as a batch of its own, a full pass over the weights each).
        pending = sorted(((row, tokens, pos) for row, tokens, pos in feeds if tokens), key=lambda f: seqs[f[0]].seq_id)
        while pending:
            n, outputs, rest = 0, [], []
            for row, tokens, pos in pending:
                room = self.batch_capacity - n
                if room <= 0:
                    rest.append((row, tokens, pos))
                    continue
                take = tokens[:room]
                for k, token in enumerate(take):
                    self._put(n, token, pos + k, seqs[row].seq_id, False)
                    n += 1
                seqs[row].tokens.extend(take)
                if len(take) < len(tokens):
                    rest.append((row, tokens[room:], pos + room))
                elif want_logits:
                    self.batch.logits[n - 1] = 1
                    outputs.append(row)
            self._decode_batch(n)
            if outputs:
                logits[outputs] = self._logits(len(outputs))
            pending = rest

    def _put(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        """Slot ``n`` of the batch: ``token`` at ``pos`` of sequence ``seq_id``, its logits wanted or not."""
        batch = self.batch
        batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, 1, logits
        batch.seq_id[n][0] = seq_id

    def _logits(self, rows: int) -> torch.Tensor:
        """The logits of the last batch's ``rows`` outputs, in batch order (a view of llama.cpp's buffer)."""
        return torch.from_numpy(np.ctypeslib.as_array(self.ll.llama_get_logits(self.ctx), shape=(rows, self.n_vocab)))

    def _decode_batch(self, n_tokens: int) -> None:
        self.batch.n_tokens = n_tokens
        code = self.ll.llama_decode(self.ctx, self.batch)
        if code == 1:
            raise InputError("backend llamacpp: no room left in the KV cache; raise kv_cache_gb or lower batch_size")
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code}")

    def _decode(self, seqs: list[_Sequence], logits: torch.Tensor, request_ids: list[int], requests, results,
                on_step) -> None:
        samplings = [requests[i].sampling for i in request_ids]
        generators = [torch.Generator().manual_seed(s.seed) if s.temperature > 0 else None for s in samplings]
        rows = len(request_ids)
        generated: list[list[int]] = [[] for _ in range(rows)]
        finish: list[str | None] = [None] * rows
        stop_ids = set(self.stop_ids)
        active = list(range(rows))
        while active:
            tokens = sample_rows(logits, [samplings[r] for r in active], [generators[r] for r in active]).tolist()
            going, sampled = [], []
            for r, token in zip(active, tokens):
                generated[r].append(token)
                if token not in stop_ids:
                    sampled.append((request_ids[r], token))
                finish[r] = finish_reason(self.tokenizer, generated[r], samplings[r], stop_ids)
                if finish[r] is None:
                    going.append(r)  # a row's final token is not run through the model
            if on_step is not None and sampled:
                on_step(sampled)
            if not going:
                break
            going.sort(key=lambda r: seqs[r].seq_id)  # in sequence order, as in _run
            for n, r in enumerate(going):
                self._put(n, generated[r][-1], len(seqs[r].tokens), seqs[r].seq_id, True)
                seqs[r].tokens.append(generated[r][-1])
            self._decode_batch(len(going))
            logits = self._logits(len(going))
            active = going
        for r, i in enumerate(request_ids):
            results[i] = reply_result(self.tokenizer, generated[r], finish[r] or "length", samplings[r])


