"""MathDial: the multiple-choice loader (000 App. D) and ``turnrl import --format mathdial`` (the tutoring
dialogues as a scored log), on hand-made rows and, where the local copy of MathDial's test split exists, on its
first row; bad rows are named by file, row and field. Also the example's split (benchmarks/mathdial_example.py).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from turnrl.cli import main
from turnrl.errors import ConfigError, InputError
from turnrl.layout import SCORED
from turnrl.records import Trajectory, read_trajectories
from turnrl.stages.import_mathdial import MATHDIAL_OPENING, MATHDIAL_SYSTEM
from turnrl.sources.mathdial import mathdial_distractors
from turnrl.tasks import LETTERS, DatasetConfig, load_tasks

MATHDIAL_TEST = Path("/work/shared/data/mathdial/test.jsonl")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

ROW = {
    "qid": 42, "scenario": 1,
    "question": "Ann has 3 bags of 4 apples. She eats 2. How many apples are left?",
    "ground_truth": "3 * 4 = 12 apples.\n12 - 2 = 10 apples are left.\n 10",
    "student_incorrect_solution": "Ann has 3 + 4 = 7 apples.\nShe eats 2, so 7 - 2 = 5 are left.\n 5",
    "student_profile": "Cody is a 6th grade student. He mixes up adding and multiplying.",
    "teacher_described_confusion": "added instead of multiplied",
    "self-correctness": "Yes, but I had to reveal the answer",
    "self-typical-confusion": 4.0, "self-typical-interactions": 3.0,
    "conversation": ("Teacher: (generic)Hi Cody, talk me through your solution|EOM|"
                     "Cody: I added the bags and the apples.|EOM|"
                     "Teacher: (probing)|EOM|"
                     "Teacher: (focus)How many apples are in 3 bags of 4?|EOM|"
                     "Student: 7?|EOM|"
                     "Teacher: (telling)It is 3 x 4 = 12, so 12 - 2 = 10.|EOM|"
                     "Teacher: (generic)Do you see?|EOM|"
                     "Student: Yes, 10 apples are left."),
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ the loader

def test_a_row_becomes_a_question_with_the_gold_the_students_answer_and_two_distractors(tmp_path):
    (task,) = load_tasks(DatasetConfig(name="mathdial", path=str(write_jsonl(tmp_path / "md.jsonl", [ROW]))))
    assert task.id == "mathdial/42" and task.source == "mathdial"
    assert task.question == (f"{ROW['question']}\n\nA student attempted to solve this problem as follows: "
                             f"{ROW['student_incorrect_solution']}\n\nWhich of the following is the correct final "
                             "answer?")
    # gold = the last line of ground_truth, the student's = the last number of the incorrect solution
    assert task.choices[LETTERS.index(task.answer)] == "10"
    assert task.choices[LETTERS.index(task.meta["student_answer_letter"])] == "5"
    distractors = [c for c in task.choices if c not in ("10", "5")]
    assert len(distractors) == 2 == len(set(task.choices)) - 2
    assert all(5 <= int(d) <= 15 for d in distractors)  # within max(5, 10 / 2) of the gold, never negative
    again = load_tasks(DatasetConfig(name="mathdial", path=str(write_jsonl(tmp_path / "again.jsonl", [ROW]))))
    assert again[0] == task  # deterministic: seeded by the qid


def test_distractors_keep_the_golds_decimals_and_stay_off_the_taken_values():
    for seed in range(50):
        low = mathdial_distractors("0", "1", seed)
        assert len(set(low)) == 2 and not {"0", "1"} & set(low) and all(0 <= int(v) <= 5 for v in low)
        tenths = mathdial_distractors("2.5", "3", seed)
        assert all(len(v.split(".")[-1]) <= 1 and 0 <= float(v) <= 7.5 and float(v) not in (2.5, 3.0)
                   for v in tenths)
        big = mathdial_distractors("1200", "1000", seed)
        assert all(600 <= int(v) <= 1800 for v in big)


@pytest.mark.skipif(not MATHDIAL_TEST.exists(), reason="no local copy of MathDial's test split")
def test_the_first_test_row_by_hand():
    tasks = load_tasks(DatasetConfig(name="mathdial", path=str(MATHDIAL_TEST)))
    assert len(tasks) == 394  # 599 rows, one question per qid
    first = tasks[0]
    # qid 6000025: ground_truth ends "\n 10", the incorrect solution "\n 4"
    assert first.id == "mathdial/6000025"
    assert first.meta["gold_value"] == "10" and first.meta["student_answer"] == "4"
    assert first.choices == ["6", "4", "10", "5"] and first.answer == "C"
    assert first.question.startswith("Julia was preparing for a dinner party")
    letters = [t.answer for t in tasks]
    assert min(letters.count(x) for x in "ABCD") > 60  # the gold's letter is spread over A-D


@pytest.mark.parametrize("change, field, expected", [
    ({"ground_truth": "no number here"}, "ground_truth", "has no number"),
    ({"student_incorrect_solution": "I do not know"}, "student_incorrect_solution", "has no number"),
    ({"student_incorrect_solution": "It is 10\n 10"}, "student_incorrect_solution", "the gold answer"),
    ({"question": None}, "question", "is missing or empty"),
])
def test_a_bad_row_is_named_by_row_and_field(tmp_path, change, field, expected):
    path = write_jsonl(tmp_path / "md.jsonl", [ROW, dict(ROW, qid=43, **change)])
    with pytest.raises(InputError) as err:
        load_tasks(DatasetConfig(name="mathdial", path=str(path)))
    assert f"{path}: row 2 (line 2): field '{field}'" in str(err.value) and expected in str(err.value)


def test_mathdial_without_a_path_needs_the_hub():
    with pytest.raises(ConfigError, match="--dataset.path"):
        load_tasks(DatasetConfig(name="mathdial", source="offline"))


def test_every_dataset_of_000_is_selectable_by_name():
    from turnrl.tasks import LOADERS

    # 000 App. D: OpenBookQA, ARC (both parts), SciQA (SciQ), MMLU, CoSQL, MathDial
    assert {"openbookqa", "arc-easy", "arc-challenge", "sciq", "mmlu", "cosql", "mathdial"} <= set(LOADERS)


def test_the_split_records_the_path(tmp_path):
    from turnrl.tasks import prepare_split

    path = write_jsonl(tmp_path / "md.jsonl", [ROW, dict(ROW, qid=43)])
    run = tmp_path / "run"
    prepare_split(DatasetConfig(name="mathdial", path=str(path), n_train=0, n_test=0), run)
    assert json.loads((run / "tasks" / "split.json").read_text())["path"] == str(path)
    with pytest.raises(ConfigError, match="path"):
        prepare_split(DatasetConfig(name="mathdial", path=str(tmp_path / "other.jsonl"), n_train=1, n_test=1), run)


# ------------------------------------------------------------------------------------------------ the import

def imported(tmp_path: Path, rows: list, *flags: str) -> list[Trajectory]:
    data = write_jsonl(tmp_path / "md.jsonl", rows)
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source", str(data), "--format", "mathdial",
                 *flags]) == 0
    return read_trajectories(tmp_path / "run" / SCORED)


def test_the_teacher_is_the_assistant_and_the_rating_the_reward(tmp_path):
    (t,) = imported(tmp_path, [ROW])
    assert t.messages == [
        {"role": "system", "content": MATHDIAL_SYSTEM.format(question=ROW["question"])},
        {"role": "user", "content": MATHDIAL_OPENING.format(solution=ROW["student_incorrect_solution"])},
        {"role": "assistant", "content": "Hi Cody, talk me through your solution"},
        {"role": "user", "content": "I added the bags and the apples."},  # "Cody:" is the student
        # the empty "(probing)" turn is left out; the next teacher turn follows the student's
        {"role": "assistant", "content": "How many apples are in 3 bags of 4?"},
        {"role": "user", "content": "7?"},
        {"role": "assistant", "content": "It is 3 x 4 = 12, so 12 - 2 = 10.\n\nDo you see?"},  # two turns, joined
        {"role": "user", "content": "Yes, 10 apples are left."},
    ]
    assert MATHDIAL_SYSTEM.startswith("You are a math teacher tutoring a student")
    assert t.reward == 0.5 and t.rewards == {"self_correctness": 0.5}
    assert t.group_id == "42" and t.id == "42#0"
    assert t.meta["teacher_moves"] == [["generic"], ["focus"], ["telling", "generic"]]  # the empty turn's move too
    assert t.meta["self-correctness"] == ROW["self-correctness"] and "conversation" not in t.meta


def test_ratings_map_to_rewards_and_conversations_of_one_problem_share_a_group(tmp_path):
    rows = [dict(ROW, **{"self-correctness": r}) for r in ("Yes", "Yes, but I had to reveal the answer", "No")]
    rows.append(dict(ROW, qid=7, **{"self-correctness": "No"}))
    ts = imported(tmp_path, rows)
    assert [t.reward for t in ts] == [1.0, 0.5, 0.0, 0.0]
    assert [t.group_id for t in ts] == ["42", "42", "42", "7"]


@pytest.mark.skipif(not MATHDIAL_TEST.exists(), reason="no local copy of MathDial's test split")
def test_the_real_test_split_imports(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["import", "--run_dir", str(run), "--source", str(MATHDIAL_TEST), "--format", "mathdial"]) == 2
    assert "row 228 (line 228): field 'self-correctness' is empty" in capsys.readouterr().err
    assert main(["import", "--run_dir", str(run), "--source", str(MATHDIAL_TEST), "--format", "mathdial",
                 "--skip_unrated", "true"]) == 0
    assert "left out 4 MathDial rows" in capsys.readouterr().out
    ts = read_trajectories(run / SCORED)
    assert len(ts) == 595 and sorted({t.reward for t in ts}) == [0.0, 0.5, 1.0]
    first = ts[0]
    assert first.group_id == "6000025" and first.reward == 1.0
    assert [m["role"] for m in first.messages] == ["system", "user"] + ["assistant", "user"] * 4
    assert first.messages[2]["content"] == "Hi Mariana, please talk me through your solution"
    assert first.messages[-1]["content"] == "So Julia bought a package of 10 spoons."


@pytest.mark.parametrize("change, field, expected", [
    ({"self-correctness": "Maybe"}, "self-correctness", "expected one of 'Yes'"),
    ({"self-correctness": None}, "self-correctness", "is empty"),
    ({"conversation": "Teacher: Hi|EOM|Bob: hello"}, "conversation", "turn 2 starts 'Bob: hello'"),
    ({"conversation": "Teacher: (focus)|EOM|Student: hello"}, "conversation", "no teacher turn with text"),
    ({"conversation": None}, "conversation", "expected the dialogue as text"),
    ({"question": 3}, "question", "expected text"),
])
def test_a_bad_mathdial_row_is_named_by_row_and_field(tmp_path, capsys, change, field, expected):
    data = write_jsonl(tmp_path / "md.jsonl", [ROW, dict(ROW, **change)])
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source", str(data), "--format", "mathdial"]) == 2
    err = capsys.readouterr().err
    assert f"{data}: row 2 (line 2): field '{field}'" in err and expected in err, err
    assert not (tmp_path / "run" / SCORED).exists()


def test_a_missing_field_is_named(tmp_path, capsys):
    row = {k: v for k, v in ROW.items() if k != "student_incorrect_solution"}
    data = write_jsonl(tmp_path / "md.jsonl", [row])
    assert main(["import", "--run_dir", str(tmp_path / "run"), "--source", str(data), "--format", "mathdial"]) == 2
    assert f"{data}: row 1 (line 1): field 'student_incorrect_solution' is missing" in capsys.readouterr().err


def test_unrated_rows_can_be_skipped(tmp_path):
    ts = imported(tmp_path, [ROW, dict(ROW, qid=5, **{"self-correctness": None})], "--skip_unrated", "true")
    assert [t.group_id for t in ts] == ["42"]


# ------------------------------------------------------------------------------------------------ the example

def _example():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("mathdial_example", BENCHMARKS / "mathdial_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_examples_split_keeps_each_problem_on_one_side(tmp_path):
    example = _example()
    rows = [dict(ROW, qid=q) for q in range(20) for _ in range(q % 3 + 1)]
    path = write_jsonl(tmp_path / "md.jsonl", rows)
    train, held = example.split_rows(path, 0.5, 0, 15, 100)
    assert not {r["qid"] for r in train} & {r["qid"] for r in held}
    assert len(train) <= 15 and {r["qid"] for r in held} | {r["qid"] for r in train} <= set(range(20))
    assert example.split_rows(path, 0.5, 0, 15, 100) == (train, held)


def test_the_example_cuts_a_conversation_after_a_teacher_turn(tmp_path, tokenizer):
    from turnrl.chat import encode_conversation
    from turnrl.models import stop_token_ids

    example = _example()
    (t,) = imported(tmp_path, [ROW])
    eot = stop_token_ids(tokenizer)
    full = len(encode_conversation(tokenizer, t.messages, eot).input_ids)
    assert example.truncate(t, tokenizer, eot, full) is t
    short = example.truncate(t, tokenizer, eot, full - 1)
    assert short.messages == t.messages[:7] and short.messages[-1]["role"] == "assistant"
    assert short.meta["teacher_moves"] == t.meta["teacher_moves"]
    assert example.truncate(t, tokenizer, eot, 10) is None


def test_a_path_for_another_dataset_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path: only mathdial and cosql"):
        load_tasks(DatasetConfig(name="sciq", path=str(tmp_path)))


def test_the_heldout_likelihood_table_by_outcome(tmp_path, tiny_model_dir):
    from turnrl.stages.heldout import markdown, measure

    rows = [dict(ROW, qid=q, **{"self-correctness": r}) for q, r in ((1, "Yes"), (2, "No"), (3, "Yes"))]
    ts = imported(tmp_path, rows)
    table = measure(ts, [("Base", str(tiny_model_dir)), ("Same", str(tiny_model_dir))])
    assert table["n"] == {"1.0": 2, "0.0": 1}
    base, same = table["policies"]["Base"], table["policies"]["Same"]
    assert base["1.0"]["mean"] < 0 and same["1.0"]["change"] == pytest.approx(0.0, abs=1e-6)
    assert same["best_minus_worst_change"]["mean"] == pytest.approx(0.0, abs=1e-6)
    text = markdown(table)
    assert "| reward 1.0 (n=2) | reward 0.0 (n=1) |" in text and text.count("\n") == 3
