"""CoSQL as 000's multiple-choice SQL questions (000 App. D), on a fixture in the released format
(tests/fixtures/cosql: tables.json and sql_state_tracking/cosql_{train,dev}.json); bad files are named by file,
dialogue and field.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from turnrl.envs.reasoning import ReasoningEnv
from turnrl.errors import ConfigError, InputError
from turnrl.tasks import INSTRUCTIONS, LETTERS, DatasetConfig, load_tasks

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cosql"

C0 = ("SELECT T2.Name FROM singer_in_concert AS T1 JOIN singer AS T2 ON T1.Singer_ID = T2.Singer_ID JOIN concert AS "
      "T3 ON T1.concert_ID = T3.concert_ID WHERE T3.Year = 2014")
C1 = "SELECT Country, count(*) FROM singer GROUP BY Country"
C2 = "SELECT Name, Capacity FROM stadium ORDER BY Average DESC LIMIT 1"


def tasks(path: Path = FIXTURE):
    return {t.id: t for t in load_tasks(DatasetConfig(name="cosql", path=str(path)))}


def test_one_question_per_dialogue_with_the_gold_query_and_three_from_its_database():
    loaded = tasks()
    assert list(loaded) == ["cosql/train-0", "cosql/train-1", "cosql/train-2", "cosql/dev-0", "cosql/dev-1",
                            "cosql/dev-2"]
    t = loaded["cosql/train-0"]
    assert t.source == "cosql" and t.meta == {"database_id": "concert_singer", "utterance":
                                              "What are the names of the singers who performed in a concert in 2014?"}
    assert len(t.choices) == 4 == len(set(t.choices)) and t.choices[LETTERS.index(t.answer)] == C0
    # The other two dialogues' final queries, then one of their turns' queries; C2's lower-case variant
    # ("select name,  capacity ... limit 1;") is C2 and is not offered twice.
    assert {C1, C2} <= set(t.choices)
    (fourth,) = set(t.choices) - {C0, C1, C2}
    assert fourth in ("SELECT Country FROM singer", "SELECT max(Average) FROM stadium")
    assert not any(c.startswith("select name") for c in t.choices)
    # Never a query of another database
    assert all("CAR" not in c for c in t.choices)


def test_the_question_has_the_utterance_the_schema_and_the_foreign_keys():
    t = tasks()["cosql/dev-2"]
    assert t.question.startswith("Your task is to generate SQL query based on the following question and "
                                 "information provided. What is the average horsepower of the cars made in 1974? "
                                 "Hint: Consider relationships between multiple tables.")
    assert "car_makers (Id, Maker, FullName, Country)" in t.question
    assert "cars_data (Id, MPG, Cylinders, Edispl, Horsepower, Weight, Accelerate, Year)" in t.question
    # foreign_keys [[5, 1], ...]: column 5 is countries.Continent, column 1 continents.ContId
    assert "'countries.Continent = continents.ContId'" in t.question
    assert "'cars_data.Id = car_names.MakeId'" in t.question
    assert t.choices[LETTERS.index(t.answer)] == "SELECT avg(Horsepower) FROM CARS_DATA WHERE Year = 1974"


def test_the_reasoning_environment_asks_it_with_cosqls_instruction():
    t = tasks()["cosql/dev-0"]
    first = ReasoningEnv().user_turn(t, 1)
    assert first.startswith(f"Question: {t.question}\nChoices:\nA. ")
    assert INSTRUCTIONS["cosql"] in first


def test_options_and_letters_are_deterministic():
    assert tasks() == tasks()
    assert sorted(t.answer for t in tasks().values()) != ["A"] * 6


def test_a_database_with_too_few_other_queries_leaves_its_dialogues_out(tmp_path):
    root = tmp_path / "cosql_dataset"
    shutil.copytree(FIXTURE, root)
    (root / "sql_state_tracking" / "cosql_dev.json").unlink()
    train = json.loads((root / "sql_state_tracking" / "cosql_train.json").read_text())
    (root / "sql_state_tracking" / "cosql_train.json").write_text(json.dumps(train[:2]))
    # two dialogues: each has one other final query and two turn queries, one of them its own gold
    with pytest.raises(InputError, match="no dialogue has three distractor queries"):
        tasks(root)


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d[1].pop("final"), "sql_state_tracking/cosql_train.json: dialogue 1: field 'final' is missing"),
    (lambda d: d[2]["final"].update(query=" "),
     "cosql_train.json: dialogue 2: field 'final.query' is missing or empty"),
    (lambda d: d[0].update(database_id="nope"), "dialogue 0: field 'database_id' is 'nope', which is not in"),
    (lambda d: d[0]["interaction"][1].update(query=3), "dialogue 0: field 'interaction[1].query' is not text"),
])
def test_a_bad_dialogue_is_named_by_file_dialogue_and_field(tmp_path, edit, expected):
    root = tmp_path / "cosql_dataset"
    shutil.copytree(FIXTURE, root)
    path = root / "sql_state_tracking" / "cosql_train.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        tasks(root)
    assert expected in str(err.value)


def test_a_bad_schema_is_named(tmp_path):
    root = tmp_path / "cosql_dataset"
    shutil.copytree(FIXTURE, root)
    dbs = json.loads((root / "tables.json").read_text())
    dbs[1]["foreign_keys"][0] = [5, 99]
    (root / "tables.json").write_text(json.dumps(dbs))
    with pytest.raises(InputError, match=r"tables.json: entry 1: field 'foreign_keys\[0\]' is \[5, 99\]"):
        tasks(root)


def test_the_folder_must_be_the_release(tmp_path):
    with pytest.raises(InputError, match="tables.json: file not found"):
        tasks(tmp_path)
    (tmp_path / "tables.json").write_text(json.dumps(json.loads((FIXTURE / "tables.json").read_text())))
    with pytest.raises(InputError, match="no sql_state_tracking/cosql_train.json or cosql_dev.json"):
        tasks(tmp_path)
    with pytest.raises(ConfigError, match="--dataset.path"):
        load_tasks(DatasetConfig(name="cosql"))
