"""The ``vllm`` backend: vLLM's offline engine (GPU), for rollouts at scale.

Prompts are rendered and tokenised with the model's chat template exactly as the ``hf`` backend does
(:func:`turnrl.chat.encode_prompt`) and handed to vLLM as token ids, so both backends see the same inputs; vLLM's
automatic prefix caching then reuses the KV cache of earlier turns and of the prompt the m samples of a task share.
PEFT adapters are served through vLLM's LoRA support. Install with ``pip install "turnrl[vllm]"`` on a GPU machine.
"""

from __future__ import annotations

from turnrl.chat import encode_prompt
from turnrl.errors import InputError
from turnrl.generation.base import BackendConfig, GenRequest, GenResult
from turnrl.models import load_tokenizer, resolve, stop_token_ids


class VLLMGenerator:
    name = "vllm"

    def __init__(self, cfg: BackendConfig):
        try:
            from vllm import LLM
        except ImportError:
            raise InputError("backend vllm: the vllm package is not installed (pip install 'turnrl[vllm]' on a GPU "
                             "machine), or use backend hf") from None
        resolved = resolve(cfg.model)
        self.tokenizer = load_tokenizer(resolved)
        self.revision = resolved.revision
        self.lora = None
        kwargs = {}
        if resolved.adapter:
            from peft import PeftConfig
            from vllm.lora.request import LoRARequest

            rank = PeftConfig.from_pretrained(resolved.adapter).r
            kwargs.update(enable_lora=True, max_lora_rank=max(8, rank))
            self.lora = LoRARequest("policy", 1, resolved.adapter)
        self.llm = LLM(model=resolved.path, tokenizer=resolved.path, dtype=cfg.dtype,
                       gpu_memory_utilization=cfg.gpu_memory_utilization,
                       tensor_parallel_size=cfg.tensor_parallel_size, enable_prefix_caching=True, **kwargs)
        self.stop_ids = stop_token_ids(self.tokenizer)

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]:
        from vllm import SamplingParams

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
