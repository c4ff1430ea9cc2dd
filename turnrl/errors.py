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
