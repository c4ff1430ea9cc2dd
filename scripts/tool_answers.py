#!/usr/bin/env python
"""What each policy did on the arithmetic tool task (docs/results.md section 6): accuracy with its Wilson interval,
by the kind of item (plain operators, which a pasted expression solves; ``^``, "x% of y", "mod" and sqrt, which
need translating into Python), how often the first program pastes the expression verbatim, and the final answer's
form; then each method against Base and against the first method named, paired over the same questions.

    .venv/bin/python scripts/tool_answers.py runs/tool-arithmetic --split val --methods base star-gate m-dpo m-kto
"""

import argparse
import json
import re
from pathlib import Path

from turnrl.envs.tool import python_blocks
from turnrl.layout import RunDir
from turnrl.records import read_trajectories
from turnrl.stats import paired_difference, wilson

KINDS = {"^": "^", "% of": "% of", "mod": " mod ", "sqrt": "sqrt"}


def kind(question: str) -> str:
    return next((name for name, mark in KINDS.items() if mark in question), "plain")


def pasted(program: str, question: str) -> bool:
    """The program prints the question's expression exactly as written (spaces aside)."""
    expression = re.sub(r"\s", "", question.split("=")[0])
    return any(re.sub(r"\s", "", line) == f"print({expression})" for line in program.splitlines())


def summarise(run: Path, method: str, split: str) -> dict | None:
    rundir = RunDir(run)
    path = rundir.conversations(method, split)
    if not path.exists():
        return None
    tasks = rundir.tasks_by_id()
    rows = [json.loads(line) for line in rundir.per_question(method, split).read_text().splitlines()]
    per_question = {row["task_id"]: row for row in rows}
    by_kind: dict[str, list[float]] = {}
    pastes = boxed = coded = 0
    trajectories = read_trajectories(path)
    for traj in trajectories:
        question = tasks[traj.task_id].question
        by_kind.setdefault(kind(question), []).append(per_question[traj.task_id]["accuracy"])
        programs = [b for m in traj.messages if m["role"] == "assistant" for b in python_blocks(m["content"])]
        coded += bool(programs)
        pastes += bool(programs) and pasted(programs[0], question)
        boxed += "\\boxed" in traj.final_assistant()
    ids = sorted(per_question)
    return {"method": method, "n": len(trajectories), "ids": ids,
            "correct": [per_question[i]["accuracy"] for i in ids], "by_kind": by_kind,
            "coded": coded, "pasted": pastes, "boxed": boxed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--methods", nargs="+", default=["base", "star-gate", "m-dpo", "m-kto"])
    args = parser.parse_args()
    rows = [r for r in (summarise(args.run, m, args.split) for m in args.methods) if r]
    kinds = ["plain", *KINDS]
    print("| method | accuracy % [95 %] | " + " | ".join(f"{k} %" for k in kinds)
          + " | wrote code | first program pastes the expression | final turn boxed |")
    print("|---|---|" + "---|" * len(kinds) + "---|---|---|")
    for r in rows:
        k, n = int(sum(r["correct"])), r["n"]
        low, high = wilson(k, n)
        cells = []
        for name in kinds:
            values = r["by_kind"].get(name, [])
            cells.append(f"{100 * sum(values) / len(values):.0f} (n={len(values)})" if values else "-")
        print(f"| {r['method']} | {100 * k / n:.1f} [{100 * low:.1f}, {100 * high:.1f}] | " + " | ".join(cells)
              + f" | {r['coded']}/{n} | {r['pasted']}/{n} | {r['boxed']}/{n} |")
    base = next((r for r in rows if r["method"] == "base"), None)
    first = next((r for r in rows if r["method"] != "base"), None)
    for r in rows:
        for other in (base, first):
            if other is None or other is r or r is base or other["ids"] != r["ids"]:
                continue
            d = paired_difference(r["correct"], other["correct"])
            print(f"{r['method']} - {other['method']}: {100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] "
                  f"({d.won} won, {d.lost} lost, n={d.n})")


if __name__ == "__main__":
    main()
