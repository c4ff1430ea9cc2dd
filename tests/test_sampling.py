"""The hf backend's sampler draws from exactly the temperature/top-k/top-p distribution, whichever path it takes
(the top-ranked prefix or the full sort), with one generator per row."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from turnrl.generation.base import Sampling
from turnrl.generation.hf import PREFIX_WIDTHS, sample_rows


def expected_distribution(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The kept set computed independently: sort everything, keep the top_k best and every token whose better-
    ranked tokens hold at most top_p of the probability, renormalise."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.cumsum(p[order]) - p[order]
    keep = (before <= top_p) & (np.arange(len(p)) < (top_k or len(p)))
    q = np.zeros_like(p)
    q[order[keep]] = p[order[keep]]
    return q / q.sum()


def draw(logits: np.ndarray, sampling: Sampling, n: int) -> np.ndarray:
    """n samples, one per row, each row with its own seed."""
    scores = torch.tensor(logits, dtype=torch.float32).expand(n, -1)
    samplings = [Sampling(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=s)
                 for s in range(n)]
    generators = [torch.Generator().manual_seed(s.seed) for s in samplings]
    return sample_rows(scores, samplings, generators).numpy()


rng = np.random.default_rng(0)
VOCAB = 2 * PREFIX_WIDTHS[-1]
PEAKED = rng.normal(size=VOCAB) * 8.0  # the kept set lies among the first prefix's tokens
MEDIUM = rng.normal(size=VOCAB) * 3.0  # ... past the first prefix, within the second
FLAT = rng.normal(size=VOCAB) * 0.3  # ... past every prefix: the full sort


@pytest.mark.parametrize("logits,sampling,kept_within", [
    (PEAKED, Sampling(temperature=1.0, top_p=0.9), (1, PREFIX_WIDTHS[0])),
    (PEAKED, Sampling(temperature=0.6, top_p=0.95), (1, PREFIX_WIDTHS[0])),
    (MEDIUM, Sampling(temperature=1.0, top_p=0.95), (PREFIX_WIDTHS[0], PREFIX_WIDTHS[1])),
    (FLAT, Sampling(temperature=1.0, top_p=0.95), (PREFIX_WIDTHS[1], VOCAB)),
    (FLAT, Sampling(temperature=1.0, top_k=5), (5, 5)),
    (FLAT, Sampling(temperature=0.8, top_k=2 * PREFIX_WIDTHS[0], top_p=0.99), (PREFIX_WIDTHS[0], PREFIX_WIDTHS[1])),
    (MEDIUM, Sampling(temperature=1.0), (VOCAB, VOCAB)),  # unfiltered
], ids=["peaked-top_p", "peaked-cold", "medium-top_p", "flat-top_p", "top_k", "top_k-past-prefix", "unfiltered"])
def test_samples_follow_the_filtered_distribution(logits, sampling, kept_within):
    n = 20_000
    q = expected_distribution(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    assert kept_within[0] <= np.count_nonzero(q) <= kept_within[1]  # the case exercises the path it is meant to
    tokens = draw(logits, sampling, n)
    assert set(np.unique(tokens)) <= set(np.flatnonzero(q)), "a token outside the kept set was drawn"
    support = np.flatnonzero(q)
    counts = np.bincount(tokens, minlength=len(q))[support]
    # Tokens expected fewer than 5 times are pooled into one bin (the chi-square approximation's rule of thumb).
    expected, observed = n * q[support], counts
    rare = expected < 5
    if rare.any():
        expected = np.append(expected[~rare], expected[rare].sum())
        observed = np.append(observed[~rare], observed[rare].sum())
    assert chisquare(observed, expected).pvalue > 1e-3


def test_greedy_rows_take_the_argmax_and_rows_keep_their_own_seed():
    logits = torch.tensor(np.stack([PEAKED, FLAT, FLAT]), dtype=torch.float32)
    hot = Sampling(temperature=1.0, top_p=0.95, seed=7)
    samplings = [Sampling(temperature=0.0), hot, hot]
    generators = [None, torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)]
    tokens = sample_rows(logits, samplings, generators)
    assert tokens[0] == int(np.argmax(PEAKED))
    assert tokens[1] == tokens[2]  # same logits, same seed
    alone = sample_rows(logits[1:2], [hot], [torch.Generator().manual_seed(7)])
    assert alone[0] == tokens[1]  # the batch around a row does not change its draw
