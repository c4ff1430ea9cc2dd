"""MathDial's logged human tutoring as training data: import, train Refit and Swift, measure on held-out dialogues.

MathDial's dialogues are real teachers tutoring an LLM student who made a typical mistake, each rated by the
teacher: did the student get to the right answer (``self-correctness``)? This script turns them into a turnrl run
with the teacher as the policy (``turnrl import --format mathdial``: reward 1 solved, 0.5 solved once the teacher
told the answer, 0 not solved; the group is the problem), trains Refit and Swift on one part and measures, on the
other part, the mean log-likelihood per token of the teacher's turns in successful and in unsuccessful
conversations, under the base policy and after each training:

    python benchmarks/mathdial_example.py --source PATH/TO/mathdial/test.jsonl --out runs/mathdial

1. The rows are split by qid (every conversation about one problem on one side), the qids ordered by a hash of
   (seed, qid): the first ``--heldout_share`` of them are held out. Training takes whole qids in that order up
   to ``--train_conversations``; the held-out part up to ``--heldout_conversations``. Rows without a rating
   are left out (``--skip_unrated``).
2. Both parts are imported as ``turnrl import --format mathdial`` does, then each conversation longer than
   ``--max_tokens`` in the policy's chat template is cut to its longest prefix that ends with a teacher turn and
   fits (so the run fits a laptop CPU; a conversation whose first teacher turn does not fit is left out). The
   training part is the run's ``scored/trajectories.jsonl``, the held-out part ``heldout.jsonl``.
3. ``turnrl train --algo <algo>`` for each of ``--algos`` (one epoch by default).
4. ``turnrl heldout``'s measurement on ``heldout.jsonl`` for the base policy and each checkpoint.

Prints the sizes, the weights' diagnostics (effective sample size, how many are zero, how many were negative
before Swift's floor), the times and the likelihood table; writes them to ``<out>/summary.json`` and
``<out>/summary.md``. Rerunning reuses what is done (the checkpoints; the likelihoods are recomputed).

What this cannot measure: whether the trained policy tutors better. That needs it to tutor a student and the
student's outcome, i.e. a student simulator at least as capable as MathDial's (an LLM told to make a given
mistake and to be convinced only by good tutoring) and a judge of the outcome; the offline default model cannot
play that student.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


from turnrl.layout import SCORED  # noqa: E402
from turnrl.records import Trajectory, atomic_write_text, dumps, iter_jsonl  # noqa: E402
from turnrl.stages.heldout import markdown, measure  # noqa: E402
from turnrl.stages.importer import ImportConfig, read_conversations  # noqa: E402


def qid_order(rows: list[dict[str, Any]], seed: int) -> list[str]:
    """The distinct qids, ordered by a hash of (seed, qid): the same order on every machine, whatever the file order."""
    qids = sorted({str(r.get("qid")) for r in rows})
    return sorted(qids, key=lambda q: hashlib.sha256(f"{seed}/{q}".encode()).hexdigest())


def take_whole_groups(rows: list[dict[str, Any]], qids: list[str], limit: int) -> list[dict[str, Any]]:
    """The rows of ``qids``, qid by qid in that order, until the next qid would pass ``limit`` rows."""
    by_qid: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_qid.setdefault(str(r.get("qid")), []).append(r)
    out: list[dict[str, Any]] = []
    for q in qids:
        group = by_qid.get(q, [])
        if len(out) + len(group) > limit:
            break
        out += group
    return out


def split_rows(path: Path, heldout_share: float, seed: int, n_train: int, n_heldout: int
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [obj for _, obj in iter_jsonl(path)]
    qids = qid_order(rows, seed)
    cut = round(heldout_share * len(qids))
    return take_whole_groups(rows, qids[cut:], n_train), take_whole_groups(rows, qids[:cut], n_heldout)


def truncate(traj: Trajectory, tokenizer, eot: list[int], budget: int) -> Trajectory | None:
    """The conversation if it fits ``budget`` tokens, else its longest prefix that ends with an assistant message and
    fits; None if none does."""
    from turnrl.chat import encode_conversation

    if len(encode_conversation(tokenizer, traj.messages, eot).input_ids) <= budget:
        return traj
    ends = [i + 1 for i, m in enumerate(traj.messages) if m["role"] == "assistant"]
    for end in reversed(ends):
        if len(encode_conversation(tokenizer, traj.messages[:end], eot).input_ids) <= budget:
            kept = sum(1 for m in traj.messages[:end] if m["role"] == "assistant")
            meta = dict(traj.meta, truncated_to={"tokens": budget, "messages": end, "of": len(traj.messages)})
            if isinstance(meta.get("teacher_moves"), list):
                meta["teacher_moves"] = meta["teacher_moves"][:kept]
            return replace(traj, messages=traj.messages[:end], meta=meta)
    return None


def imported(rows: list[dict[str, Any]], path: Path, model: str, budget: int, skip_unrated: bool
             ) -> tuple[list[Trajectory], dict[str, int]]:
    from turnrl.models import load_tokenizer, stop_token_ids

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    trajectories = read_conversations(ImportConfig(source=str(path), format="mathdial", skip_unrated=skip_unrated,
                                                   policy_model=model))
    tokenizer = load_tokenizer(model)
    eot = stop_token_ids(tokenizer)  # the lengths, all that the cut needs, do not depend on it
    kept, cut, dropped = [], 0, 0
    for t in trajectories:
        short = truncate(t, tokenizer, eot, budget) if budget else t
        if short is None:
            dropped += 1
            continue
        cut += short is not t
        kept.append(short)
    return kept, {"rows": len(rows), "rated": len(trajectories), "truncated": cut, "left_out_too_long": dropped,
                  "conversations": len(kept)}


def outcome_counts(trajectories: list[Trajectory]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trajectories:
        counts[str(t.reward)] = counts.get(str(t.reward), 0) + 1
    return dict(sorted(counts.items(), reverse=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="a MathDial JSONL file (e.g. its test.jsonl)")
    parser.add_argument("--out", default="runs/mathdial", help="the run directory")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the policy to start from")
    parser.add_argument("--heldout_share", type=float, default=0.5, help="share of the qids held out")
    parser.add_argument("--train_conversations", type=int, default=120)
    parser.add_argument("--heldout_conversations", type=int, default=150)
    parser.add_argument("--max_tokens", type=int, default=512, help="token budget per conversation (0: none)")
    parser.add_argument("--algos", nargs="+", default=["refit", "swift"])
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--micro_batch_tokens", type=int, default=1024,
                        help="padded tokens per forward pass in training (memory: about 2 GB at 1024 with "
                             "gradient checkpointing)")
    parser.add_argument("--gradient_checkpointing", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_unrated", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    args = parser.parse_args()

    from turnrl.cli import main as turnrl

    out = Path(args.out)
    times: dict[str, float] = {}
    start = time.time()
    train_rows, heldout_rows = split_rows(Path(args.source), args.heldout_share, args.seed,
                                          args.train_conversations, args.heldout_conversations)
    train, train_sizes = imported(train_rows, out / "data" / "train.jsonl", args.model, args.max_tokens,
                                  args.skip_unrated)
    heldout, heldout_sizes = imported(heldout_rows, out / "data" / "heldout.jsonl", args.model, args.max_tokens,
                                      args.skip_unrated)
    if {str(r.get("qid")) for r in train_rows} & {str(r.get("qid")) for r in heldout_rows}:
        raise SystemExit("a qid is on both sides of the split")  # cannot happen; checked because it matters
    atomic_write_text(out / SCORED, "".join(dumps(t) + "\n" for t in train))
    atomic_write_text(out / "heldout.jsonl", "".join(dumps(t) + "\n" for t in heldout))
    times["import"] = round(time.time() - start, 1)
    print(f"mathdial: train {train_sizes}, outcomes {outcome_counts(train)}")
    print(f"mathdial: held out {heldout_sizes}, outcomes {outcome_counts(heldout)}")

    diagnostics = {}
    policies = [("Base", args.model)]
    for algo in args.algos:
        start = time.time()
        code = turnrl(["train", "--run_dir", str(out), "--algo", algo, "--model", args.model,
                       "--optim.epochs", str(args.epochs), "--optim.learning_rate", str(args.learning_rate),
                       "--optim.batch_size", str(args.batch_size), "--optim.seed", str(args.seed),
                       "--optim.max_length", str(args.max_tokens or 1_000_000),
                       "--optim.micro_batch_tokens", str(args.micro_batch_tokens),
                       "--optim.gradient_checkpointing", str(args.gradient_checkpointing).lower()])
        if code:  # e.g. Swift on a part where no problem has two differently rated conversations
            print(f"mathdial: turnrl train --algo {algo} failed ({code}); left out of the measurement")
            continue
        times[f"train {algo}"] = round(time.time() - start, 1)
        d = json.loads((out / "train" / algo / "diagnostics.json").read_text())
        diagnostics[algo] = {k: d.get(k) for k in ("trajectories", "groups", "nonzero", "positive", "negative",
                                                   "floored", "zero_signal_groups", "ess", "weight_mean",
                                                   "weight_max", "dropped")}
        policies.append((algo.capitalize() if algo in ("refit", "swift") else algo,
                         str(out / "train" / algo / "checkpoint")))

    start = time.time()
    table = measure(heldout, policies, batch_tokens=args.micro_batch_tokens * 2)
    times["held-out likelihood"] = round(time.time() - start, 1)

    lines = [f"Train: {train_sizes}, outcomes {outcome_counts(train)}",
             f"Held out: {heldout_sizes}, outcomes {outcome_counts(heldout)}", "",
             "| Algorithm | trajectories | non-zero weights | negative (after floor) | negative before the floor "
             "| zero-signal groups | ESS | mean / max weight |", "|---|---|---|---|---|---|---|---|"]
    for algo, d in diagnostics.items():
        flat = d["zero_signal_groups"] if d.get("zero_signal_groups") is not None else "-"
        lines.append(f"| {algo} | {d['trajectories']} | {d['nonzero']} | {d['negative']} | {d.get('floored') or 0} "
                     f"| {flat} | {d['ess']:.1f} | {d['weight_mean']:.3f} / {d['weight_max']:.3f} |")
    lines += ["", "Mean log-likelihood per teacher token on the held-out conversations, by reward (mean ± SE over "
              "conversations; in brackets the paired change from Base):", "", markdown(table), "",
              "Times (s): " + ", ".join(f"{k} {v}" for k, v in times.items())
              + "; likelihood passes: " + ", ".join(f"{k} {v}" for k, v in table["seconds"].items())]
    text = "\n".join(lines)
    print(text)
    atomic_write_text(out / "summary.md", text + "\n")
    atomic_write_text(out / "summary.json", json.dumps(
        {"args": vars(args), "train": train_sizes, "heldout": heldout_sizes, "train_outcomes": outcome_counts(train),
         "heldout_outcomes": outcome_counts(heldout), "diagnostics": diagnostics, "times": times,
         "likelihood": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
