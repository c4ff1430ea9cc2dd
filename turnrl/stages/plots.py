"""The run's plots as PNG bytes (matplotlib's Agg renderer, no display needed); :mod:`turnrl.stages.report`
writes them to ``plots/`` and embeds them in ``report.html``."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from turnrl import stats

from turnrl.stages.comparison import AT_K, Comparison, display_name


BASE_COLOR = "#7f7f7f"


def method_colors(methods: list[str], compare_against: str = "base") -> dict[str, str]:
    """One color per method, the same in every plot; Base in grey."""
    from matplotlib import colormaps

    palette = [colormaps["tab10"](i) for i in range(10) if i != 7]  # tab10's grey is Base's
    others = [m for m in methods if m != compare_against]
    colors = {m: _hex(palette[i % len(palette)]) for i, m in enumerate(others)}
    colors[compare_against] = BASE_COLOR
    return colors


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(255 * v)):02x}" for v in rgba[:3])


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_accuracy(comparison: Comparison, colors: dict[str, str], compare_against: str = "base") -> bytes:
    c = comparison
    names = [c.results[m].name for m in c.methods]
    diffs = c.paired.get(compare_against, {})
    fig = _figure(10 if diffs else 6, 0.9 + 0.4 * len(c.methods))
    axes = fig.subplots(1, 2 if diffs else 1, sharey=True, squeeze=False)[0]
    y = np.arange(len(c.methods))[::-1]
    acc = [c.results[m].summary["accuracy"] for m in c.methods]
    axes[0].barh(y, [100 * e.mean for e in acc], xerr=[100 * e.se for e in acc], capsize=3,
                 color=[colors[m] for m in c.methods])
    for yi, e in zip(y, acc):
        axes[0].text(min(100 * (e.mean + e.se), 100) + 1, yi, f"{100 * e.mean:.1f}", va="center", fontsize=8)
    axes[0].set(yticks=y, yticklabels=names, xlabel="accuracy (%), ± SE", xlim=(0, 115))
    axes[0].set_title("Accuracy on the test questions", fontsize=10)
    if diffs:
        ax = axes[1]
        ax.axvline(0, color="black", lw=0.8)
        for yi, m in zip(y, c.methods):
            d = diffs.get(m, {}).get("accuracy")
            if d is None or d.n == 0:
                continue
            ax.errorbar([100 * d.diff], [yi], xerr=[[100 * (d.diff - d.low)], [100 * (d.high - d.diff)]],
                        fmt="o", color=colors[m], capsize=3)
        ax.set(xlabel="accuracy difference (points), 95% bootstrap interval")
        ax.set_title(f"Paired against {display_name(compare_against)} (same questions)", fontsize=10)
    return _png(fig)


def plot_rewards(logged: list[float], per_method: dict[str, list[float]], names: dict[str, str],
                 colors: dict[str, str]) -> bytes:
    """One histogram per source on shared bins; bar heights are shares so that sources of any size compare."""
    sources = ([("Logged data (train)", logged, "#444444")] if logged else []) + \
        [(f"{names[m]} (test)", v, colors[m]) for m, v in per_method.items() if v]
    values = np.concatenate([np.asarray(v, dtype=float) for _, v, _ in sources])
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 26)
    fig = _figure(7, 0.5 + 1.05 * len(sources))
    axes = fig.subplots(len(sources), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, v, color) in zip(axes, sources):
        v = np.asarray(v, dtype=float)
        ax.hist(v, bins=bins, weights=np.full(len(v), 1 / len(v)), color=color)
        ax.axvline(v.mean(), color="black", lw=1, ls="--")
        ax.text(0.99, 0.9, f"{label}: mean {v.mean():.3f}, n={len(v)}", transform=ax.transAxes, ha="right",
                va="top", fontsize=8)
        ax.set_ylabel("share", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].set_title("Reward distributions (dashed: mean)", fontsize=10)
    axes[-1].set_xlabel("reward")
    return _png(fig)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training(logs: dict[str, list[dict[str, Any]]], names: dict[str, str], colors: dict[str, str]) -> bytes:
    """Per algorithm: NLL per trained token (comparable from step to step, unlike the token-sum objective), the
    objective ("loss") and the gradient norm (before clipping) of each optimizer step."""
    from matplotlib.ticker import MaxNLocator

    panels = [k for k in ("nll_per_token", "loss", "grad_norm") if any(k in r for rows in logs.values() for r in rows)]
    fig = _figure(4.2 * len(panels), 0.6 + 1.9 * len(logs))
    axes = fig.subplots(len(logs), len(panels), squeeze=False)
    for row, (algo, records) in enumerate(logs.items()):
        for col, key in enumerate(panels):
            ax = axes[row][col]
            points = [(r.get("step", i + 1), r[key]) for i, r in enumerate(records)
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if not points:
                ax.set_axis_off()
                continue
            steps, values = (np.asarray(x, dtype=float) for x in zip(*points))
            window = max(1, len(values) // 20)
            ax.plot(steps, values, color=colors.get(algo, "black"), alpha=0.35 if window > 1 else 1.0, lw=1)
            if window > 1:
                ax.plot(steps[window - 1:], _moving_average(values, window), color=colors.get(algo, "black"), lw=1.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            label = {"nll_per_token": "NLL per token", "loss": "objective"}.get(key, key.replace("_", " "))
            ax.set_title(f"{names.get(algo, algo)}: {label}", fontsize=9)
            ax.tick_params(labelsize=8)
            if row == len(logs) - 1:
                ax.set_xlabel("optimizer step", fontsize=8)
    return _png(fig)


def plot_at_k(family: str, comparison: Comparison, colors: dict[str, str]) -> bytes:
    """Mean ± SE of ``family@k`` against k, one line per method."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    scale = 1.0
    for m in comparison.methods:
        summary = comparison.results[m].summary
        points = sorted((int(AT_K.match(k)["k"]), e) for k, e in summary.items()
                        if AT_K.match(k) and AT_K.match(k)["family"] == family and e.n)
        if not points:
            continue
        scale = 100 if all(0 <= e.mean <= 1 for _, e in points) else 1
        ks = [k for k, _ in points]
        ax.errorbar(ks, [scale * e.mean for _, e in points], yerr=[scale * e.se for _, e in points], marker="o",
                    capsize=3, color=colors[m], label=comparison.results[m].name)
        ax.set_xticks(ks)
    ax.set(xlabel="k (turns)", ylabel=f"{family}@k" + (" (%)" if scale == 100 else ""))
    ax.set_title(f"{family}@k: success within the first k turns, ± SE", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def recorded_ess(diag: dict[str, Any]) -> float:
    """The effective sample size as the trainer recorded it, else computed from the weights."""
    if isinstance(diag.get("ess"), (int, float)):
        return float(diag["ess"])
    return stats.effective_sample_size(diag["weights"])


def plot_weights(diagnostics: dict[str, dict[str, Any]], names: dict[str, str], colors: dict[str, str]) -> bytes:
    fig = _figure(4.2 * min(3, len(diagnostics)), 2.6 * math.ceil(len(diagnostics) / 3))
    axes = fig.subplots(math.ceil(len(diagnostics) / 3), min(3, len(diagnostics)), squeeze=False).ravel()
    for ax in axes[len(diagnostics):]:
        ax.set_axis_off()
    for ax, (algo, diag) in zip(axes, diagnostics.items()):
        w = np.asarray(diag["weights"], dtype=float)
        ax.hist(w, bins=30, color=colors.get(algo, "black"))
        ax.set_title(f"{names.get(algo, algo)}: ESS {recorded_ess(diag):.1f} of {len(w)}", fontsize=9)
        ax.set_xlabel("weight", fontsize=8)
        ax.set_ylabel("trajectories", fontsize=8)
        ax.tick_params(labelsize=8)
    return _png(fig)
