#!/usr/bin/env python
"""How well the answer reader (turnrl/rewards/answers.py) agrees with hand labels of real final turns.

    .venv/bin/python scripts/answer_reader_agreement.py [--corpus tests/fixtures/answer_reader/turns.jsonl]
                                                        [--disagreements]

Each corpus line is a final assistant turn with the options of its conversation and the letter a careful human
grader reads as its committed answer (``label``; null for no answer or an ambiguous one). Prints, as markdown:

- precision: of the turns the reader gives a letter, the share whose letter is the label's;
- recall: of the turns with a label, the share the reader reads as that label;
- exact agreement: the share of all turns where reader and label agree (no answer = no answer included);
- a confusion table by answer form (``form``): right, wrong letter, missed, answered where the label is null.

``--disagreements`` also lists every turn where the reader and the label differ.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from turnrl.rewards.answers import extract_choice

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "answer_reader" / "turns.jsonl"


def read(row: dict) -> str | None:
    return extract_choice(row["text"], row["letters"], row["canonical"], row["choices"]).letter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--disagreements", action="store_true", help="list the turns the reader reads otherwise")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    outcomes = defaultdict(Counter)
    answered = labelled = right_letters = agree = 0
    wrong = []
    for row in rows:
        got, label = read(row), row["label"]
        answered += got is not None
        labelled += label is not None
        right_letters += got is not None and got == label
        agree += got == label
        kind = ("right" if got == label else "wrong letter" if got is not None and label is not None
                else "missed" if label is not None else "answered, label null")
        outcomes[row["form"]][kind] += 1
        if got != label:
            wrong.append((row, got))

    def share(k: int, n: int) -> str:
        return f"{100 * k / n:.1f} % ({k}/{n})" if n else "n/a"

    sources = Counter(r["source"] for r in rows)
    policies = Counter(r["policy"] for r in rows)
    print(f"Corpus: {len(rows)} final turns ({', '.join(f'{k} {v}' for k, v in sorted(sources.items()))}; "
          f"policies: {', '.join(f'{k} {v}' for k, v in sorted(policies.items()))}); "
          f"{labelled} with an answer label, {len(rows) - labelled} null.\n")
    print("| measure | value |\n|---|---|")
    print(f"| precision (reader's letter = label, of the turns it gives a letter) | {share(right_letters, answered)} |")
    print(f"| recall (read right, of the turns with a label) | {share(right_letters, labelled)} |")
    print(f"| exact agreement (all turns, no answer = no answer) | {share(agree, len(rows))} |")
    print("\n| form | n | label null | reader right | wrong letter | missed | answered where label null |")
    print("|---|---|---|---|---|---|---|")
    nulls = Counter(r["form"] for r in rows if r["label"] is None)
    for form in sorted(outcomes, key=lambda f: (-sum(outcomes[f].values()), f)):
        c = outcomes[form]
        print(f"| {form} | {sum(c.values())} | {nulls[form]} | {c['right']} | {c['wrong letter']} | {c['missed']} | "
              f"{c['answered, label null']} |")
    if args.disagreements:
        print("\n| id | form | label | reader | text |\n|---|---|---|---|---|")
        for row, got in wrong:
            text = " ".join(row["text"].split()).replace("|", "\\|")
            print(f"| {row['id']} | {row['form']} | {row['label']} | {got} | {text} |")


if __name__ == "__main__":
    main()
