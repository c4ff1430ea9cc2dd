#!/usr/bin/env python
"""How each policy used the retries of the feedback environment (docs/results.md section 5): the letters of its
first answers beside the gold's first-turn letters (a letter order shows as a skew the gold does not have), and
how often a retry named an option already marked wrong, by the option's text (the options are re-ordered at
every retry, so a letter order cannot avoid them and only reading the conversation can).

    .venv/bin/python scripts/retry_answers.py runs/drift-mc-seeds [--methods base sft-final drift]
"""

import argparse
from collections import Counter
from pathlib import Path

from turnrl.layout import RunDir
from turnrl.records import read_trajectories, shown_task


def summarise(run: Path, method: str) -> dict | None:
    seeds = sorted(p for p in run.glob("seed*") if p.is_dir()) or [run]
    first, gold_first, repeats, retries, solved_first, conversations = Counter(), Counter(), 0, 0, 0, 0
    for seed_dir in seeds:
        path = RunDir(seed_dir).conversations(method)
        if not path.exists():
            continue
        tasks = RunDir(seed_dir).tasks_by_id()
        for traj in read_trajectories(path):
            task, answers = tasks[traj.task_id], traj.meta.get("answers") or []
            if not answers:
                continue
            conversations += 1
            first[answers[0] or "none"] += 1
            gold_first[shown_task(task, traj, 0).answer] += 1
            solved_first += answers[0] == shown_task(task, traj, 0).answer
            rejected = set()
            for k, letter in enumerate(answers):
                own = task.original_letter(letter, traj.order_at(k)) if letter else None
                if k > 0:
                    retries += 1
                    repeats += own is not None and own in rejected
                if own is not None:
                    rejected.add(own)
    if not conversations:
        return None
    return {"n": conversations, "first": first, "gold_first": gold_first, "multi@1": solved_first / conversations,
            "repeats": repeats, "retries": retries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--methods", nargs="+", default=["base", "sft-final", "drift", "always-a"])
    args = parser.parse_args()
    print("| method | conversations | first answers A / B / C / D / none % | gold at turn 1 A / B / C / D % | "
          "multi@1 % | retries naming an option already marked wrong |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        s = summarise(args.run_dir, method)
        if s is None:
            continue
        pct = lambda c, keys: " / ".join(f"{100 * c.get(k, 0) / s['n']:.0f}" for k in keys)  # noqa: E731
        print(f"| {method} | {s['n']} | {pct(s['first'], 'ABCD') + ' / ' + pct(s['first'], ['none'])} | "
              f"{pct(s['gold_first'], 'ABCD')} | {100 * s['multi@1']:.1f} | {s['repeats']} / {s['retries']} "
              f"({100 * s['repeats'] / max(1, s['retries']):.0f} %) |")


if __name__ == "__main__":
    main()
