"""turnrl: offline reinforcement learning of multi-turn LLM conversation policies.

The command line (``turnrl --help``) runs the stages; the Python API (:mod:`turnrl.api`, docs/api.md) exposes the
trainers: ``from turnrl import RefitTrainer, TrainerArgs``.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("turnrl")
except _metadata.PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0+unknown"

_API = ("DPOTrainer", "DriftTrainer", "MDPOTrainer", "MKTOTrainer", "RefitTrainer", "SFTTrainer", "StarGateTrainer",
        "SwiftTrainer", "Trainer", "TrainerArgs", "TrainerCallback")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # The trainers load on first use, so that `import turnrl` (and the command line) stays light.
    if name in _API:
        from turnrl import api

        return getattr(api, name)
    raise AttributeError(f"module 'turnrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
