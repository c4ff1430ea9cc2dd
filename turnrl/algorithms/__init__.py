"""The algorithms: each turns the scored log into training data, and registers itself (:mod:`.registry`).

One module per algorithm, its parameters a small dataclass beside its math (the sections of
:class:`.config.AlgoConfig`). Importing this package registers the built-in ones, in table order: the weighted
fine-tuning family (:mod:`.weighted`: :mod:`.sft`, :mod:`.star_gate`, :mod:`.refit`, :mod:`.swift`, :mod:`.drift`),
STaR-GATE-D (:mod:`.star_gate_d`), the preference family (:mod:`.preference`: :mod:`.dpo`, :mod:`.step_dpo`,
:mod:`.m_dpo`, :mod:`.m_kto`).
"""

from turnrl.algorithms.registry import Algorithm, algorithms, get_algorithm, register_algorithm

from turnrl.algorithms import sft, star_gate, refit, swift, drift  # noqa: E402,F401  (they register)
from turnrl.algorithms import star_gate_d, dpo, step_dpo, m_dpo, m_kto  # noqa: E402,F401
from turnrl.algorithms.config import AlgoConfig  # noqa: E402

__all__ = ["AlgoConfig", "Algorithm", "algorithms", "get_algorithm", "register_algorithm"]
