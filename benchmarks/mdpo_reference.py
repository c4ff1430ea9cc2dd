"""Time and peak memory of one epoch of M-DPO, with and without precomputed reference log-probabilities.

    python benchmarks/mdpo_reference.py [--out runs/bench-mdpo-reference] [--tasks 12] [--lora both]

First (once, then reused) it logs a few dozen real conversations: SmolLM2-135M-Instruct on SciQ with the 3-turn
reasoning environment, ``--tasks`` questions x 3 samples, scored with the default reward. M-DPO pairs them best
vs worst (so that every question with unequal rewards gives a pair). Then every variant trains one epoch in a
fresh process, so that each peak RSS is its own: the reference computed in one pass before training
(``algo.preference.precompute_reference: true``) or by a reference forward pass in every step (false), for full fine-tuning
(where the latter keeps a frozen copy of the model) and LoRA (where it disables the adapter). Time is the whole
``train`` call (loading, reference pass, the epoch, saving); peak RSS is the process's maximum resident set.
Results go to <out>/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = [  # (name, lora, precompute)
    ("full, precomputed", False, True),
    ("full, every step", False, False),
    ("LoRA, precomputed", True, True),
    ("LoRA, every step", True, False),
]


def log_conversations(out: Path, tasks: int) -> None:
    from turnrl.stages.score import ScoreConfig, score
    from turnrl.stages.simulate import RolloutOptions, SimulateConfig, simulate
    from turnrl.tasks import DatasetConfig

    if (out / "scored" / "trajectories.jsonl").exists():
        return
    simulate(SimulateConfig(run_dir=str(out), dataset=DatasetConfig(name="sciq", n_train=tasks, n_test=10),
                            rollout=RolloutOptions(samples=3)))
    score(ScoreConfig(run_dir=str(out)))


def child(out: Path, name: str, lora: bool, precompute: bool) -> None:
    from turnrl.algorithms.config import AlgoConfig
    from turnrl.algorithms.preference import PreferenceParams
    from turnrl.records import read_json
    from turnrl.train import train
    from turnrl.train.config import OptimConfig

    algo = AlgoConfig(name="m-dpo", preference=PreferenceParams(pairing="best-vs-worst",
                                                                 precompute_reference=precompute))
    optim = OptimConfig(lora=lora, learning_rate=5e-6, epochs=1.0, batch_size=8, warmup_ratio=0.0)
    folder = "train/bench-" + name.replace(", ", "-").replace(" ", "-")
    start = time.perf_counter()
    checkpoint = train(str(out), "", algo, optim, overwrite=True, output=folder)
    seconds = time.perf_counter() - start
    info = read_json(checkpoint / "turnrl_train.json")
    print("RESULT " + json.dumps({
        "variant": name, "seconds": round(seconds, 1), "loop_seconds": round(info["summary"]["seconds"], 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pairs": info["diagnostics"]["pairs"], "steps": info["summary"]["steps"],
        "first_loss": info["summary"]["first_loss"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-mdpo-reference")
    parser.add_argument("--tasks", type=int, default=12, help="questions logged (x 3 conversations each)")
    parser.add_argument("--lora", choices=["both", "full", "lora"], default="both")
    parser.add_argument("--child", nargs=3, metavar=("NAME", "LORA", "PRECOMPUTE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.child:
        name, lora, precompute = args.child
        child(out, name, lora == "1", precompute == "1")
        return
    log_conversations(out, args.tasks)
    results = []
    for name, lora, precompute in VARIANTS:
        if args.lora != "both" and lora != (args.lora == "lora"):
            continue
        proc = subprocess.run([sys.executable, __file__, "--out", str(out), "--child", name, str(int(lora)),
                               str(int(precompute))], capture_output=True, text=True, env=os.environ)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{name}: failed\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(results[-1], flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| variant | pairs | steps | time (s) | of which the epoch (s) | peak RSS (MB) | first loss |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['pairs']} | {r['steps']} | {r['seconds']} | {r['loop_seconds']} | "
              f"{r['peak_rss_mb']} | {r['first_loss']:.4f} |")


if __name__ == "__main__":
    main()
