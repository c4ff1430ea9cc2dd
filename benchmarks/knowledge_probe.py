"""What a model knows about multiple-choice questions, read from its likelihoods instead of its answers.

For each question, five readings pick the option with the highest score (no generation, so no answer format):

- cloze:            log p(option text | "Question: ... Answer:") summed over the option's tokens, options not shown
- cloze / token:    the same, divided by the option's token count
- letter:           log p(letter | the chat prompt with the options listed, assistant turn "The answer is ")
- letter, debiased: the same minus each letter's mean log-probability over all questions (removes a letter prior)
- option text:      log p(option text | the same prompt and "The answer is "), summed

The gap between cloze and letter is the part of what the model knows that it cannot bind to an option's letter,
which is what an answer in 000's format ("The answer is X") needs.

    python benchmarks/knowledge_probe.py --run_dir runs/sciq --split train --n 150

Prints a table of accuracy ± SE per reading, with the letter distribution of the letter reading.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from turnrl import stats
from turnrl.envs.reasoning import question_block
from turnrl.models import load_model, load_tokenizer
from turnrl.records import Task, read_tasks


def continuation_logprob(lm, tokenizer, prefix: str, continuations: list[str]) -> list[tuple[float, int]]:
    """Summed log-probability and token count of each continuation after ``prefix`` (one batched forward)."""
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    rows = [prefix_ids + tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for i, r in enumerate(rows):
        positions = range(len(prefix_ids), len(r))
        out.append((sum(float(logprobs[i, p - 1, r[p]]) for p in positions), len(positions)))
    return out


def chat_prefix(tokenizer, task: Task) -> str:
    messages = [{"role": "user", "content": f"{question_block(task)}\n\nState your final answer in the format: "
                                            f"'The answer is X'."}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "The answer is "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", default="runs/sciq", help="a run directory with tasks/<split>.jsonl")
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    tasks = read_tasks(Path(args.run_dir) / "tasks" / f"{args.split}.jsonl")[: args.n]
    tokenizer, lm = load_tokenizer(args.model), load_model(args.model, dtype="float32").eval()
    readings: dict[str, list[bool]] = {k: [] for k in ("cloze", "cloze / token", "letter", "option text")}
    letter_scores, golds = [], []
    for task in tasks:
        gold = task.letters.index(task.answer)
        cloze = continuation_logprob(lm, tokenizer, f"Question: {task.question}\nAnswer:",
                                     [f" {c}" for c in task.choices])
        readings["cloze"].append(int(np.argmax([s for s, _ in cloze])) == gold)
        readings["cloze / token"].append(int(np.argmax([s / n for s, n in cloze])) == gold)
        prefix = chat_prefix(tokenizer, task)
        letters = [s for s, _ in continuation_logprob(lm, tokenizer, prefix, task.letters)]
        readings["letter"].append(int(np.argmax(letters)) == gold)
        letter_scores.append(letters)
        golds.append(gold)
        texts = continuation_logprob(lm, tokenizer, prefix, list(task.choices))
        readings["option text"].append(int(np.argmax([s for s, _ in texts])) == gold)
    scores = np.array(letter_scores)
    debiased = scores - scores.mean(axis=0, keepdims=True)
    readings["letter, debiased"] = list(debiased.argmax(axis=1) == np.array(golds))
    picked = Counter("ABCD"[i] for i in scores.argmax(axis=1))
    print(f"{args.model} on {len(tasks)} {args.split} questions of {args.run_dir} (chance 25 %)\n")
    print("| Reading | Accuracy % | n |\n|---|---|---|")
    for name, hits in readings.items():
        est = stats.proportion([bool(h) for h in hits])
        print(f"| {name} | {est.fmt(100)} | {est.n} |")
    print(f"\nletter reading picks: {dict(sorted(picked.items()))}; gold letters: "
          f"{dict(sorted(Counter(task.answer for task in tasks).items()))}")


if __name__ == "__main__":
    main()
