"""``algo``: which algorithm trains, and every algorithm's parameters, each in its own section.

    algo:
      name: swift
      swift: {floor: 0.0}          # read by swift only
      preference: {beta: 0.1}      # read by dpo, step-dpo, m-dpo and m-kto
      m_kto: {lambda_d: 1.0}       # read by m-kto only

Flags mirror it (``--algo.swift.floor -1``). Each section is the parameters dataclass of the algorithm module it
comes from; a registry entry names the sections its algorithm reads (``Algorithm.sections``; a model card shows
just those). A run of several algorithms shares one ``algo``: a section configures only the algorithms that read
it, so no per-algorithm override is needed for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnrl.algorithms.dpo import DPOParams
from turnrl.algorithms.drift import DriftParams
from turnrl.algorithms.m_kto import MKTOParams
from turnrl.algorithms.preference import PreferenceParams
from turnrl.algorithms.refit import RefitParams
from turnrl.algorithms.star_gate import StarGateParams
from turnrl.algorithms.star_gate_d import StarGateDParams
from turnrl.algorithms.step_dpo import StepDPOParams
from turnrl.algorithms.swift import SwiftParams


@dataclass
class AlgoConfig:
    """The algorithm that turns the scored log into training examples, and its parameters."""

    name: str = "refit"
    """sft, star-gate, refit, swift, drift, sft-final (weighted fine-tuning); dpo, step-dpo, m-dpo, m-kto
    (preference learning); star-gate-d (distillation); or one registered by an extension (--import)."""
    trained_turns: str = ""
    """Weighted fine-tuning: all: every assistant turn carries the weight (000); final: only the last one (DRIFT).
    Empty: the algorithm's own (final for drift and sft-final, all for the others)."""
    kl_coef: float = 0.0
    """Weighted fine-tuning: anchor to the logging policy by adding kl_coef to every weight
    (:mod:`turnrl.algorithms.weighted`)."""
    star_gate: StarGateParams = field(default_factory=StarGateParams)
    refit: RefitParams = field(default_factory=RefitParams)
    swift: SwiftParams = field(default_factory=SwiftParams)
    drift: DriftParams = field(default_factory=DriftParams)
    preference: PreferenceParams = field(default_factory=PreferenceParams)
    dpo: DPOParams = field(default_factory=DPOParams)
    step_dpo: StepDPOParams = field(default_factory=StepDPOParams)
    m_kto: MKTOParams = field(default_factory=MKTOParams)
    star_gate_d: StarGateDParams = field(default_factory=StarGateDParams)
    extra: dict[str, Any] = field(default_factory=dict)
    """Parameters of algorithms registered by extensions."""


RENAMED = {"turns": "trained_turns", "top_k": "star_gate.top_k", "min_reward": "star_gate.min_reward",
           "shift_negative": "refit.shift_negative", "negative_floor": "swift.floor", "drift_beta": "drift.beta",
           "dpo_beta": "preference.beta", "pairing": "preference.pairing",
           "pairs_per_group": "preference.pairs_per_group", "mask_observations": "preference.mask_observations",
           "reference": "preference.ref_policy", "precompute_reference": "preference.precompute_reference",
           "dpo_context": "dpo.context", "branches": "step_dpo.branches", "kto_lambda_d": "m_kto.lambda_d",
           "kto_lambda_u": "m_kto.lambda_u", "teacher": "star_gate_d.teacher", "distill_alpha": "star_gate_d.alpha",
           "distill_temperature": "star_gate_d.temperature"}
"""Options of ``algo`` before each algorithm had its own section: old name -> new (dotted) name."""
RENAME_NOTES = {"negative_floor": "the floor is Swift's own parameter; swift-literal keeps its negative weights"}


def renamed_message(old: str, prefix: str = "") -> str:
    """How an old ``algo`` option is told its new name."""
    note = f" ({RENAME_NOTES[old]})" if old in RENAME_NOTES else ""
    return f"option '{prefix}{old}' is now '{prefix}{RENAMED[old]}'{note}"
