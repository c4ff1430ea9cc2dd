"""The hf backend's sampler against the full-vocabulary sort it replaced, on real logits, side by side.

Logits are recorded from SmolLM2-135M-Instruct decoding SciQ questions (every step of ``--steps`` steps, all rows).
Each sampler then draws from those same logits, batch by batch, in one process, alternating: the reference is
the textbook top-p filter (sort all 49,152 logits, keep the prefix whose mass before a token is at most top_p,
softmax, one ``torch.multinomial`` per row with its own generator, the hf backend's sampler until this change);
``sample_rows`` looks for the kept set among the 64 and then 1,024 best tokens first. The table gives ms per
decoding step (median over steps), the speed-up, and at which width the rows' kept sets were found.

    python benchmarks/sampling_speed.py --rows 8 32 64 --steps 24
"""

from __future__ import annotations

import argparse
import math
import statistics
import time


def reference_sample(scores, samplings, generators):
    """The sampler as it was: full sort and per-row multinomial over the whole vocabulary."""
    import torch

    scores = scores.float()
    choice = scores.argmax(dim=-1)
    logits = scores / torch.tensor([s.temperature for s in samplings])[:, None]
    top_p = torch.tensor([s.top_p for s in samplings])
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs > top_p[:, None]
    logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, -math.inf))
    probs = torch.softmax(logits, dim=-1)
    for r, g in enumerate(generators):
        choice[r] = torch.multinomial(probs[r], 1, generator=g)[0]
    return choice


def record_logits(rows: int, steps: int, temperature: float) -> list:
    import turnrl.generation.hf as hf
    from turnrl.generation import BackendConfig, GenRequest, Sampling, make_generator
    from turnrl.tasks import DatasetConfig, load_tasks, split_tasks

    cfg = DatasetConfig(name="sciq", n_train=0, n_test=rows)
    _, _, tasks = split_tasks(load_tasks(cfg), cfg)
    generator = make_generator(BackendConfig(batch_size=rows))
    recorded = []
    original = hf.sample_rows

    def recording(scores, samplings, generators):
        recorded.append(scores.clone())
        return original(scores, samplings, generators)

    hf.sample_rows = recording
    try:
        generator.generate([GenRequest(messages=[{"role": "user", "content": t.question}],
                                       sampling=Sampling(temperature=temperature, top_p=0.95, max_new_tokens=steps,
                                                         seed=k)) for k, t in enumerate(tasks)])
    finally:
        hf.sample_rows = original
    return recorded


def found_at(scores, temperature: float, top_p: float) -> list[int]:
    """For each row, the smallest of the sampler's widths holding its kept set (the vocabulary: the full sort)."""
    import torch

    from turnrl.generation.hf import PREFIX_WIDTHS

    probs = torch.softmax(scores.float() / temperature, dim=-1)
    widths = []
    for row in probs:
        best = torch.topk(row, PREFIX_WIDTHS[-1]).values
        mass = best.cumsum(dim=-1)
        widths.append(next((w for w in PREFIX_WIDTHS if mass[w - 1] > top_p), row.shape[-1]))
    return widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()

    import torch

    from turnrl.generation import Sampling
    from turnrl.generation.hf import PREFIX_WIDTHS, sample_rows

    print(f"| rows | full sort + multinomial, ms/step | sample_rows, ms/step | speed-up | kept set within "
          f"{' / '.join(map(str, PREFIX_WIDTHS))} / sort (% of rows) |")
    print("|---|---|---|---|---|")
    for rows in args.rows:
        steps = record_logits(rows, args.steps, args.temperature)
        samplings = [Sampling(temperature=args.temperature, top_p=0.95, seed=k) for k in range(rows)]
        times = {"reference": [], "sample_rows": []}
        for scores in steps:
            for name, fn in (("reference", reference_sample), ("sample_rows", sample_rows)):
                generators = [torch.Generator().manual_seed(s.seed) for s in samplings]
                start = time.perf_counter()
                fn(scores, samplings, generators)
                times[name].append(1000 * (time.perf_counter() - start))
        widths = [w for scores in steps for w in found_at(scores, args.temperature, 0.95)]
        shares = [100 * sum(w == x for w in widths) / len(widths) for x in sorted(set(PREFIX_WIDTHS))]
        shares.append(100 * sum(w not in PREFIX_WIDTHS for w in widths) / len(widths))
        ref, new = statistics.median(times["reference"]), statistics.median(times["sample_rows"])
        print(f"| {rows} | {ref:.1f} | {new:.1f} | {ref / new:.1f}x | {' / '.join(f'{s:.1f}' for s in shares)} |",
              flush=True)
    print(f"\nSmolLM2-135M-Instruct logits of {args.steps} decoding steps on SciQ questions, temperature "
          f"{args.temperature:g}, top-p 0.95; medians over steps, both samplers on the same logits in one process.")


if __name__ == "__main__":
    main()
