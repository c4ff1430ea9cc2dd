"""Means, standard errors and paired comparisons, defined once (docs/design.md section 9).

- A proportion from one run per question: binomial SE, sqrt(p (1 - p) / n).
- Any other mean (scores, rates averaged over several runs per question): sample std (ddof 1) / sqrt(n), with
  n the number of questions (runs of one question are averaged first, so they are not counted as independent).
- A difference between two methods on the same questions: the paired difference of per-question values, with a
  percentile bootstrap interval over questions (fixed seed) and the counts of questions won and lost.
- A difference between two independent groups (different items): SE sqrt(se_a^2 + se_b^2)
  (:func:`se_of_difference`) and a percentile bootstrap resampling each group apart (:func:`two_sample_bootstrap`).
- A proportion's 95 % interval: Wilson's score interval (:func:`wilson`; scipy's), which stays inside [0, 1]
  and is not empty at 0/n or n/n, where the binomial SE is 0.
- Over several seeds (each a fresh log, training and evaluation on the same questions): a two-level percentile
  bootstrap, seeds resampled and then questions within each seed (:func:`seeds_bootstrap`), so an interval holds
  the variation between seeds as well as between questions.
- Two raters (judges) of the same items: Spearman's rho, Kendall's tau-b and quadratic-weighted kappa, each with a
  percentile bootstrap interval over items (:func:`rater_agreement`).
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


def se_of_difference(se_a: float, se_b: float) -> float:
    """The standard error of the difference of two independent means, sqrt(se_a^2 + se_b^2)."""
    return math.sqrt(se_a ** 2 + se_b ** 2)


def two_sample_bootstrap(values: list[float], first: list[int], second: list[int], n_boot: int, seed: int
                         ) -> tuple[float, float]:
    """Percentile 95 % interval of mean(values[first]) - mean(values[second]) for two independent groups (indices
    into ``values``), each resampled apart; nan where a group has fewer than two values."""
    if n_boot <= 0 or len(first) < 2 or len(second) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    a, b = np.asarray(values)[first], np.asarray(values)[second]
    gaps = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1) - b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    low, high = np.quantile(gaps, [0.025, 0.975])
    return float(low), float(high)


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


# ------------------------------------------------------------------------------------- agreement of two raters


@dataclass
class Interval:
    """A statistic and its percentile bootstrap interval (NaN bounds without a bootstrap)."""

    value: float
    low: float
    high: float

    def fmt(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RaterAgreement:
    """How two raters (two judges) agree on the same items (conversations) scored on one scale."""

    spearman: Interval
    kendall: Interval
    """Kendall's tau-b (ties in either rater corrected for)."""
    kappa: Interval
    """Cohen's kappa with quadratic weights on the scale's own values."""
    mean_abs_diff: float
    mean_diff: float
    """Mean of (second - first): how much more generous the second rater is."""
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


AGREEMENT_BLOCK = 256
"""Bootstrap resamples drawn at a time (the stream of draws, hence the intervals, does not depend on memory)."""


def _agreement_stats(counts: np.ndarray, va: np.ndarray, vb: np.ndarray) -> dict[str, np.ndarray]:
    """Spearman, Kendall tau-b and quadratic-weighted kappa of each contingency table in ``counts`` (B, Ka, Kb):
    counts[:, i, j] = items the first rater scored va[i] and the second vb[j] (va, vb ascending). NaN where a
    statistic is undefined (a rater with a single value; kappa when no disagreement is expected)."""
    n = counts.sum(axis=(1, 2))
    ra, rb = counts.sum(axis=2), counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Spearman: Pearson's r of the mid-ranks (ties share the mean of their ranks), weighted by the counts.
        mid_a = np.cumsum(ra, axis=1) - (ra - 1) / 2 - (n[:, None] + 1) / 2
        mid_b = np.cumsum(rb, axis=1) - (rb - 1) / 2 - (n[:, None] + 1) / 2
        cov = np.einsum("bij,bi,bj->b", counts, mid_a, mid_b)
        var_a, var_b = (ra * mid_a ** 2).sum(axis=1), (rb * mid_b ** 2).sum(axis=1)
        spearman = cov / np.sqrt(var_a * var_b)
        # Kendall tau-b: concordant pairs lie below-right of a cell, discordant ones below-left.
        tail = np.flip(np.cumsum(np.cumsum(np.flip(counts, (1, 2)), axis=1), axis=2), (1, 2))  # i' >= i, j' >= j
        tail = np.pad(tail, ((0, 0), (0, 1), (0, 1)))
        below = np.pad(np.flip(np.cumsum(np.flip(ra, 1), axis=1), 1), ((0, 0), (0, 1)))  # rows i' >= i
        concordant = (counts * tail[:, 1:, 1:]).sum(axis=(1, 2))
        discordant = (counts * (below[:, 1:, None] - tail[:, 1:, :-1])).sum(axis=(1, 2))
        pairs = n * (n - 1) / 2
        ties_a, ties_b = (ra * (ra - 1) / 2).sum(axis=1), (rb * (rb - 1) / 2).sum(axis=1)
        kendall = (concordant - discordant) / np.sqrt((pairs - ties_a) * (pairs - ties_b))
        # Quadratic-weighted kappa: 1 - observed / expected mean squared difference (expected: independent raters
        # with the same marginals).
        sq = (va[:, None] - vb[None, :]) ** 2
        observed = (counts * sq).sum(axis=(1, 2)) / n
        expected = np.einsum("bi,bj,ij->b", ra, rb, sq) / n ** 2
        kappa = np.where(expected > 0, 1 - observed / expected, np.nan)
    return {"spearman": spearman, "kendall": kendall, "kappa": kappa}


def rater_agreement(a: list[float], b: list[float], n_boot: int = 10_000, seed: int = 0,
                    level: float = 0.95) -> RaterAgreement:
    """Agreement of two raters' scores of the same items: Spearman's rho, Kendall's tau-b and Cohen's kappa with
    quadratic weights, each with a percentile bootstrap interval over items (``n_boot`` resamples, fixed seed;
    none with ``n_boot`` = 0), and the mean absolute and signed differences.

    Kappa's weights are the squared differences of the scores themselves, so that on a 0-10 scale a 7.5 lies
    between 7 and 8: kappa = 1 - mean((a - b)^2) / mean over all (i, j) of (a_i - b_j)^2. For integer scores
    this is Cohen's quadratic-weighted kappa over the categories min..max (sklearn's
    ``cohen_kappa_score(a, b, labels=range(lo, hi + 1), weights="quadratic")``). A statistic is NaN where it is
    undefined (a rater who gave every item the same score; fewer than 2 items), and resamples where it is
    undefined are left out of its interval."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired scores need the same items: {x.shape} vs {y.shape}")
    n = len(x)
    nan = Interval(math.nan, math.nan, math.nan)
    if n == 0:
        return RaterAgreement(nan, nan, nan, math.nan, math.nan, 0)
    va, ca = np.unique(x, return_inverse=True)
    vb, cb = np.unique(y, return_inverse=True)
    size = len(va) * len(vb)
    cell = ca * len(vb) + cb

    def tables(index: np.ndarray) -> np.ndarray:
        rows = index.shape[0]
        flat = (np.arange(rows)[:, None] * size + cell[index]).ravel()
        return np.bincount(flat, minlength=rows * size).reshape(rows, len(va), len(vb)).astype(float)

    point = {k: float(v[0]) for k, v in _agreement_stats(tables(np.arange(n)[None, :]), va, vb).items()}
    boots: dict[str, list[np.ndarray]] = {k: [] for k in point}
    if n_boot > 0 and n >= 2:
        rng = np.random.default_rng(seed)
        per_step = max(1, min(AGREEMENT_BLOCK, 4_000_000 // size))  # bounds memory for many distinct scores
        for start in range(0, n_boot, AGREEMENT_BLOCK):
            index = rng.integers(0, n, size=(min(AGREEMENT_BLOCK, n_boot - start), n))
            for s in range(0, index.shape[0], per_step):
                for k, v in _agreement_stats(tables(index[s: s + per_step]), va, vb).items():
                    boots[k].append(v)
    alpha = (1 - level) / 2

    def interval(key: str) -> Interval:
        values = np.concatenate(boots[key]) if boots[key] else np.array([])
        values = values[~np.isnan(values)]
        if math.isnan(point[key]) or not len(values):
            return Interval(point[key], math.nan, math.nan)
        low, high = np.quantile(values, [alpha, 1 - alpha])
        return Interval(point[key], float(low), float(high))

    return RaterAgreement(interval("spearman"), interval("kendall"), interval("kappa"),
                          float(np.abs(x - y).mean()), float((y - x).mean()), n)


# ---------------------------------------------------------------------------------------- intervals, seeds


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval for a proportion of ``successes`` in ``n`` (NaNs for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(round(successes)), n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class SeedsEstimate:
    """A mean over seeds of per-seed means over questions, with a two-level bootstrap interval."""

    mean: float
    low: float
    high: float
    per_seed: list[float]
    n_questions: int

    def to_dict(self) -> dict:
        return asdict(self)


def seeds_bootstrap(per_seed: list[list[float]], n_boot: int = 10_000, seed: int = 0,
                    level: float = 0.95) -> SeedsEstimate:
    """Mean over seeds of the per-question values of each seed (``per_seed[s]``: one value per question; for a
    paired difference, method minus reference on the same question). Each resample draws the seeds with
    replacement, then within each drawn seed its questions with replacement, and takes the mean of the seed means;
    the interval is the percentile interval of those means."""
    arrays = [np.asarray(v, dtype=float) for v in per_seed]
    if not arrays or any(len(a) == 0 for a in arrays):
        return SeedsEstimate(float("nan"), float("nan"), float("nan"), [], 0)
    means = [float(a.mean()) for a in arrays]
    rng = np.random.default_rng(seed)
    k = len(arrays)
    picks = rng.integers(0, k, size=(n_boot, k))
    boots = np.zeros(n_boot)
    for i in range(k):  # each slot of a resample: a drawn seed, its questions drawn afresh
        for j, a in enumerate(arrays):
            rows = picks[:, i] == j
            boots[rows] += a[rng.integers(0, len(a), size=(int(rows.sum()), len(a)))].mean(axis=1)
    boots /= k
    alpha = (1 - level) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return SeedsEstimate(float(np.mean(means)), float(low), float(high), means, max(len(a) for a in arrays))
