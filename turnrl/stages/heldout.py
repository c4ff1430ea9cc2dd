"""``turnrl heldout``: held-out evaluation of logged conversations that have rewards but no gold answers (imported
from a product, a dataset on the hub, another tool): the log-likelihood of their assistant turns, by outcome,
under Base and each trained policy.

For each conversation of a scored log (held-out conversations imported with ``turnrl import --run_dir H``) and each
policy, the mean log-probability per token of its assistant turns (each turn's tokens and its end-of-turn token, the
tokens ``turnrl train`` trains; the user turns are context only). Conversations are grouped by their reward. The
table gives, per policy and group, the mean over conversations ± its standard error, and for every policy after the
first (the base) the paired change from the base, per group; then how much more the policy raised the likelihood
of the best group's conversations than of the worst group's, and than of all the others (differences of
independent means, with their SE).
A policy trained to prefer the successful conversations should raise theirs more.

    python benchmarks/heldout_likelihood.py --log runs/mathdial/heldout.jsonl \
        --policy Base=smollm2-135m-instruct --policy Refit=runs/mathdial/train/refit/checkpoint

Prints the table and writes it as JSON with ``--out FILE``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from turnrl import stats
from turnrl.errors import ConfigError, InputError
from turnrl.log import get_logger
from turnrl.records import Trajectory, atomic_write_text, read_trajectories, write_json

logger = get_logger(__name__)


@dataclass
class HeldoutConfig:
    """Held-out log-likelihood of logged conversations' assistant turns, by outcome, under several policies."""

    log: str = ""
    """A scored log (JSONL of trajectories with rewards), e.g. held-out conversations from `turnrl import`."""
    policies: dict[str, str] = field(default_factory=dict)
    """Label -> model (an alias, folder or checkpoint); the first is the base the others are compared with."""
    out: str = ""
    """Where to write the table (.json and .md); default beside the log, <log>.heldout.json."""
    max_groups: int = 5
    batch_tokens: int = 2048
    bootstrap_samples: int = 10_000
    seed: int = 0


def conversation_logprobs(model: str, trajectories: list[Trajectory], batch_tokens: int = 2048,
                          progress: bool = True) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each conversation's assistant tokens under ``model``."""
    import torch

    from turnrl.chat import encode_conversation
    from turnrl.models import load_model, load_tokenizer, stop_token_ids
    from turnrl.train.data import pad_batch, TokenizedSequence
    from turnrl.train.logprobs import MaskedLogprobLM

    tokenizer = load_tokenizer(model)
    lm = load_model(model, dtype="float32")
    lm.eval()
    wrapped = MaskedLogprobLM(lm)
    eot = stop_token_ids(tokenizer, lm)
    seqs = []
    for t in trajectories:
        enc = encode_conversation(tokenizer, t.messages, eot)
        seqs.append(TokenizedSequence(enc.input_ids, enc.loss_mask(list(range(len(enc.assistant_spans)))), t.id))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    batch: list[int] = []

    def flush() -> None:
        if not batch:
            return
        padded = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id, "cpu")
        with torch.no_grad():
            logprobs, rows = wrapped(**padded)
        sums = torch.zeros(len(batch), dtype=torch.float64).index_add(0, rows, logprobs.double())
        counts = torch.zeros(len(batch), dtype=torch.long).index_add(0, rows, torch.ones_like(rows))
        for k, i in enumerate(batch):
            out[i] = (float(sums[k]), int(counts[k]))
        batch.clear()

    done = 0
    for i in order:
        if batch and len(seqs[i].input_ids) * (len(batch) + 1) > batch_tokens:
            flush()
        batch.append(i)
        done += 1
        if progress and done % 20 == 0:
            logger.info(f"  {model}: {done}/{len(seqs)} conversations")
    flush()
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    """:func:`turnrl.stats.mean`, with no standard error (nan) where a single value gives none."""
    est = stats.mean(values)
    return est.mean, est.se if est.n > 1 else float("nan")


def outcome_groups(rewards: list[float], max_groups: int = 5) -> dict[float, list[int]]:
    """Conversation indices by outcome, best first: one group per distinct reward where there are at most
    ``max_groups``, else above the mean reward (keyed by the mean of that group) and at or below it."""
    distinct = sorted(set(rewards), reverse=True)
    if len(distinct) <= max_groups:
        return {r: [i for i, x in enumerate(rewards) if x == r] for r in distinct}
    mean = float(np.mean(rewards))
    high = [i for i, x in enumerate(rewards) if x > mean]
    low = [i for i, x in enumerate(rewards) if x <= mean]
    return {round(float(np.mean([rewards[i] for i in high])), 4): high,
            round(float(np.mean([rewards[i] for i in low])), 4): low}


def measure(trajectories: list[Trajectory], policies: list[tuple[str, str]], batch_tokens: int = 2048,
            max_groups: int = 5, n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Per-conversation mean log-probability per assistant token under each policy, and the summaries."""
    per_conv: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for label, model in policies:
        start = time.time()
        pairs = conversation_logprobs(model, trajectories, batch_tokens)
        seconds[label] = round(time.time() - start, 1)
        per_conv[label] = [s / n if n else float("nan") for s, n in pairs]
    groups = outcome_groups([float(t.reward) for t in trajectories], max_groups)
    rewards = list(groups)
    base = policies[0][0]
    table: dict[str, Any] = {"n": {str(r): len(groups[r]) for r in rewards}, "policies": {}, "seconds": seconds}
    for label, _ in policies:
        row: dict[str, Any] = {}
        for r in rewards:
            values = [per_conv[label][i] for i in groups[r]]
            row[str(r)] = dict(zip(("mean", "se"), mean_se(values)))
            if label != base:
                delta = [per_conv[label][i] - per_conv[base][i] for i in groups[r]]
                row[str(r)].update(dict(zip(("change", "change_se"), mean_se(delta))))
        if label != base and len(rewards) > 1:
            best, worst = row[str(rewards[0])], row[str(rewards[-1])]
            changes = [per_conv[label][i] - per_conv[base][i] for i in range(len(trajectories))]
            low, high = stats.two_sample_bootstrap(changes, groups[rewards[0]], groups[rewards[-1]], n_boot, seed)
            row["best_minus_worst_change"] = {
                "mean": best["change"] - worst["change"],
                "se": stats.se_of_difference(best["change_se"], worst["change_se"]), "low": low, "high": high}
            rest = mean_se([per_conv[label][i] - per_conv[base][i] for r in rewards[1:] for i in groups[r]])
            row["best_minus_rest_change"] = {"mean": best["change"] - rest[0],
                                             "se": stats.se_of_difference(best["change_se"], rest[1])}
        table["policies"][label] = row
    table["per_conversation"] = {label: [round(v, 5) for v in values] for label, values in per_conv.items()}
    table["ids"] = [t.id for t in trajectories]
    table["rewards"] = [float(t.reward) for t in trajectories]
    return table


def markdown(table: dict[str, Any]) -> str:
    """The table: one row per policy, one column per reward group, then the best-minus-worst change."""
    rewards = list(table["n"])
    head = ["Policy"] + [f"reward {r} (n={table['n'][r]})" for r in rewards]
    several = len(rewards) > 1
    if several:
        head.append(f"change, reward {rewards[0]} minus reward {rewards[-1]}")
        if len(rewards) > 2:
            head.append(f"change, reward {rewards[0]} minus the rest")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in table["policies"].items():
        cells = [label]
        for r in rewards:
            c = row[r]
            text = f"{c['mean']:.4f} ± {c['se']:.4f}"
            if "change" in c:
                text += f" ({c['change']:+.4f} ± {c['change_se']:.4f})"
            cells.append(text)
        if several:
            for key in ("best_minus_worst_change", "best_minus_rest_change")[: 1 + (len(rewards) > 2)]:
                d = row.get(key)
                interval = f" [{d['low']:+.4f}, {d['high']:+.4f}]" if d and math.isfinite(d.get("low", math.nan)) \
                    else ""
                cells.append(f"{d['mean']:+.4f} ± {d['se']:.4f}{interval}" if d else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heldout(cfg: HeldoutConfig) -> Path:
    """Measure the log under every policy; write the table (JSON and Markdown) and return the JSON's path."""
    if not cfg.log:
        raise ConfigError("log: the scored log to measure (e.g. --log runs/heldout/scored/trajectories.jsonl)")
    if len(cfg.policies) < 1:
        raise ConfigError("policies: at least one, the base first: --policies '{Base: MODEL, Refit: CHECKPOINT}'")
    trajectories = read_trajectories(cfg.log)
    if not trajectories:
        raise InputError(f"{cfg.log}: no trajectories")
    missing = [t.id for t in trajectories if t.reward is None]
    if missing:
        raise InputError(f"{cfg.log}: trajectory {missing[0]} has no reward ({len(missing)} in all); score it first")
    table = measure(trajectories, list(cfg.policies.items()), cfg.batch_tokens, cfg.max_groups,
                    cfg.bootstrap_samples, cfg.seed)
    text = markdown(table)
    out = Path(cfg.out) if cfg.out else Path(cfg.log).with_suffix(".heldout.json")
    write_json(out, table)
    atomic_write_text(out.with_suffix(".md"), text + "\n")
    print(text)
    logger.info(f"heldout: {len(trajectories)} conversations, {len(cfg.policies)} policies -> {out}")
    return out
