"""The hf backend against transformers' own greedy decoding, with and without the KV cache kept between turns."""

from __future__ import annotations

import pytest
import torch

from turnrl.chat import render
from turnrl.generation import BackendConfig, GenRequest, Sampling
from turnrl.generation.hf import HFGenerator


def reference_greedy(model, ids: list[int], n: int, stop_ids: list[int]) -> list[int]:
    """transformers' generate on one unpadded sequence: the independent answer."""
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    return out[0, len(ids):].tolist()


def make(tiny_model, tokenizer, batch_size=8) -> HFGenerator:
    return HFGenerator(BackendConfig(batch_size=batch_size), model=tiny_model.eval(), tokenizer=tokenizer)


def conv(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_fresh_batch_matches_generate(tiny_model, tokenizer):
    gen = make(tiny_model, tokenizer)
    questions = ["What is 2+2?", "Name a planet.", "What is 2+2?", "Why is the sky blue, in one long sentence?"]
    requests = [GenRequest(conv(q), Sampling(max_new_tokens=12)) for q in questions]
    results = gen.generate(requests)
    for q, r in zip(questions, results):
        prompt = ids_of(tokenizer, render(tokenizer, conv(q), add_generation_prompt=True))
        expected = reference_greedy(tiny_model, prompt, 12, gen.stop_ids)
        body = [t for t in expected if t not in gen.stop_ids]
        assert r.text == tokenizer.decode(body, skip_special_tokens=True)
        assert r.tokens == len(expected)
        assert r.finish == ("stop" if expected[-1] in gen.stop_ids else "length")


def test_shared_system_prompt_is_encoded_once_and_matches_generate(tiny_model, tokenizer):
    gen = make(tiny_model, tokenizer)
    system = "You are a careful assistant. Read the question, think it through, then answer in one short line."
    questions = ["What is 2+2?", "Name a planet.", "Why is the sky blue, in one long sentence?"]
    messages = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]
    prompts = [ids_of(tokenizer, render(tokenizer, m, add_generation_prompt=True)) for m in messages]
    shared = next(k for k in range(min(map(len, prompts))) if len({p[k] for p in prompts}) > 1)
    assert shared >= 16  # the system prompt and the template's opening
    calls = []
    original = gen.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    gen.model.forward = counting_forward
    results = gen.generate([GenRequest(m, Sampling(max_new_tokens=10)) for m in messages])
    gen.model.forward = original
    assert calls[0] == (1, shared)  # the shared start, once
    assert calls[1] == (3, max(map(len, prompts)) - shared)  # each prompt's own rest, on top of it
    for prompt, r in zip(prompts, results):
        expected = reference_greedy(tiny_model, prompt, 10, gen.stop_ids)
        assert r.tokens == len(expected)
        assert r.text == tokenizer.decode([t for t in expected if t not in gen.stop_ids], skip_special_tokens=True)


def test_shared_prefix_leaves_every_prompt_a_token_to_read_logits_from():
    from turnrl.generation.hf import MIN_SHARED_PREFIX, shared_prefix

    base = list(range(40))
    assert shared_prefix([base, base + [7, 8]]) == 39  # the shorter prompt keeps its last token
    assert shared_prefix([base + [1], base + [2]]) == 40
    assert shared_prefix([base[:MIN_SHARED_PREFIX] + [1], base[:MIN_SHARED_PREFIX] + [2]]) == MIN_SHARED_PREFIX
    assert shared_prefix([base[:MIN_SHARED_PREFIX - 1] + [1], base[:MIN_SHARED_PREFIX - 1] + [2]]) == 0
    assert shared_prefix([[5] + base, base]) == 0


def test_second_turn_reuses_the_cache_and_matches_generate(tiny_model, tokenizer):
    gen = make(tiny_model, tokenizer)
    first = [conv("What is 2+2?"), conv("Name a planet, then a star, then a comet.")]
    r1 = gen.generate([GenRequest(m, Sampling(max_new_tokens=9), session=f"s{i}") for i, m in enumerate(first)])
    second = [m + [{"role": "assistant", "content": r.text}, {"role": "user", "content": "Are you sure?"}]
              for m, r in zip(first, r1)]
    calls = []
    original = gen.model.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    gen.model.forward = counting_forward
    r2 = gen.generate([GenRequest(m, Sampling(max_new_tokens=7), session=f"s{i}") for i, m in enumerate(second)])
    gen.model.forward = original
    prompt1 = [ids_of(tokenizer, render(tokenizer, m, add_generation_prompt=True)) for m in first]
    for i, m in enumerate(second):
        gen1 = reference_greedy(tiny_model, prompt1[i], 9, gen.stop_ids)
        # The conversation continues from the tokens the model actually produced, then the new turn's tokens.
        rendered_so_far = render(tokenizer, first[i], add_generation_prompt=True) + r1[i].text
        rest = render(tokenizer, m, add_generation_prompt=True)[len(rendered_so_far):]
        if gen1[-1] in gen.stop_ids:
            rest = rest[len(tokenizer.decode([gen1[-1]])):]
        full = prompt1[i] + gen1 + ids_of(tokenizer, rest)
        expected = reference_greedy(tiny_model, full, 7, gen.stop_ids)
        assert r2[i].tokens == len(expected)
        assert r2[i].text == tokenizer.decode([t for t in expected if t not in gen.stop_ids], skip_special_tokens=True)
    # The new prompt was fed as a short extension, not the whole conversation again.
    assert calls[0][1] < min(len(p) for p in prompt1)


def test_sampling_does_not_depend_on_the_batch(tiny_model, tokenizer):
    gen = make(tiny_model, tokenizer)
    target = GenRequest(conv("Tell me a fact."), Sampling(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=10,
                                                          seed=1234))
    alone = gen.generate([target])[0]
    others = [GenRequest(conv(f"Question number {k} is a longer one than the others."),
                         Sampling(temperature=0.7, max_new_tokens=14, seed=k)) for k in range(5)]
    together = gen.generate(others[:2] + [target] + others[2:])[2]
    assert alone == together
    different_seed = gen.generate([GenRequest(target.messages, Sampling(temperature=1.0, top_p=0.9, top_k=50,
                                                                        max_new_tokens=10, seed=99))])[0]
    assert different_seed.text != alone.text


def test_stop_string_cuts_the_reply(smollm2_dir):
    gen = HFGenerator(BackendConfig(model=str(smollm2_dir), dtype="float32"))
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = gen.generate([GenRequest(messages, Sampling(max_new_tokens=40))])[0]
    assert "4, 5" in full.text
    cut = gen.generate([GenRequest(messages, Sampling(max_new_tokens=40, stop=["4,"]))])[0]
    assert cut.finish == "stop_string"
    assert cut.text == full.text[: full.text.index("4,") + 2]


@pytest.mark.parametrize("flags, cuda, expected", [
    ("fpu sse2 avx2 avx512f", False, "float32"),          # bf16 emulated: fp32 is faster
    ("fpu sse2 avx512f avx512_bf16", False, "bfloat16"),
    ("fpu sse2 amx_bf16", False, "bfloat16"),
    ("fp asimd bf16", False, "bfloat16"),                  # Arm
    ("fpu sse2", True, "bfloat16"),                        # a GPU
])
def test_auto_dtype_is_bf16_only_where_it_is_native(monkeypatch, tmp_path, flags, cuda, expected):
    import turnrl.models as models

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    real_path = models.Path
    monkeypatch.setattr(models, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert models.torch_dtype("auto") == getattr(torch, expected)
    assert models.torch_dtype("bf16") == torch.bfloat16
