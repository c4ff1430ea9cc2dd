"""``turnrl import``: every input shape and file type read into the scored log, bad rows named by file, row and field
(the previous output untouched), and an imported log trained on and exported (import -> train swift -> export dpo).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from turnrl.cli import main
from turnrl.layout import SCORED
from turnrl.records import read_trajectories
from turnrl.stages.importer import context_group

SYSTEM = {"role": "system", "content": "Be brief."}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(question: str, *answers: str, system: bool = True) -> list[dict[str, str]]:
    """A conversation: (system), the question, then the answers with "Are you sure?" between them."""
    messages = ([SYSTEM] if system else []) + [{"role": "user", "content": question}]
    for k, answer in enumerate(answers):
        if k:
            messages.append({"role": "user", "content": "Are you sure?"})
        messages.append({"role": "assistant", "content": answer})
    return messages


TRL_ROWS = [
    {"messages": chat("What is 2 + 2?", "3", "4"), "reward": 1.0, "annotator": "a"},
    {"messages": chat("What is 2 + 2?", "5"), "reward": 0.0, "annotator": "b"},
    {"messages": chat("What is 2 + 2?", "4"), "reward": 0.5, "annotator": "a"},
    {"messages": chat("Capital of France?", "Paris", system=False), "reward": 0.9, "annotator": "c"},
]


def imported(tmp_path: Path, rows_file: Path, *flags: str) -> list:
    run = tmp_path / "run"
    assert main(["import", "--run_dir", str(run), "--source", str(rows_file), *flags]) == 0
    return read_trajectories(run / SCORED)


def test_trl_messages_become_scored_trajectories(tmp_path, capsys):
    data = write_jsonl(tmp_path / "log.jsonl", TRL_ROWS)
    trajectories = imported(tmp_path, data)
    out = capsys.readouterr().out
    assert [t.messages for t in trajectories] == [r["messages"] for r in TRL_ROWS]
    assert [t.reward for t in trajectories] == [1.0, 0.0, 0.5, 0.9]
    assert [t.rewards for t in trajectories] == [{"reward": r["reward"]} for r in TRL_ROWS]
    # One group per (system prompt, first user message): the three 2 + 2 conversations share theirs.
    groups = [t.group_id for t in trajectories]
    assert groups[0] == groups[1] == groups[2] != groups[3]
    assert [t.sample for t in trajectories] == [0, 1, 2, 0]
    assert len({t.id for t in trajectories}) == 4 and all(t.task_id == t.group_id for t in trajectories)
    assert [t.meta["annotator"] for t in trajectories] == ["a", "b", "a", "c"]
    assert trajectories[1].meta["imported_from"] == {"source": str(data), "row": 2}
    assert "1 of 2 groups have only one member" in out and "weight 0" in out
    # Nothing but the scored log: no tasks/ or rollouts/ for the later stages to trip over.
    assert sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*")
                  if p.is_file()) == [SCORED]


def test_the_default_group_is_the_system_prompt_and_first_user_message():
    same = context_group(chat("Q?", "a"))
    assert context_group(chat("Q?", "b", "c")) == same
    assert context_group(chat("Q?", "a", system=False)) != same
    assert context_group(chat("Other?", "a")) != same


def test_openai_chat_log_with_tools(tmp_path):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
    call = [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 2}"}}]
    row = {"messages": [
        {"role": "developer", "content": "Use the tools."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 2?"}]},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        {"role": "assistant", "content": "4", "weight": 1},
    ], "tools": tools, "parallel_tool_calls": False, "score": 0.75}
    [traj] = imported(tmp_path, write_jsonl(tmp_path / "openai.jsonl", [row]), "--reward_column", "score")
    assert traj.messages == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "", "tool_calls": call},
        {"role": "tool", "content": "4", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "4", "weight": 1},
    ]
    assert traj.reward == 0.75 and traj.meta["tools"] == tools and traj.meta["parallel_tool_calls"] is False


def test_sharegpt_roles_are_mapped(tmp_path):
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                             {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye?"},
                             {"from": "gpt", "value": "Bye."}], "reward": 1}
    [traj] = imported(tmp_path, write_jsonl(tmp_path / "sharegpt.jsonl", [row]))
    assert traj.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"},
                             {"role": "assistant", "content": "Bye."}]
    assert traj.reward == 1.0


def test_prompt_completion_rows_are_joined(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Hi?"}], "completion": [{"role": "assistant", "content": "Hey."}],
           "reward": 0.2}
    (tmp_path / "pc.json").write_text(json.dumps([row]))  # a JSON array of rows
    [traj] = imported(tmp_path, tmp_path / "pc.json")
    assert traj.messages == [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hey."}]


def test_parquet_and_a_saved_dataset_read_with_datasets(tmp_path):
    import datasets

    # Arrow gives every message the keys any message has (here tool_calls, null elsewhere): they must not leak.
    rows = [dict(r) for r in TRL_ROWS]
    rows[0] = {**rows[0], "messages": rows[0]["messages"][:-1] + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}]}]}
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "log.parquet"))
    parquet = imported(tmp_path / "p", tmp_path / "log.parquet")
    assert [t.messages for t in parquet[1:]] == [r["messages"] for r in TRL_ROWS[1:]]
    assert "tool_calls" in parquet[0].messages[-1] and "tool_calls" not in parquet[0].messages[0]
    (tmp_path / "folder").mkdir()  # a folder of data files, as a dataset repository holds them
    ds.to_parquet(str(tmp_path / "folder" / "train.parquet"))
    assert [t.reward for t in imported(tmp_path / "f", tmp_path / "folder")] == [1.0, 0.0, 0.5, 0.9]
    datasets.DatasetDict({"train": ds, "test": ds.select([3])}).save_to_disk(str(tmp_path / "saved"))
    saved = imported(tmp_path / "s", tmp_path / "saved", "--split", "test")
    assert [t.messages for t in saved] == [TRL_ROWS[3]["messages"]] and saved[0].reward == 0.9


def test_csv_with_json_messages_and_several_reward_columns(tmp_path):
    path = tmp_path / "log.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages", "helpful", "correct", "prompt_id"])
        writer.writerow([json.dumps(chat("Q1?", "a")), "0.5", "1", "q1"])
        writer.writerow([json.dumps(chat("Q1?", "b")), "1.0", "0", "q1"])
        writer.writerow([json.dumps(chat("Q2?", "c")), "0.0", "0", "q2"])
    trajectories = imported(tmp_path, path, "--reward_columns", "[helpful, correct]",
                            "--reward_weights", "{helpful: 0.25, correct: 0.75}", "--group_column", "prompt_id")
    assert [t.reward for t in trajectories] == pytest.approx([0.25 * 0.5 + 0.75, 0.25, 0.0])
    assert trajectories[0].rewards == {"helpful": 0.5, "correct": 1.0}
    assert [t.group_id for t in trajectories] == ["q1", "q1", "q2"]
    assert [t.id for t in trajectories] == ["q1#0", "q1#1", "q2#0"]
    assert "prompt_id" not in trajectories[0].meta  # the group column is the group, not metadata
    # Without weights, the components weigh alike.
    again = imported(tmp_path / "eq", path, "--reward_columns", "[helpful, correct]")
    assert [t.reward for t in again] == pytest.approx([0.75, 0.5, 0.0])


@pytest.mark.parametrize("flags, message", [
    (["--reward_weights", "{helpful: 0.5, correct: 0.6}"], "sum to 1.1"),
    (["--reward_columns", "[helpful]", "--reward_weights", "{correct: 1.0}"], "reward_weights.correct"),
    (["--reward_weights", "{helpful: -0.5, correct: 1.5}"], "reward_weights.helpful"),
    (["--reward_column", "stars"], "no column 'stars'"),
    (["--reward_column", "stars", "--reward_columns", "[helpful]"], "are both set"),
])
def test_bad_reward_settings_are_named(tmp_path, capsys, flags, message):
    path = tmp_path / "log.parquet"
    import datasets

    datasets.Dataset.from_list([{"messages": chat("Q?", "a"), "helpful": 1.0, "correct": 0.0}]).to_parquet(str(path))
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source", str(path), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / SCORED).exists()


GOOD = {"messages": chat("Q?", "a"), "reward": 1.0}


@pytest.mark.parametrize("bad, field, expected", [
    ({"reward": 1.0}, "messages", "is missing"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "bot", "content": "a"}], "reward": 1.0},
     "messages[1].role", "'bot'; expected one of"),
    ({"messages": chat("Q?", "a"), "reward": "high"}, "reward", "'high'; expected a number"),
    ({"messages": chat("Q?", "a"), "reward": None}, "reward", "is empty; expected a number"),
    ({"messages": chat("Q?", "a")}, "reward", "is missing"),
    ({"messages": [], "reward": 1.0}, "messages", "empty conversation"),
    ({"messages": [SYSTEM, {"role": "user", "content": "Q?"}], "reward": 1.0}, "messages", "no assistant message"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "reward": 1.0},
     "messages[0].content", "expected text"),
])
def test_a_bad_row_is_named_by_file_row_and_field_and_the_old_output_is_kept(tmp_path, capsys, bad, field, expected):
    run = tmp_path / "run"
    assert main(["import", "--run_dir", str(run), "--source", str(write_jsonl(tmp_path / "ok.jsonl", [GOOD]))]) == 0
    before = (run / SCORED).read_bytes()
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, bad])
    capsys.readouterr()
    assert main(["import", "--run_dir", str(run), "--source", str(data), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"{data}: row 3 (line 3): field '{field}'" in err and expected in err, err
    assert (run / SCORED).read_bytes() == before
    assert [p.name for p in (run / "scored").iterdir()] == ["trajectories.jsonl"]  # no temporary file left


def test_a_bad_csv_row_is_named_by_its_row(tmp_path, capsys):
    path = tmp_path / "log.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["messages", "reward"])
        writer.writerow([json.dumps(chat("Q?", "a")), "1"])
        writer.writerow([json.dumps(chat("Q?", "b")), "high"])
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source", str(path)]) == 2
    assert f"{path}: row 2: field 'reward' is 'high'; expected a number" in capsys.readouterr().err


def test_an_existing_log_is_replaced_only_when_asked(tmp_path, capsys):
    run = tmp_path / "run"
    first = write_jsonl(tmp_path / "a.jsonl", TRL_ROWS)
    assert main(["import", "--run_dir", str(run), "--source", str(first)]) == 0
    assert main(["import", "--run_dir", str(run), "--source", str(first)]) == 0  # the same data: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    other = write_jsonl(tmp_path / "b.jsonl", TRL_ROWS[:2])
    assert main(["import", "--run_dir", str(run), "--source", str(other)]) == 2
    assert "--overwrite true" in capsys.readouterr().err and len(read_trajectories(run / SCORED)) == 4
    assert main(["import", "--run_dir", str(run), "--source", str(other), "--overwrite"]) == 0
    assert len(read_trajectories(run / SCORED)) == 2


def test_duplicate_ids_are_refused(tmp_path, capsys):
    rows = [{**GOOD, "uid": "x"}, {**GOOD, "uid": "x"}]
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source",
                 str(write_jsonl(tmp_path / "d.jsonl", rows)), "--id_column", "uid"]) == 2
    assert "row 2 (line 2): field 'uid'" in capsys.readouterr().err


def test_import_train_swift_export_dpo(tmp_path, tiny_model_dir, capsys):
    """The end-to-end path: a TRL JSONL log with rewards written by hand, imported, trained on with Swift (a tiny
    model, two steps) and exported as DPO pairs equal to the best vs worst final answers of each group."""
    rows = [
        {"messages": chat("Which is a mammal? A) shark B) whale", "Let me think.", "B) whale"), "reward": 1.0},
        {"messages": chat("Which is a mammal? A) shark B) whale", "Hmm.", "A) shark"), "reward": 0.0},
        {"messages": chat("Which is a mammal? A) shark B) whale", "Fish swim.", "A"), "reward": 0.25},
        {"messages": chat("Boiling point of water at sea level?", "100 C"), "reward": 0.9},
        {"messages": chat("Boiling point of water at sea level?", "50 C"), "reward": 0.1},
        {"messages": chat("Boiling point of water at sea level?", "90 C"), "reward": 0.4},
        {"messages": chat("Largest planet?", "Jupiter"), "reward": 0.7},
        {"messages": chat("Largest planet?", "Saturn"), "reward": 0.7},  # a tie: no signal, no pair
    ]
    data = write_jsonl(tmp_path / "conversations.jsonl", rows)
    run = tmp_path / "run"
    assert main(["import", "--run_dir", str(run), "--source", str(data), "--policy_model", str(tiny_model_dir)]) == 0
    assert main(["train", "--run_dir", str(run), "--algo.name", "swift", "--optim.batch_size", "4",
                 "--optim.learning_rate", "1e-4", "--optim.max_length", "256", "--optim.precision", "fp32"]) == 0
    checkpoint = run / "train" / "swift" / "checkpoint"
    record = json.loads((checkpoint / "turnrl_train.json").read_text())
    assert record["model"] == str(tiny_model_dir) and record["summary"]["steps"] == 2
    diag = json.loads((run / "train" / "swift" / "diagnostics.json").read_text())
    assert diag["groups"] == 3 and diag["zero_signal_groups"] == 1
    # Swift's weights, by hand: (r - mean) / std (ddof 1) within each group, floored at 0, the tied group all 0.
    expected = []
    for group in (rows[0:3], rows[3:6], rows[6:8]):
        r = [g["reward"] for g in group]
        mean = sum(r) / len(r)
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
        expected += [max(0.0, (x - mean) / std) if std else 0.0 for x in r]
    assert diag["weights"] == pytest.approx(expected, abs=1e-5)

    assert main(["export", "--run_dir", str(run), "--format", "dpo"]) == 0
    import datasets

    ds = datasets.load_dataset("json", data_files=str(run / "export" / "dpo.jsonl"), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    # Each side from its first assistant message to its final one (the "Are you sure?" exchange kept).
    assert ds.to_list() == [
        {"prompt": rows[0]["messages"][:2], "chosen": rows[0]["messages"][2:], "rejected": rows[1]["messages"][2:]},
        {"prompt": rows[3]["messages"][:2], "chosen": rows[3]["messages"][2:], "rejected": rows[4]["messages"][2:]},
    ]
