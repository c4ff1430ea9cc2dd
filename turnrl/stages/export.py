"""``turnrl export``: a scored log as the training files other libraries and APIs read (docs/import-export.md).

Formats, each one JSON object per line:

- ``sft``: TRL's conversational language-modelling format, ``{"messages": [...]}`` (and ``tools`` where the log
  has them), every trajectory or those with ``reward >= min_reward``.
- ``dpo``: TRL's conversational preference format, ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, from
  the pairs ``turnrl train`` builds for the same ``--algo`` (the preference builders of
  :mod:`turnrl.algorithms.preference`; dpo by default), so the file is the trainer's ``pairs.jsonl``. The prompt
  is the messages both sides share before an assistant message (never past the first one that carries the loss);
  chosen and rejected are the rest of each side's conversation. For dpo (000 Sec. 4) that is the system and
  first user turns, and each side's conversation from its first assistant message to its final one (with
  ``--algo.dpo.context question``, the final assistant message alone); for m-dpo likewise, observations included.
  TRL trains every completion token: for multi-turn sides that is 003's single-turn baseline, not M-DPO's
  masking, nor turnrl's DPO, which trains the final message only.
- ``kto``: TRL's conversational unpaired format, ``{"prompt": [...], "completion": [...], "label": bool}``: the
  examples of ``--algo m-kto`` (each M-DPO pair's chosen side desirable, its rejected side undesirable), or with
  ``kto_threshold`` every trajectory, desirable where its reward >= the threshold.
- ``openai``: OpenAI's fine-tuning chat format, ``{"messages": [...]}`` (and ``tools``), for fine-tuning APIs that
  take examples but no weights: 000 Sec. 3.2's randomized rounding. Trajectory i with reward r_i appears
  floor(s r_i) + B_i times, B_i ~ Bernoulli(s r_i - floor(s r_i)), so its expected count is s r_i and SFT on the
  file is Refit (000 eq. 5) in expectation. The draw of each trajectory comes from (seed, its id), so it does not
  depend on the order or the other trajectories; the copies are then shuffled (seeded). Refit needs r >= 0:
  a negative reward is refused, or counted as 0 with ``negative_rewards: clip``.

Trajectories without a reward (a judge failure) are left out where a reward is needed, and counted. The file is
written whole or not at all.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from turnrl.algorithms.preference import Completion, build_preference_data, prompt_length
from turnrl.algorithms.registry import get_algorithm
from turnrl.algorithms.config import AlgoConfig
from turnrl.errors import ConfigError, InputError
from turnrl.generation import derive_seed
from turnrl.layout import RunDir, SCORED
from turnrl.records import Trajectory, read_trajectories, write_jsonl
from turnrl.log import get_logger
from turnrl.registry import Registry

logger = get_logger(__name__)

DEFAULT_ALGO = {"dpo": "dpo", "kto": "m-kto"}


@dataclass
class ExportConfig:
    """Export a scored log for TRL or a fine-tuning API."""

    run_dir: str = "runs/turnrl"
    input: str = SCORED
    """The scored log, in the run directory (or an absolute path)."""
    format: Literal["sft", "dpo", "kto", "openai"] = "sft"
    """sft (TRL messages), dpo (TRL prompt / chosen / rejected), kto (TRL prompt / completion / label) or openai
    (OpenAI fine-tuning chat JSONL, each trajectory repeated by randomized rounding of scale * reward)."""
    output: str = ""
    """The file to write, in the run directory (or an absolute path); default export/<format>.jsonl."""
    min_reward: float | None = None
    """sft: keep only trajectories with reward >= this (default: every trajectory)."""
    algo: AlgoConfig = field(default_factory=lambda: AlgoConfig(name=""))
    """dpo and kto: the preference algorithm whose pairs to export and its pairing options, as for `turnrl train`
    (default: dpo for dpo, m-kto for kto; e.g. --algo.name m-dpo, --algo.preference.pairing best-vs-worst)."""
    kto_threshold: float | None = None
    """kto: label every trajectory, desirable where reward >= this, instead of m-kto's pairs."""
    scale: float = 1.0
    """openai: s, the expected number of copies per unit of reward."""
    seed: int = 0
    """openai: the seed of the rounding draws and of the shuffle."""
    negative_rewards: Literal["error", "clip"] = "error"
    """openai: a negative reward is an error (Refit needs r >= 0), or clip counts it as 0 copies."""
    shuffle: bool = True
    """openai: shuffle the copies (seeded), so that a trajectory's copies are not adjacent."""
    metadata: bool = False
    """Add id, group_id and reward columns to every row (off: only the columns the consumer expects)."""


def _tools(traj: Trajectory) -> dict[str, Any]:
    tools = traj.meta.get("tools")
    return {"tools": tools} if tools else {}


def _first_trained(c: Completion) -> int:
    """Index in ``c.messages`` of the first assistant message that carries the loss."""
    assistants = [i for i, m in enumerate(c.messages) if m["role"] == "assistant"]
    return assistants[c.train_turns[0]]


def split_completion(c: Completion) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt, completion): the messages before the first trained assistant message, and the rest."""
    k = _first_trained(c)
    return c.messages[:k], c.messages[k:]


def shared_prompt(a: Completion, b: Completion) -> int:
    """How many leading messages the two sides share, up to (not into) an assistant message of each, and no
    further than either side's first trained message: TRL's shared prompt of a pair."""
    limit = min(_first_trained(a), _first_trained(b))
    k = 0
    while k < limit and a.messages[k] == b.messages[k]:
        k += 1
    while k > 0 and not (a.messages[k]["role"] == b.messages[k]["role"] == "assistant"):
        k -= 1
    return k


def _preference_algo(cfg: ExportConfig) -> AlgoConfig:
    name = cfg.algo.name or DEFAULT_ALGO[cfg.format]
    algorithm = get_algorithm(name, family="preference")
    if algorithm.unpaired and cfg.format == "dpo":
        raise ConfigError(f"algo.name: {name} gives unpaired examples; export them with --format kto")
    if not algorithm.unpaired and cfg.format == "kto":
        raise ConfigError(f"algo.name: {name} gives pairs; export them with --format dpo (or use m-kto, or "
                          "kto_threshold)")
    return replace(cfg.algo, name=name)


def _branches(cfg: ExportConfig, algo: AlgoConfig) -> list[Trajectory] | None:
    if not get_algorithm(algo.name).needs_branches:
        return None
    path = Path(cfg.run_dir) / algo.step_dpo.branches
    if not path.exists():
        raise ConfigError(f"{path}: missing; {algo.name} pairs logged actions with branch rollouts (`turnrl "
                          "simulate --continue_from`, then `turnrl score`), which a run must have before export")
    return read_trajectories(path)


def dpo_rows(trajectories: list[Trajectory], cfg: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    algo = _preference_algo(cfg)
    pairs, diag = build_preference_data(trajectories, algo, _branches(cfg, algo))
    rows = []
    for p in pairs:
        # Both sides must start from one context x: the messages before their first assistant message.
        if p.chosen.messages[: prompt_length(p.chosen.messages)] != \
                p.rejected.messages[: prompt_length(p.rejected.messages)]:
            raise InputError(f"pair {p.id} (group {p.group_id!r}): the two sides have different prompts; one "
                             "group must hold conversations of one context x (check the group column)")
        k = shared_prompt(p.chosen, p.rejected)
        row: dict[str, Any] = {"prompt": p.chosen.messages[:k], "chosen": p.chosen.messages[k:],
                               "rejected": p.rejected.messages[k:]}
        if cfg.metadata:
            row.update({"id": p.id, "group_id": p.group_id, "chosen_reward": p.chosen.reward,
                        "rejected_reward": p.rejected.reward})
        rows.append(row)
    return rows, diag


def kto_rows(trajectories: list[Trajectory], cfg: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    if cfg.kto_threshold is not None:
        scored = [t for t in trajectories if t.reward is not None]
        for t in scored:
            k = next(i for i, m in enumerate(t.messages) if m["role"] == "assistant")
            row: dict[str, Any] = {"prompt": t.messages[:k], "completion": t.messages[k:],
                                   "label": float(t.reward) >= cfg.kto_threshold}  # type: ignore[arg-type]
            if cfg.metadata:
                row.update({"id": t.id, "group_id": t.group_id, "reward": t.reward})
            rows.append(row)
        return rows, {"threshold": cfg.kto_threshold, "unscored": len(trajectories) - len(scored),
                      "desirable": sum(r["label"] for r in rows), "undesirable": sum(not r["label"] for r in rows)}
    algo = _preference_algo(cfg)
    examples, diag = build_preference_data(trajectories, algo, _branches(cfg, algo))
    for e in examples:
        prompt, completion = split_completion(e.completion)
        row = {"prompt": prompt, "completion": completion, "label": bool(e.desirable)}
        if cfg.metadata:
            row.update({"id": e.id, "group_id": e.group_id, "reward": e.completion.reward})
        rows.append(row)
    return rows, diag


def sft_rows(trajectories: list[Trajectory], cfg: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    kept = trajectories if cfg.min_reward is None else \
        [t for t in trajectories if t.reward is not None and float(t.reward) >= cfg.min_reward]
    rows = []
    for t in kept:
        row: dict[str, Any] = {"messages": t.messages, **_tools(t)}
        if cfg.metadata:
            row.update({"id": t.id, "group_id": t.group_id, "reward": t.reward})
        rows.append(row)
    diag = {"kept": len(kept), "left_out": len(trajectories) - len(kept)}
    if cfg.min_reward is not None:
        diag.update({"min_reward": cfg.min_reward, "unscored": sum(t.reward is None for t in trajectories)})
    return rows, diag


def rounded_count(expected: float, u: float) -> int:
    """Randomized rounding: floor(x) + 1 with probability x - floor(x) (u uniform in [0, 1)), else floor(x)."""
    whole = math.floor(expected)
    return whole + (u < expected - whole)


def repeat_counts(trajectories: list[Trajectory], scale: float, seed: int,
                  negative_rewards: str = "error") -> dict[str, int]:
    """Copies of each scored trajectory (000 Sec. 3.2), by id; each draw is seeded by (seed, trajectory id)."""
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"scale: {scale}; expected a number > 0")
    if negative_rewards not in ("error", "clip"):
        raise ConfigError(f"negative_rewards: {negative_rewards!r}; expected error or clip")
    counts = {}
    for t in trajectories:
        if t.reward is None:
            continue
        r = float(t.reward)
        if r < 0:
            if negative_rewards == "error":
                raise InputError(f"trajectory {t.id}: reward {r:.4g} is negative; randomized rounding repeats a "
                                 "trajectory s * r times, which needs r >= 0 (000 Lemma 1). Shift the rewards, or "
                                 "pass --negative_rewards clip to give such trajectories 0 copies")
            r = 0.0
        u = random.Random(derive_seed("export-openai", seed, t.id)).random()
        counts[t.id] = rounded_count(scale * r, u)
    return counts


def openai_rows(trajectories: list[Trajectory], cfg: ExportConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counts = repeat_counts(trajectories, cfg.scale, cfg.seed, cfg.negative_rewards)
    rows = []
    for t in trajectories:
        row: dict[str, Any] = {"messages": t.messages, **_tools(t)}
        if cfg.metadata:
            row.update({"id": t.id, "group_id": t.group_id, "reward": t.reward})
        rows += [row] * counts.get(t.id, 0)
    if cfg.shuffle:
        random.Random(derive_seed("export-openai-order", cfg.seed)).shuffle(rows)
    rewards = [float(t.reward) for t in trajectories if t.reward is not None]
    clipped = sum(r < 0 for r in rewards)
    expected = cfg.scale * sum(max(r, 0.0) for r in rewards)
    return rows, {"scale": cfg.scale, "seed": cfg.seed, "trajectories": len(counts),
                  "unscored": len(trajectories) - len(counts), "clipped": clipped,
                  "with_copies": sum(n > 0 for n in counts.values()), "examples": len(rows),
                  "expected_examples": round(expected, 3)}


FORMATS = Registry("format", {"sft": sft_rows, "dpo": dpo_rows, "kto": kto_rows, "openai": openai_rows})


def export(cfg: ExportConfig) -> Path:
    """Write the scored log in ``cfg.format``; return the file's path."""
    build_rows = FORMATS.lookup(cfg.format)
    run_dir = Path(cfg.run_dir)
    path = run_dir / cfg.input
    out = run_dir / cfg.output if cfg.output else RunDir(run_dir).export(cfg.format)
    trajectories = read_trajectories(path)
    if not trajectories:
        raise InputError(f"{path}: no trajectories to export; {out} is left as it was")
    rows, diag = build_rows(trajectories, cfg)
    if not rows:
        raise InputError(f"{path}: nothing to export as {cfg.format} ({diag}); {out} is left as it was")
    write_jsonl(out, rows)
    logger.info(f"export {cfg.format}: {len(rows)} rows from {len(trajectories)} trajectories ({_summary(diag)}) "
                f"-> {out}")
    return out


def _summary(diag: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in diag.items() if not isinstance(v, (list, dict)))
