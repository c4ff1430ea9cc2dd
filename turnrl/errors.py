"""Errors a user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class TurnrlError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class InputError(TurnrlError):
    """A file, field or value the user supplied is missing or malformed; the message names it."""


class ConfigError(TurnrlError):
    """A configuration value is unknown or out of range; the message names the key."""


class NothingToLearn(ConfigError):
    """The log gives an algorithm nothing to train on (every weight 0, no pair, nothing selected). A run of several
    algorithms skips that one and goes on; ``turnrl train`` stops with the message."""


class TrainingDiverged(TurnrlError):
    """The loss or the gradient became NaN or infinite; training stops before the weights are written."""


EXTRAS = {"serve": ("fastapi", "uvicorn"), "plots": ("matplotlib",), "gguf": ("gguf",)}
"""The optional parts of turnrl and the packages each needs (pyproject's optional dependencies)."""


def has_extra(extra: str) -> bool:
    """Whether every package of an optional part is installed."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in EXTRAS[extra])


def require_extra(extra: str, what: str) -> None:
    """Stop with the command that installs an optional part, where it is missing."""
    if not has_extra(extra):
        raise ConfigError(f"{what} needs turnrl's optional '{extra}' packages ({', '.join(EXTRAS[extra])}): "
                          f"pip install 'turnrl[{extra}]'")
