"""Training throughput: turnrl's weighted fine-tuning (all weights 1) vs TRL's SFTTrainer, side by side.

Both train SmolLM2-135M-Instruct on the same logged multi-turn conversations with the same loss (token mean over the
assistant tokens of a batch, end-of-turn included), precision (fp32 master weights under bf16 autocast), batch size,
max length and optimizer (AdamW, constant LR). TRL gets the conversations pre-tokenised with turnrl's masks (its
``assistant_only_loss`` needs ``{% generation %}`` markers that SmolLM2's template lacks), so both see identical
tokens and labels. The runs alternate (turnrl, TRL, turnrl, ...) and each is timed over its steady-state steps; the
table reports medians over repeats, their ratio, peak RSS per run, and both losses on one fixed batch (they must agree
at initialisation).

    python benchmarks/train_throughput.py --trajectories runs/demo/scored/trajectories.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path


def load_items(path: Path, n: int, max_length: int):
    from turnrl.algorithms.config import AlgoConfig
    from turnrl.algorithms.weighted import build_weighted_examples
    from turnrl.models import DEFAULT_MODEL, load_tokenizer, stop_token_ids
    from turnrl.records import read_trajectories
    from turnrl.train.config import OptimConfig
    from turnrl.train.weighted import tokenize_examples

    trajectories = read_trajectories(path)[:n]
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    examples, _ = build_weighted_examples(trajectories, AlgoConfig(name="sft"))
    items, dropped = tokenize_examples(examples, tokenizer, stop_token_ids(tokenizer),
                                       OptimConfig(max_length=max_length))
    return items, tokenizer


def run_turnrl(args, queue) -> None:
    """One timed training run of turnrl's weighted trainer (in its own process, for a clean peak RSS)."""
    import torch

    from turnrl.train.config import OptimConfig
    from turnrl.train.data import epoch_steps
    from turnrl.train.loop import load_for_training, TrainLoop
    from turnrl.train.logprobs import MaskedLogprobLM
    from turnrl.train.weighted import weighted_step_loss

    torch.manual_seed(0)
    items, tokenizer = load_items(Path(args.trajectories), args.n, args.max_length)
    optim = OptimConfig(learning_rate=1e-5, batch_size=args.batch_size, normalization="mean", warmup_ratio=0.0,
                        micro_batch_tokens=args.micro_batch_tokens, max_length=args.max_length)
    lm, tokenizer, _ = load_for_training("smollm2-135m-instruct", optim)
    steps = epoch_steps(items, args.batch_size, 1.0, 0)[: args.steps]
    loop = TrainLoop(lm, tokenizer, optim, Path(args.out) / "turnrl", "smollm2-135m-instruct", steps,
                     wrap=MaskedLogprobLM)
    step_loss = weighted_step_loss("mean", args.micro_batch_tokens, tokenizer.pad_token_id)
    times, tokens, total_tokens, losses = [], [], [], []
    for i, step in enumerate(steps):
        start = time.perf_counter()
        metrics = step_loss(step, loop.accelerator, loop.model)
        loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        tokens.append(metrics["tokens"])
        total_tokens.append(sum(len(it.seq.input_ids) for it in step))
        losses.append(metrics["loss"])
    queue.put(summary("turnrl", times, tokens, total_tokens, losses, args.warmup))


def run_trl(args, queue) -> None:
    """One timed run of TRL's SFTTrainer on the same tokens and labels."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from turnrl.models import resolve
    from turnrl.train.data import epoch_steps

    torch.manual_seed(0)
    items, tokenizer = load_items(Path(args.trajectories), args.n, args.max_length)
    order = [it for step in epoch_steps(items, args.batch_size, 1.0, 0)[: args.steps] for it in step]
    rows = [{"input_ids": it.seq.input_ids,
             "labels": [t if m else -100 for t, m in zip(it.seq.input_ids, it.seq.label_mask)]} for it in order]
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct").path, dtype=torch.float32)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)

    losses: list[float] = []

    class LossLog(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    config = SFTConfig(output_dir=str(Path(args.out) / "trl"), per_device_train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant",
                       warmup_steps=0, max_steps=args.steps, bf16=True, use_cpu=True,
                       gradient_checkpointing=False, max_length=args.max_length, logging_steps=1,
                       report_to="none", save_strategy="no", dataloader_num_workers=0, seed=0,
                       optim="adamw_torch", weight_decay=0.0, max_grad_norm=0.0, shuffle_dataset=False)
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[Timer(), LossLog()])
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    step_tokens = [sum(sum(1 for t in r["labels"][1:] if t != -100) for r in rows[i: i + args.batch_size])
                   for i in range(0, len(rows), args.batch_size)]
    step_total = [sum(len(r["input_ids"]) for r in rows[i: i + args.batch_size])
                  for i in range(0, len(rows), args.batch_size)]
    queue.put(summary("trl", times, step_tokens, step_total, losses, args.warmup))


def summary(name, times, tokens, total_tokens, losses, warmup) -> dict:
    steady = slice(warmup, None)
    seconds = sum(times[steady])
    return {"name": name, "steps": len(times), "seconds": seconds,
            "trained_tok_s": sum(tokens[steady]) / seconds, "total_tok_s": sum(total_tokens[steady]) / seconds,
            "first_loss": losses[0] if losses else float("nan"),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def fixed_batch_losses(args) -> tuple[float, float]:
    """Both libraries' loss on the same batch at initialisation: turnrl's step loss and the HF/TRL model loss."""
    import torch

    from turnrl.train.config import OptimConfig
    from turnrl.train.data import pad_batch
    from turnrl.train.loop import load_for_training
    from turnrl.train.logprobs import MaskedLogprobLM

    items, tokenizer = load_items(Path(args.trajectories), args.batch_size, args.max_length)
    lm, tokenizer, _ = load_for_training("smollm2-135m-instruct", OptimConfig())
    batch = pad_batch([it.seq for it in items], tokenizer.pad_token_id, "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logprobs, _ = MaskedLogprobLM(lm)(**batch)
        ours = float(-logprobs.sum() / logprobs.numel())
        labels = torch.where(batch["label_mask"].bool(), batch["input_ids"], -100)
        theirs = float(lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss)
    return ours, theirs


def matmul_peak(dtype_name: str = "bfloat16", size: int = 2048, repeats: int = 10) -> float:
    """The machine's measured matmul throughput (GFLOP/s) on the CPU in the training dtype: the MFU denominator
    (``gpu_check.matmul_peak``, the best of three timings)."""
    import torch

    from gpu_check import matmul_peak as measured_peak

    return measured_peak("cpu", getattr(torch, dtype_name), size, repeats) / 1e9


def model_flops_per_token(seq_len: float) -> tuple[float, float]:
    """Training FLOPs of SmolLM2-135M as (per token of the sequence, per token the output layer runs on).

    The first is 6 x the decoder's matmul weights plus causal attention, 12 * layers * (seq_len / 2) * hidden (QK^T
    and AV, forward and backward); the second 6 x the output layer's weights (tied to the embeddings, counted once).
    turnrl runs the output layer only at the trained positions (``MaskedLogprobLM``), TRL at every position, so
    the FLOPs each trainer does differ; recomputation (turnrl checkpoints the output layer) is not counted, as MFU
    counts the model's FLOPs, not the hardware's."""
    from transformers import AutoConfig

    from turnrl.models import resolve

    c = AutoConfig.from_pretrained(resolve("smollm2-135m-instruct").path)
    head_dim = c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * head_dim
    per_layer = c.hidden_size * (c.hidden_size * 2 + 2 * kv) + 3 * c.hidden_size * c.intermediate_size
    decoder = 6 * c.num_hidden_layers * per_layer + 12 * c.num_hidden_layers * (seq_len / 2) * c.hidden_size
    return decoder, 6 * c.vocab_size * c.hidden_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trajectories", default="runs/demo/scored/trajectories.jsonl")
    parser.add_argument("--n", type=int, default=256, help="conversations")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--micro_batch_tokens", type=int, default=8192)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-train")
    args = parser.parse_args()
    if not Path(args.trajectories).exists():
        raise SystemExit(f"{args.trajectories}: not found; run `turnrl demo` first (or pass --trajectories)")
    ctx = mp.get_context("spawn")
    results: dict[str, list[dict]] = {"turnrl": [], "trl": []}
    for r in range(args.repeats):
        for fn in (run_turnrl, run_trl):
            queue = ctx.Queue()
            proc = ctx.Process(target=fn, args=(args, queue))
            proc.start()
            res = queue.get()
            proc.join()
            results[res["name"]].append(res)
            print(json.dumps(res), flush=True)
            gc.collect()
    ours, theirs = fixed_batch_losses(args)
    peak = matmul_peak()
    items, _ = load_items(Path(args.trajectories), args.n, args.max_length)
    mean_len = statistics.mean(len(it.seq.input_ids) for it in items)
    decoder, head = model_flops_per_token(mean_len)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("trained_tok_s", "total_tok_s", "peak_rss_gb")}
           for k, v in results.items()}
    print(f"\n{args.repeats} alternating repeats x {args.steps} steps (first {args.warmup} untimed), batch "
          f"{args.batch_size} conversations, bf16 autocast, fp32 weights\n")
    print("| trainer | trained tokens/s (median) | all tokens/s (median) | peak RSS GB (median) "
          "| MFU, 6N per token | MFU on the FLOPs done |")
    print("|---|---|---|---|---|---|")
    for k in ("turnrl", "trl"):
        total, trained = med[k]["total_tok_s"], med[k]["trained_tok_s"]
        head_tokens = trained if k == "turnrl" else total  # where the output layer runs
        nominal = total * (decoder + head) / (peak * 1e9)
        done = (total * decoder + head_tokens * head) / (peak * 1e9)
        print(f"| {k} | {trained:.0f} | {total:.0f} | {med[k]['peak_rss_gb']:.2f} | {100 * nominal:.0f}% | "
              f"{100 * done:.0f}% |")
    print(f"\nmeasured bf16 matmul peak: {peak:.0f} GFLOP/s (2048^2, torch, {__import__('torch').get_num_threads()} "
          f"threads); FLOPs per token {(decoder + head) / 1e9:.2f} GFLOP at mean length {mean_len:.0f}, of which the "
          f"output layer {head / 1e9:.2f}")
    print(f"\nratio turnrl / TRL (trained tokens/s): {med['turnrl']['trained_tok_s'] / med['trl']['trained_tok_s']:.2f}x")
    print(f"loss on one fixed batch at initialisation: turnrl {ours:.5f}, transformers/TRL {theirs:.5f}")


if __name__ == "__main__":
    main()
