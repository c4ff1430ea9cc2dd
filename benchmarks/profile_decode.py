"""Where one decoding step of the hf backend spends its time, at several batch sizes (torch profiler).

Each run starts ``rows`` sampled conversations on the same SciQ prompt set (temperature 0.8, top-p 0.95, the
rollout defaults), lets the first steps warm up, then profiles ``--steps`` decoding steps of the whole engine
(``HFGenerator.generate``) and sorts the CPU time of every operator into the parts of a step:

- ``decoder matmuls``: the linear layers of the transformer blocks (q/k/v/o and the MLP);
- ``output layer``: the final projection onto the 49,152-token vocabulary;
- ``attention``: scaled-dot-product attention over the KV cache;
- ``cache and masks``: KV-cache appends, mask and position building (cat, index, copy);
- ``sampling``: temperature, the top-p sort, softmax, cumsum, scatter, the per-row draws;
- ``other ops``: norms, activations, rotary embeddings and the rest;
- ``Python and dispatch``: the wall time of the step that no operator accounts for.

    python benchmarks/profile_decode.py --rows 8 32 64 --steps 16
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

PARTS = ("decoder matmuls", "output layer", "attention", "cache and masks", "sampling", "other ops",
         "Python and dispatch")
SAMPLING_OPS = ("sort", "softmax", "cumsum", "multinomial", "scatter", "masked_fill", "div", "argmax", "ge", "gt",
                "bitwise_or", "sub", "__or__", "arange")
CACHE_OPS = ("cat", "index", "copy_", "clone", "index_select", "slice", "unique", "full", "zeros", "ones")


def part_of(name: str, in_lm_head: bool, in_sampling: bool) -> str:
    op = name.removeprefix("aten::")
    if in_lm_head:
        return "output layer"
    if in_sampling:
        return "sampling"
    if op in ("mm", "addmm", "linear", "matmul", "bmm"):
        return "decoder matmuls"
    if "attention" in op or "sdpa" in op:
        return "attention"
    if any(op == c or op.startswith(c) for c in CACHE_OPS):
        return "cache and masks"
    return "other ops"


def profile(rows: int, steps: int, dtype: str) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile as torch_profile, record_function

    import turnrl.generation.hf as hf
    from turnrl.generation import BackendConfig, GenRequest, Sampling, make_generator
    from turnrl.tasks import DatasetConfig, load_tasks, split_tasks

    cfg = DatasetConfig(name="sciq", n_train=0, n_test=rows)
    _, _, tasks = split_tasks(load_tasks(cfg), cfg)
    generator = make_generator(BackendConfig(batch_size=rows, dtype=dtype))
    original_sample = hf.sample_rows

    def sample_marked(*args, **kwargs):
        with record_function("turnrl::sampling"):
            return original_sample(*args, **kwargs)

    hf.sample_rows = sample_marked
    head = generator.model.get_output_embeddings()
    marks: list = []
    head.register_forward_pre_hook(lambda m, a: marks.append(record_function("turnrl::output_layer").__enter__()))
    head.register_forward_hook(lambda m, a, out: marks.pop().__exit__(None, None, None))

    def requests(new_tokens: int):
        return [GenRequest(messages=[{"role": "user", "content": t.question}],
                           sampling=Sampling(temperature=0.8, top_p=0.95, max_new_tokens=new_tokens, seed=k))
                for k, t in enumerate(tasks)]

    generator.generate(requests(4))  # warm-up: allocator, kernels
    # The prompt pass is the same with and without the steps: profile a run of 1 token and one of 1 + steps, and
    # take the difference as the steps' cost.
    totals = {}
    for new_tokens in (1, 1 + steps):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            results = generator.generate(requests(new_tokens))
            wall = time.perf_counter() - start
        assert all(r.tokens == new_tokens or r.finish != "length" for r in results)
        parts: dict[str, float] = defaultdict(float)
        events = prof.events()
        for e in events:
            if e.name.startswith("turnrl::"):
                continue
            regions, parent = set(), e.cpu_parent
            while parent is not None and parent.name.startswith("turnrl::"):
                regions.add(parent.name)
                parent = parent.cpu_parent
            if parent is not None:
                continue  # top-level operators only (below the marked regions): children are in their parents' time
            parts[part_of(e.name, "turnrl::output_layer" in regions, "turnrl::sampling" in regions)] += (
                e.cpu_time_total / 1e6)
        parts["Python and dispatch"] = max(0.0, wall - sum(parts.values()))
        totals[new_tokens] = (wall, parts)
    wall = totals[1 + steps][0] - totals[1][0]
    out = {p: (totals[1 + steps][1][p] - totals[1][1][p]) / steps for p in PARTS}
    out["step"] = wall / steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16 (auto: bf16 where native)")
    args = parser.parse_args()
    results = {rows: profile(rows, args.steps, args.dtype) for rows in args.rows}
    print(f"\nms per decoding step (mean of {args.steps} steps, top-level operators), SmolLM2-135M-Instruct, "
          f"temperature 0.8, top-p 0.95\n")
    print("| part | " + " | ".join(f"{r} rows" for r in args.rows) + " |")
    print("|---|" + "---|" * len(args.rows))
    for part in PARTS + ("step",):
        cells = []
        for r in args.rows:
            ms = 1000 * results[r][part]
            share = "" if part == "step" else f" ({100 * results[r][part] / results[r]['step']:.0f} %)"
            cells.append(f"{ms:.1f}{share}")
        print(f"| {'whole step' if part == 'step' else part} | " + " | ".join(cells) + " |")
    print("| generated tokens/s | " + " | ".join(f"{r / results[r]['step']:.0f}" for r in args.rows) + " |")


if __name__ == "__main__":
    main()
