"""The llamacpp backend against independent computations: transformers' own forward pass and greedy decoding, the
hf backend, and the exact next-token distribution (a chi-square test on sampled tokens)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/setup.sh builds it)")

from turnrl.generation import BackendConfig, GenRequest, Sampling, engine, make_generator  # noqa: E402
from turnrl.generation.llamacpp import available, gguf_file  # noqa: E402
from turnrl.models import resolve  # noqa: E402

QUESTIONS = ["What is the boiling point of water at sea level?", "Name a planet with rings.",
             "Which gas do plants take in for photosynthesis?", "What is 7 times 8?",
             "Who wrote Romeo and Juliet?", "What is the largest ocean?"]


def first_turns(n=len(QUESTIONS)):
    return [[{"role": "user", "content": q + " Answer in one sentence."}] for q in QUESTIONS[:n]]


@pytest.fixture(scope="module")
def smol():
    """The offline default model at f32 in both engines (small KV streams: 512 cells for each of 8 sequences)."""
    cfg = dict(dtype="float32", batch_size=8, kv_cache_gb=8 * 512 * 2 * 30 * 192 * 4 / 2**30)
    return make_generator(BackendConfig(backend="llamacpp", **cfg)), make_generator(BackendConfig(backend="hf", **cfg))


def test_greedy_multi_turn_matches_hf_and_reuses_the_cache(smol):
    """Two-turn greedy conversations: llama.cpp's replies equal the hf backend's at f32 (all but at most one, as
    kernels round differently), and the second turn runs only the tokens after what the sequence already holds."""
    llama, hf = smol
    fed = []
    run = llama._run

    def counting_run(seqs, feeds, logits, **kwargs):
        fed.append(sum(len(t) for _, t, _ in feeds))
        return run(seqs, feeds, logits, **kwargs)

    llama._run = counting_run
    try:
        convs = first_turns()
        sessions = [f"conv-{i}" for i in range(len(convs))]
        replies = {}
        for name, gen in (("llama", llama), ("hf", hf)):
            out1 = gen.generate([GenRequest(m, Sampling(max_new_tokens=32), session=s) for m, s in zip(convs, sessions)])
            second = [m + [{"role": "assistant", "content": r.text}, {"role": "user", "content": "Why?"}]
                      for m, r in zip(convs, out1)]
            out2 = gen.generate([GenRequest(m, Sampling(max_new_tokens=32), session=s)
                                 for m, s in zip(second, sessions)])
            replies[name] = [(a.text, a.finish, a.tokens) for a in out1] + [(b.text, b.finish, b.tokens) for b in out2]
            gen.release(sessions)
    finally:
        llama._run = run
    same = sum(a == b for a, b in zip(replies["llama"], replies["hf"]))
    assert same >= len(replies["hf"]) - 1, list(zip(replies["llama"], replies["hf"]))
    from turnrl.chat import encode_prompt

    prompts = [encode_prompt(llama.tokenizer, m) for m in first_turns()]
    from turnrl.generation.hf import shared_prefix

    shared = shared_prefix(prompts)
    assert shared >= 16  # the system prompt and the template's opening
    # Turn one: the shared start once, then each prompt's own rest.
    assert fed[:2] == [shared, sum(len(p) - shared for p in prompts)]
    # Turn two: the reply's tail and the new user message only, not the whole conversation again.
    assert fed[2] < sum(map(len, prompts)) / 2


def test_greedy_equals_transformers_generate(smol, tokenizer):
    """The first reply of each conversation, token for token, against transformers' generate on the same f32
    weights (a second, independent decoder)."""
    llama, _ = smol
    from transformers import AutoModelForCausalLM

    from turnrl.chat import encode_prompt
    from turnrl.models import stop_token_ids

    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct").path, dtype=torch.float32).eval()
    stops = stop_token_ids(tokenizer, model)
    agree = 0
    convs = first_turns(3)
    ours = llama.generate([GenRequest(m, Sampling(max_new_tokens=24)) for m in convs])
    for m, r in zip(convs, ours):
        ids = torch.tensor([encode_prompt(tokenizer, m)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
        body = out[:-1] if out[-1] in stops else out
        agree += tokenizer.decode(body, skip_special_tokens=True) == r.text and len(out) == r.tokens
    assert agree >= 2


def test_sampled_tokens_follow_the_models_distribution(smol, tokenizer):
    """240 one-token samples at temperature 1.2 and top-p 0.9 (one seed each, 240 copies of one prompt run once
    and copied) against the kept set's probabilities from transformers' forward pass: chi-square test."""
    from scipy.stats import chisquare
    from transformers import AutoModelForCausalLM

    from turnrl.chat import encode_prompt

    llama, _ = smol
    messages = [{"role": "user", "content": "Say one word about the sea."}]
    n = 240
    out = llama.generate([GenRequest(messages, Sampling(temperature=1.2, top_p=0.9, max_new_tokens=1, seed=s))
                          for s in range(n)])
    drawn = [tokenizer(o.text, add_special_tokens=False)["input_ids"][:1] for o in out]
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct").path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([encode_prompt(tokenizer, messages)])).logits[0, -1] / 1.2
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    kept = order[before <= 0.9]
    p = probs[kept] / probs[kept].sum()
    counts = {int(t): 0 for t in kept}
    for ids in drawn:
        assert ids and ids[0] in counts, f"drew {ids}, outside the kept set"
        counts[ids[0]] += 1
    # Bins with at least 5 expected draws; the rest pooled into one.
    expected = (p * n).tolist()
    big = [k for k, e in enumerate(expected) if e >= 5]
    obs = [counts[int(kept[k])] for k in big] + [n - sum(counts[int(kept[k])] for k in big)]
    exp = [expected[k] for k in big] + [n - sum(expected[k] for k in big)]
    if exp[-1] < 1e-9:
        obs, exp = obs[:-1], exp[:-1]
    assert len(big) >= 2
    assert chisquare(obs, exp).pvalue > 0.001


def test_a_conversation_longer_than_its_sequence_is_a_clear_error(smol):
    llama, _ = smol
    from turnrl.errors import InputError

    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(InputError, match="kv_cache_gb"):
        llama.generate([GenRequest(long, Sampling(max_new_tokens=8))])


def test_trained_checkpoints_full_and_lora_convert_and_decode_like_hf(tiny_model_dir, tmp_path, monkeypatch):
    """A full checkpoint and a PEFT LoRA adapter (merged into its base for conversion) each convert once (the
    second request reads the cache) and decode greedily as the hf backend does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    for model in (str(tiny_model_dir), str(adapter)):
        path = gguf_file(resolve(model), "float32")
        mtime = path.stat().st_mtime_ns
        assert gguf_file(resolve(model), "float32").stat().st_mtime_ns == mtime  # cached
        cfg = dict(model=model, dtype="float32", batch_size=4, kv_cache_gb=0.01)
        requests = [GenRequest(m, Sampling(max_new_tokens=12)) for m in first_turns(4)]
        ours = make_generator(BackendConfig(backend="llamacpp", **cfg)).generate(requests)
        theirs = make_generator(BackendConfig(backend="hf", **cfg)).generate(requests)
        assert sum(a == b for a, b in zip(ours, theirs)) >= 3, (model, ours, theirs)
    # The adapter changes the replies: it was merged, not dropped.
    base = make_generator(BackendConfig(backend="llamacpp", model=str(tiny_model_dir), dtype="float32",
                                        batch_size=4, kv_cache_gb=0.01)).generate(requests)
    assert [r.text for r in base] != [r.text for r in ours]


def test_auto_picks_llamacpp_on_a_cpu_and_hf_for_a_model_in_memory(tiny_model_dir):
    assert available()
    cfg = BackendConfig(backend="auto")
    assert engine(cfg) == ("hf" if torch.cuda.is_available() else "llamacpp")
    assert engine(cfg, in_memory=True) == "hf"
    if not torch.cuda.is_available():
        generator = make_generator(BackendConfig(backend="auto", model=str(tiny_model_dir), dtype="float32",
                                                 batch_size=2, kv_cache_gb=0.01))
        assert generator.name == "llamacpp"
