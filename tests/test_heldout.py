"""`turnrl heldout`: held-out conversations with rewards and no gold answers, measured by each policy's
log-likelihood of their assistant turns, by outcome; checked against a plain forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from turnrl.cli import main
from turnrl.records import write_jsonl
from turnrl.stages.heldout import outcome_groups
from turnrl.stats import two_sample_bootstrap

CONVERSATIONS = [
    ({"messages": [{"role": "user", "content": "My order never came."},
                   {"role": "assistant", "content": "Sorry! Could you give me the order number?"},
                   {"role": "user", "content": "It is 1234."},
                   {"role": "assistant", "content": "Thanks, a replacement ships today."}]}, 1.0),
    ({"messages": [{"role": "user", "content": "How do I reset my password?"},
                   {"role": "assistant", "content": "Use the link on the sign-in page."}]}, 1.0),
    ({"messages": [{"role": "user", "content": "Can I change my address?"},
                   {"role": "assistant", "content": "No."}]}, 0.0),
    ({"messages": [{"role": "user", "content": "Where is my refund?"},
                   {"role": "assistant", "content": "I do not know, ask someone else."}]}, 0.0),
]


def by_hand(model, tokenizer, messages) -> float:
    """Mean log-probability per token of the assistant turns (content and end-of-turn token), from the chat
    template's text: each assistant turn's tokens are the difference between the prompt with and without it."""
    total, count = 0.0, 0
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    ids = ids["input_ids"] if isinstance(ids, dict) else list(ids)
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:k], tokenize=True, add_generation_prompt=True,
                                               return_dict=False)
        before = before["input_ids"] if isinstance(before, dict) else list(before)
        after = tokenizer.apply_chat_template(messages[:k + 1], tokenize=True, return_dict=False)
        after = after["input_ids"] if isinstance(after, dict) else list(after)
        assert after[:len(before)] == before
        end = len(after) - 1 if tokenizer.decode(after[-1:]).strip() == "" else len(after)  # the template's "\n"
        for pos in range(len(before), end):
            total += logp[pos - 1, ids[pos]].item()
            count += 1
    return total / count


def test_heldout_measures_each_policy_by_outcome(tmp_path, tiny_model_dir, tiny_model, tokenizer, capsys):
    rows = [dict(conv, reward=r) for conv, r in CONVERSATIONS]
    source = tmp_path / "heldout.jsonl"
    write_jsonl(source, rows)
    run = tmp_path / "held"
    assert main(["import", "--run_dir", str(run), "--source", str(source),
                 "--policy_model", str(tiny_model_dir)]) == 0
    log = run / "scored" / "trajectories.jsonl"
    assert main(["heldout", "--log", str(log), "--policies", f"{{Base: {tiny_model_dir}, Same: {tiny_model_dir}}}",
                 "--bootstrap_samples", "200"]) == 0
    printed = capsys.readouterr().out
    table = json.loads(log.with_suffix(".heldout.json").read_text())
    assert table["n"] == {"1.0": 2, "0.0": 2}
    expected = [by_hand(tiny_model, tokenizer, conv["messages"]) for conv, _ in CONVERSATIONS]
    assert table["per_conversation"]["Base"] == pytest.approx(expected, abs=1e-4)
    assert table["policies"]["Base"]["1.0"]["mean"] == pytest.approx(np.mean(expected[:2]), abs=1e-4)
    same = table["policies"]["Same"]
    assert same["best_minus_worst_change"]["mean"] == pytest.approx(0.0, abs=1e-6)  # the same weights: no change
    assert "| Policy | reward 1.0 (n=2) | reward 0.0 (n=2) |" in printed
    assert log.with_suffix(".heldout.md").read_text().startswith("| Policy |")


def test_many_rewards_split_at_the_mean():
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0, 8.0]  # six distinct values, mean 3: at the mean is below
    groups = outcome_groups(rewards, max_groups=5)
    assert list(groups.values()) == [[4, 5], [0, 1, 2, 3]]
    assert list(groups) == [6.0, 1.5]  # each group keyed by its mean reward
    assert list(outcome_groups([1.0, 0.0, 0.5, 1.0])) == [1.0, 0.5, 0.0]


def test_the_gap_interval_resamples_each_group():
    changes = [1.0, 1.2, 0.8, 1.0, 0.0, 0.1, -0.1, 0.0]
    low, high = two_sample_bootstrap(changes, [0, 1, 2, 3], [4, 5, 6, 7], 2000, 0)
    assert low < 1.0 < high and low > 0.7 and high < 1.3
    assert np.isnan(two_sample_bootstrap(changes, [0], [4, 5], 100, 0)[0])  # one conversation: no interval


def test_a_log_without_rewards_is_refused(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text("")
    assert main(["heldout", "--log", str(log), "--policies", "{Base: x}"]) == 2
    assert "no trajectories" in capsys.readouterr().err
