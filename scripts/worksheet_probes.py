#!/usr/bin/env python
"""Scripted policies on the worksheet environment, every question of the offline SciQ pool, options shuffled as in
every run: what each shortcut earns and what the intended skill earns (docs/worksheet.md). The policies are those
of tests/test_worksheet_env.py, which asserts these values.

    .venv/bin/python scripts/worksheet_probes.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_worksheet_env import GENERIC_QUESTIONS, eliminate, mean, oracle, run  # noqa: E402

from turnrl.tasks import _sciq  # noqa: E402


def copy_the_reply(messages):
    return "Which options did your teacher cross out?" if len(messages) == 2 else messages[-1]["content"]


POLICIES = {
    "always A": lambda m: "The answer is A.",
    "a generic question, then A": lambda m: "Can you help?" if len(m) == 2 else "The answer is A.",
    "asks about the worksheet, then copies the reply": copy_the_reply,
    "never asks; eliminates when told, else A": lambda m: f"The answer is {eliminate(m) or 'A'}.",
    "always asks, then eliminates": oracle(ask_always=True),
    "asks only when not told, then eliminates": oracle(ask_always=False),
}


def main() -> None:
    pool = _sciq("offline", support=False)
    print(f"{len(pool)} SciQ questions, options shuffled per conversation\n")
    print("| scripted policy | asked when needed % | asked when told % | accuracy when needed % | "
          "accuracy when told % | earned |")
    print("|---|---|---|---|---|---|")
    for name, policy in POLICIES.items():
        _, _, rows = run(pool, policy)
        print(f"| {name} | {100 * mean(rows, 'asked_when_needed'):.1f} | {100 * mean(rows, 'asked_when_told'):.1f} | "
              f"{100 * mean(rows, 'accuracy_when_needed'):.1f} | {100 * mean(rows, 'accuracy_when_told'):.1f} | "
              f"{mean(rows, 'earned'):.3f} |")
    revealed = []
    for question in GENERIC_QUESTIONS:
        _, _, rows = run(pool, lambda m, q=question: q if len(m) == 2 else "The answer is A.")
        revealed.append(mean(rows, "revealed"))
    print(f"\nReveal rate of the {len(GENERIC_QUESTIONS)} generic questions: highest {max(revealed):.3f}")


if __name__ == "__main__":
    main()
