"""turnrl's messages: Python ``logging`` under the ``turnrl`` logger, shown on the console above any progress bar.

As transformers does for its own, the library gives its root logger one console handler: information on stdout,
warnings and errors on stderr, written through ``tqdm.write`` so that a progress bar is not broken, flushed at
once so that a log file follows a long run. ``TURNRL_VERBOSITY`` (debug, info, warning, error; default info) sets
the level. An application with its own logging setup can take the console away and let the records propagate::

    logging.getLogger("turnrl").handlers.clear(); logging.getLogger("turnrl").propagate = True

What a command produces as its answer (a results table) is printed, not logged.
"""

from __future__ import annotations

import logging
import os
import sys


class _Console(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout  # looked up at each message
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 -- logging's own policy: report on stderr, never raise
            self.handleError(record)


def get_logger(name: str) -> logging.Logger:
    """The logger of a turnrl module; the first call gives the ``turnrl`` logger its console."""
    root = logging.getLogger("turnrl")
    if not any(isinstance(h, _Console) for h in root.handlers):
        console = _Console()
        console.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(console)
        root.setLevel(os.environ.get("TURNRL_VERBOSITY", "info").upper())
        root.propagate = False
    return logging.getLogger(name)
