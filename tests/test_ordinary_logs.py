"""Defaults that work on an ordinary log: an imported file with only a reward column exports to TRL's preference
formats, and mistakes in a file or a config are named where they are (file, line, column, the nearest option)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turnrl.cli import main

# Two prompts, three rated conversations each, with a clarifying exchange in the middle; only a reward column.
ROWS = [
    ("Which is a mammal? A) shark B) whale", "Do you mean living animals?", "Yes.", "The answer is B.", 0.9),
    ("Which is a mammal? A) shark B) whale", "Shall I guess?", "Please answer.", "The answer is A.", 0.1),
    ("Which is a mammal? A) shark B) whale", "Hmm.", "Please answer.", "B or A.", 0.4),
    ("Largest planet? A) Jupiter B) Mars", "By mass or by size?", "By size.", "The answer is A.", 0.8),
    ("Largest planet? A) Jupiter B) Mars", "Hmm.", "Please answer.", "The answer is B.", 0.2),
    ("Largest planet? A) Jupiter B) Mars", "Ok.", "Please answer.", "Mars.", 0.3),
]


def messages(question, ask, reply, final):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": ask},
            {"role": "user", "content": reply}, {"role": "assistant", "content": final}]


@pytest.fixture()
def imported(tmp_path) -> Path:
    source = tmp_path / "rated.jsonl"
    source.write_text("".join(json.dumps({"messages": messages(*r[:4]), "score": r[4]}) + "\n" for r in ROWS))
    run = tmp_path / "run"
    assert main(["import", "--source", str(source), "--run_dir", str(run), "--reward_column", "score"]) == 0
    return run


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_kto_and_m_dpo_export_pair_best_vs_worst_when_the_log_has_no_accuracy(imported, capsys):
    assert main(["export", "--run_dir", str(imported), "--format", "kto"]) == 0
    out = capsys.readouterr().out
    assert "pairing best-vs-worst" in out and "no accuracy component" in out
    rows = read(imported / "export" / "kto.jsonl")
    # Per prompt, the best (0.9, 0.8) is desirable and the worst (0.1, 0.2) undesirable; the middling ones unused.
    finals = sorted((r["completion"][-1]["content"], r["label"]) for r in rows)
    assert finals == [("The answer is A.", False), ("The answer is A.", True), ("The answer is B.", False),
                      ("The answer is B.", True)]
    assert all(len(r["prompt"]) == 1 and len(r["completion"]) == 3 for r in rows)
    assert main(["export", "--run_dir", str(imported), "--format", "dpo", "--algo.name", "m-dpo",
                 "--output", "m-dpo.jsonl"]) == 0
    assert len(read(imported / "m-dpo.jsonl")) == 2


def test_insisting_on_correct_vs_incorrect_without_accuracy_is_an_error(imported, capsys):
    assert main(["export", "--run_dir", str(imported), "--format", "kto", "--algo.preference.pairing",
                 "correct-vs-incorrect"]) == 2
    assert "needs the accuracy reward component" in capsys.readouterr().err


def test_dpo_export_keeps_the_clarifying_exchange(imported):
    assert main(["export", "--run_dir", str(imported), "--format", "dpo"]) == 0
    rows = sorted(read(imported / "export" / "dpo.jsonl"), key=lambda r: r["prompt"][0]["content"])
    assert rows[1] == {"prompt": [{"role": "user", "content": ROWS[0][0]}],
                       "chosen": messages(*ROWS[0][:4])[1:], "rejected": messages(*ROWS[1][:4])[1:]}
    assert rows[0]["chosen"][1] == {"role": "user", "content": "By size."}


def test_a_missing_reward_column_names_the_columns_found_and_the_flag(tmp_path, capsys):
    source = tmp_path / "rated.jsonl"
    source.write_text(json.dumps({"messages": messages(*ROWS[0][:4]), "score": 1.0}) + "\n")
    assert main(["import", "--source", str(source), "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "field 'reward' is missing" in err and "Columns found: messages, score" in err
    assert "--reward_column" in err


def test_broken_json_is_named_at_its_line_and_column(tmp_path, capsys):
    source = tmp_path / "rated.jsonl"
    good = json.dumps({"messages": messages(*ROWS[0][:4]), "reward": 1.0})
    source.write_text(good + "\n" + '{"messages": [], "reward" 1.0}\n')
    assert main(["import", "--source", str(source), "--run_dir", str(tmp_path / "run")]) == 2
    # The colon is missing at column 27 of line 2 (counted by hand: '{"messages": [], "reward" ' is 26 characters).
    assert f"{source}:2:27: not valid JSON (Expecting ':' delimiter)" in capsys.readouterr().err
    array = tmp_path / "rated.json"
    array.write_text('[\n  {"reward": 1.0,\n   "messages" []}\n]\n')
    assert main(["import", "--source", str(array), "--run_dir", str(tmp_path / "run2")]) == 2
    assert f"{array}:3:15: not valid JSON" in capsys.readouterr().err


def test_a_config_key_typo_is_named_with_file_line_and_the_nearest_option(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("run_dir: runs/x\nalgo:\n  name: refit\noptim:\n  epochs: 1\n  learnin_rate: 1.0e-4\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:6:3: unknown option 'optim.learnin_rate'; did you mean 'optim.learning_rate'?" in err
    config.write_text("run_dir: runs/x\nenviron:\n  name: ask\n")
    assert main(["run", "--config", str(config)]) == 2
    assert f"{config}:2:1: unknown option 'environ'" in capsys.readouterr().err
