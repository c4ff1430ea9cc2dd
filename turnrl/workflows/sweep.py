"""``turnrl sweep``: choose each algorithm's learning rate and epochs on the validation split, then (with
``--split test`` only) evaluate the chosen policies once on the test split.

simulate -> score (as ``turnrl run``) -> Base on the validation split -> for each algorithm and learning rate, one
training run that saves the policy after each epoch in the grid -> each saved policy on the validation split ->
the best per algorithm (validation accuracy; ties go to less training: fewer epochs, then the lower rate) ->
Base and the chosen policies on the test split -> the comparison table and report, as ``turnrl run`` writes them.

The test split is touched only by the final evaluations, so the numbers it gives are held out from every choice.
Writes ``sweep/results.csv`` (one row per grid point), ``sweep/chosen.json`` (the settings picked) and
``sweep/validation.png`` (validation accuracy against the learning rate, a line per epoch count).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from turnrl import stats
from turnrl.errors import ConfigError, has_extra
from turnrl.workflows.pipeline import RunConfig, algorithm_settings, check_per_algorithm, evaluate_policy, \
    log_stages, timed_stage
from turnrl.records import atomic_write_text, write_json
from turnrl.tasks import prepare_split
from turnrl.log import get_logger
from turnrl.layout import RunDir, sweep_folder

logger = get_logger(__name__)


@dataclass
class SweepOptions:
    """The validation grid."""

    learning_rates: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4, 2e-4])
    epochs: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Epoch counts; one training run per learning rate saves the policy after each of them."""


@dataclass
class SweepConfig(RunConfig):
    """A ``turnrl run`` experiment whose algorithms' learning rate and epochs are chosen on the validation split."""

    sweep: SweepOptions = field(default_factory=SweepOptions)


def grid_label(name: str, lr: float, epochs: int) -> str:
    return f"{name}@lr{lr:g}-ep{epochs}"


def choose(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per algorithm, the grid point with the highest validation accuracy; ties: fewer epochs, then lower rate."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = (-row["val_accuracy"], row["epochs"], row["learning_rate"])
        held = best.get(row["algorithm"])
        if held is None or key < (-held["val_accuracy"], held["epochs"], held["learning_rate"]):
            best[row["algorithm"]] = row
    return best


def plot_validation(rows: list[dict[str, Any]], base_accuracy: float, path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["algorithm"] for r in rows))
    fig = Figure(figsize=(3.2 * len(names), 3.0), layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names):
        mine = [r for r in rows if r["algorithm"] == name]
        for epochs in sorted({r["epochs"] for r in mine}):
            pts = sorted((r["learning_rate"], r["val_accuracy"], r["val_se"]) for r in mine if r["epochs"] == epochs)
            ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts],
                        marker="o", capsize=2, label=f"{epochs} epoch{'s' if epochs > 1 else ''}")
        ax.axhline(100 * base_accuracy, color="grey", linestyle="--", label="Base")
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("learning rate")
    axes[0].set_ylabel("validation accuracy %")
    axes[-1].legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _accuracy(metrics: dict[str, Any]) -> tuple[float, float, int]:
    acc = metrics["metrics"]["accuracy"]
    return acc["mean"], acc["se"], acc["n"]


def sweep(cfg: SweepConfig) -> dict[str, Any]:
    from turnrl.train import train

    if cfg.dataset.n_val < 1:
        raise ConfigError("dataset.n_val: 0; a sweep chooses on the validation split, so give it questions "
                          "(e.g. --dataset.n_val 100, carved from the training pool)")
    if not cfg.sweep.learning_rates or not cfg.sweep.epochs or min(cfg.sweep.epochs) < 1:
        raise ConfigError("sweep: learning_rates and epochs must be non-empty, epochs at least 1")
    check_per_algorithm(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(RunDir(run_dir).config, asdict(cfg))
    prepare_split(cfg.dataset, run_dir)
    timings: dict[str, float] = {}
    log_stages(cfg, timings)
    base_val = timed_stage(timings, "validate base", evaluate_policy, cfg, "base", cfg.model, "val")
    epochs = sorted(set(cfg.sweep.epochs))
    logger.info(f"sweep: grid {cfg.algorithms} x learning rate {cfg.sweep.learning_rates} x epochs {epochs}, chosen on "
                f"{cfg.dataset.n_val} validation questions")
    rows: list[dict[str, Any]] = []
    for name in cfg.algorithms:
        algo, optim = algorithm_settings(cfg, name)
        for lr in cfg.sweep.learning_rates:
            grid_optim = replace(optim, learning_rate=lr, epochs=epochs[-1], snapshot_epochs=epochs[:-1])
            checkpoint = timed_stage(timings, f"train {name} lr {lr:g}", train, cfg.run_dir, cfg.model, algo,
                                     grid_optim, False, "", sweep_folder(name, lr))
            for e in epochs:
                policy = checkpoint if e == epochs[-1] else checkpoint.parent / f"epoch{e}"
                result = timed_stage(timings, f"validate {grid_label(name, lr, e)}", evaluate_policy, cfg,
                                     grid_label(name, lr, e), str(policy), "val")
                mean, se, n = _accuracy(result)
                rows.append({"algorithm": name, "learning_rate": lr, "epochs": e, "val_accuracy": mean,
                             "val_se": se, "n": n, "policy": str(policy)})
    write_results_csv(rows, RunDir(run_dir).sweep_results)
    base_mean = _accuracy(base_val)[0]
    if has_extra("plots"):
        plot_validation(rows, base_mean, RunDir(run_dir).sweep_plot)
    chosen = choose(rows)
    write_json(RunDir(run_dir).sweep_choice, {"base_val_accuracy": base_mean, "chosen": chosen})
    for name, row in chosen.items():
        accuracy = stats.Estimate(row['val_accuracy'], row['val_se'], row['n']).fmt(100)
        logger.info(f"sweep: {name} chose lr {row['learning_rate']:g}, {row['epochs']} epoch(s): validation accuracy "
                    f"{accuracy} % (Base {100 * base_mean:.1f})")
    if cfg.split != "test":
        write_json(RunDir(run_dir).timings, timings)
        logger.info("sweep: the test pool was not evaluated (final numbers: rerun with --split test)")
        return {"table": "", "chosen": chosen, "timings": timings, "report": None}
    # The test split, once: Base and each algorithm's chosen policy.
    if cfg.evaluate_base:
        timed_stage(timings, "evaluate base", evaluate_policy, cfg, "base", cfg.model, "test")
    for name in cfg.algorithms:
        timed_stage(timings, f"evaluate {name}", evaluate_policy, cfg, name, chosen[name]["policy"], "test")
    from turnrl.stages.compare import CompareConfig, compare_run

    methods = (["base"] if cfg.evaluate_base else []) + list(cfg.algorithms)
    write_json(RunDir(run_dir).timings, timings)
    comparison, report = timed_stage(timings, "compare", compare_run,
                                     CompareConfig(run_dir=cfg.run_dir, methods=methods))
    write_json(RunDir(run_dir).timings, timings)
    logger.info(f"report: {report}")
    return {"table": comparison.markdown, "chosen": chosen, "timings": timings, "report": report}


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["algorithm", "learning_rate", "epochs", "val_accuracy", "val_se", "n",
                                             "policy"])
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())

