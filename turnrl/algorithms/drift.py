"""DRIFT's return-based importance weights (004 eq. 13, Algorithm 1).

For each prompt x_1 the logging policy pi_ref samples K conversations tau^(1..K) in the feedback environment
(:mod:`turnrl.envs.feedback`; 004: K = 16 at temperature 1.0), each with return R_k (eq. 12,
:mod:`turnrl.rewards.drift_return`, the ``drift_return`` reward component). Its weight is

    w_k = exp(R_k / beta) / Z_hat(x_1),     Z_hat(x_1) = (1/K) * sum_j exp(R_j / beta)          (eq. 13)

i.e. K * softmax_k(R / beta): the self-normalised estimate of the optimal tilted distribution's density ratio
p*(tau|x) / p_ref(tau|x) = exp(R / beta) / Z(x) of Thm. 1 and 5. The weights of a group average to 1 and are at
most K; a group whose returns are all equal (e.g. all conversations fail the same way) gets weight 1 everywhere,
which the paper keeps (Table 8). They are computed through log-sum-exp, so returns of any size cannot overflow:

    log w_k = R_k / beta - logsumexp_j(R_j / beta) + log K.

The loss (eq. 14-15) is the weighted NLL of each conversation's final assistant turn given its whole history,
``algo.trained_turns: final`` in the weighted trainer (:mod:`turnrl.train.weighted`, which sums a turn's token
log-probs as eq. 15 does; ``optim.normalization: mean`` is closer to the released code's per-token mean);
``algo.trained_turns: all`` puts the weight on every assistant turn instead (004's ablation, Fig. 3). SFT-5turn
(004's baseline) is the same data with every weight 1: ``algo: sft-final``.

Diagnostics for the report: the effective sample size (sum w)^2 / sum w^2 of each group (K for uniform weights,
1 when one conversation takes all the weight), and how many groups are all-fail, all-success or mixed (004
Table 8: only mixed groups tell successes from failures through their outcome).

Evaluation (004 eq. 21): ``turnrl evaluate`` records multi@k for feedback conversations; the curves and their plot
are in the reporting layer (:func:`turnrl.stages.compare.multi_at_k_curves`, :func:`turnrl.stages.compare.plot_multi_at_k`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from dataclasses import dataclass
from typing import TYPE_CHECKING

from turnrl.algorithms.registry import register_algorithm
from turnrl.algorithms.weighted import groups_of
from turnrl.errors import ConfigError
from turnrl.records import Trajectory
from turnrl.stats import effective_sample_size

if TYPE_CHECKING:
    from turnrl.algorithms.config import AlgoConfig


@dataclass
class DriftParams:
    """drift: the importance weights' temperature."""

    beta: float = 0.1
    """beta of eq. 13 (004: 0.1; its released code 0.2): lower puts more weight on the highest returns."""


def group_weights(returns: list[float], beta: float) -> np.ndarray:
    """w_k = exp(R_k / beta) / ((1/K) sum_j exp(R_j / beta)) for one prompt's K returns (eq. 13), stably."""
    z = np.asarray(returns, dtype=float) / beta
    return np.exp(z - logsumexp(z) + np.log(len(z)))


@register_algorithm("drift", family="weighted", display="DRIFT", paper="004 eq. 13", turns="final",
                    sections=("drift",))
def drift_weights(trajectories: list[Trajectory], cfg: AlgoConfig, diag: dict) -> list[float]:
    beta = cfg.drift.beta
    if not beta > 0:
        raise ConfigError(f"algo.drift.beta: {beta}; the temperature of the weights must be > 0")
    for t in trajectories:
        if "drift_return" not in t.rewards:
            raise ConfigError(
                f"trajectory {t.id} has no drift_return reward component; DRIFT trains on conversations of the "
                "feedback environment (env.name: feedback) scored by `turnrl score`")
    weights: dict[str, float] = {}
    group_ess: dict[str, float] = {}
    outcomes = {"all_fail": 0, "all_success": 0, "mixed": 0}
    sizes: dict[int, int] = {}
    for group_id, group in groups_of(trajectories).items():
        w = group_weights([float(t.rewards["drift_return"]) for t in group], beta)
        weights.update({t.id: float(x) for t, x in zip(group, w)})
        group_ess[group_id] = round(effective_sample_size(list(w)), 4)
        solved = [bool(t.rewards.get("accuracy")) for t in group]
        outcomes["all_success" if all(solved) else "mixed" if any(solved) else "all_fail"] += 1
        sizes[len(group)] = sizes.get(len(group), 0) + 1
    n_groups = len(group_ess)
    ess = np.array(list(group_ess.values()))
    diag.update({
        "group_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "groups_all_fail": outcomes["all_fail"],
        "groups_all_success": outcomes["all_success"],
        "groups_mixed": outcomes["mixed"],
        "share_all_fail": outcomes["all_fail"] / n_groups if n_groups else 0.0,
        "group_ess_mean": float(ess.mean()) if n_groups else 0.0,
        "group_ess_median": float(np.median(ess)) if n_groups else 0.0,
        "group_ess_min": float(ess.min()) if n_groups else 0.0,
        "group_ess": group_ess,
        "return_mean": float(np.mean([t.rewards["drift_return"] for t in trajectories])),
        "success_share": float(np.mean([bool(t.rewards.get("accuracy")) for t in trajectories])),
    })
    return [weights[t.id] for t in trajectories]
