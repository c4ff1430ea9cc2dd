"""Means, standard errors and paired comparisons, defined once (docs/design.md section 9).

- A proportion from one run per question: binomial SE, sqrt(p (1 - p) / n).
- Any other mean (scores, rates averaged over several runs per question): sample std (ddof 1) / sqrt(n), with
  n the number of questions (runs of one question are averaged first, so they are not counted as independent).
- A difference between two methods on the same questions: the paired difference of per-question values, with a
  percentile bootstrap interval over questions (fixed seed) and the counts of questions won and lost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Estimate:
    mean: float
    se: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "n/a"
        return f"{self.mean * scale:.{digits}f} ± {self.se * scale:.{digits}f}"

    def to_dict(self) -> dict:
        return asdict(self)


def proportion(values: list[float] | list[bool]) -> Estimate:
    """Mean of 0/1 outcomes with its binomial standard error."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0)
    p = float(x.mean())
    return Estimate(p, math.sqrt(p * (1 - p) / n), n)


def mean(values: list[float]) -> Estimate:
    """Mean with standard error sample std (ddof 1) / sqrt(n); SE 0 for a single value."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0)
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return Estimate(float(x.mean()), se, n)


def effective_sample_size(weights: list[float]) -> float:
    """(sum |w|)^2 / sum w^2: how many equally weighted examples the weights are worth (0 for all-zero weights)."""
    w = np.abs(np.asarray(weights, dtype=float))
    return float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0


def estimate(values: list[float], binary: bool) -> Estimate:
    return proportion(values) if binary else mean(values)


@dataclass
class PairedDiff:
    diff: float
    low: float
    high: float
    se: float
    n: int
    won: int
    lost: int
    tied: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)


def paired_difference(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> PairedDiff:
    """mean(a - b) over the same questions, with a percentile bootstrap interval (resampling questions)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values need the same questions: {x.shape} vs {y.shape}")
    d = x - y
    n = len(d)
    if n == 0:
        return PairedDiff(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0, 0, 0)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return PairedDiff(float(d.mean()), float(low), float(high), se, n, int((d > 0).sum()), int((d < 0).sum()),
                      int((d == 0).sum()))
