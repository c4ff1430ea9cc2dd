"""The algorithms: each turns the scored log into training data, and registers itself (:mod:`.registry`).

Importing this package registers the built-in ones, in table order: the weighted fine-tuning family
(:mod:`.weighted`, :mod:`.drift`), STaR-GATE-D (:mod:`.distillation`), the preference family (:mod:`.preference`).
"""

from turnrl.algorithms.registry import Algorithm, algorithms, get_algorithm, register_algorithm

from turnrl.algorithms import weighted, drift, distillation, preference  # noqa: E402,F401  (they register)

__all__ = ["Algorithm", "algorithms", "get_algorithm", "register_algorithm"]
