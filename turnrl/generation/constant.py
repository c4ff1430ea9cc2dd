"""A reference policy that says the same thing every turn: ``always-a`` answers "The answer is A." to everything.

It is the degenerate policy every multiple-choice table is checked against. With the options shown in an order
drawn per conversation (``env.shuffle_options``), a constant letter is right on 1/k of k-option questions in
expectation, whatever the dataset's gold letters; a row far from 1/k means the order still carries reward.
"""

from __future__ import annotations

import hashlib
import re

from turnrl.errors import ConfigError
from turnrl.generation.base import BackendConfig, GenRequest, GenResult

_ALWAYS = re.compile(r"always-([a-j])", re.IGNORECASE)


def constant_reply(model: str) -> str:
    """``always-x`` -> "The answer is X."; any other name is the reply itself."""
    m = _ALWAYS.fullmatch(model.strip())
    if m:
        return f"The answer is {m.group(1).upper()}."
    if not model.strip():
        raise ConfigError("policy.model: the constant backend needs a reply (e.g. always-a, or the text to say)")
    return model


class ConstantGenerator:
    name = "constant"

    def __init__(self, cfg: BackendConfig):
        self.reply = constant_reply(cfg.model)
        self.revision = hashlib.sha256(self.reply.encode()).hexdigest()[:12]

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]:
        return [GenResult(text=self.reply, tokens=len(self.reply.split()), finish="stop") for _ in requests]
