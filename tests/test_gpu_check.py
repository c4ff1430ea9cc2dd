"""benchmarks/gpu_check.py at its tiny size on the CPU: the table and the JSON have every figure, MFU in (0, 1];
its FLOPs count against one spelled out from the config."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_check_on_cpu(tmp_path, tokenizer):  # the tokenizer fixture: SmolLM2's, converted before the clock
    out = tmp_path / "check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gpu_check = load_script()
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert table[0] == "| " + " | ".join(gpu_check.HEADER) + " |"
    assert len(table) == 3 and table[2].startswith("| tiny |")
    result = json.loads(out.read_text())
    assert result["device"].startswith("CPU") and result["matmul_peak_tflops"] > 0
    (row,) = result["rows"]
    assert set(gpu_check.FIELDS) <= set(row)
    assert 0 < row["mfu"] <= 1
    assert row["train_tok_s"] == pytest.approx(row["batch"] * row["seq_len"] / row["step_s"])
    assert row["tflops"] == pytest.approx(row["step_flops"] / row["step_s"] / 1e12)
    assert row["mfu"] == pytest.approx(row["tflops"] / result["matmul_peak_tflops"])
    assert row["peak_mem_gb"] > 0 and row["params_m"] == pytest.approx(3.22, abs=0.01)
    # 64 conversations x 3 turns x 8 tokens: a random model never stops early by choice, and any stop is counted.
    assert row["gen_conversations"] == 64 and 0 < row["gen_tokens"] <= 64 * 3 * 8 and row["gen_tok_s"] > 0


def test_flops_count():
    gpu_check = load_script()
    model = gpu_check.build_model("tiny", "cpu")
    c = model.config
    d, kv, ff, layers = c.hidden_size, c.num_key_value_heads * c.head_dim, c.intermediate_size, c.num_hidden_layers
    d_attn = c.num_attention_heads * c.head_dim
    per_layer = d * d_attn + 2 * d * kv + d_attn * d + 3 * d * ff  # q, k, v, o; gate, up, down
    assert gpu_check.matrix_params(model) == layers * per_layer
    lengths, head = [100, 50], 70
    expected = 6 * layers * per_layer * 150 + 6 * c.vocab_size * d * head + 6 * layers * d_attn * (100 ** 2 + 50 ** 2)
    assert gpu_check.step_flops(model, lengths, head) == expected
