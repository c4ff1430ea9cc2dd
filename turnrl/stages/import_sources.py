"""The rows of a log to import (``turnrl import``, :mod:`turnrl.stages.importer`): JSON lines, a JSON array,
Parquet, CSV or a Hugging Face dataset (a ``save_to_disk`` folder, a folder of data files or a hub id, loaded with
``datasets``), each row with how an error names it (file, row, line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from turnrl.errors import ConfigError, InputError
from turnrl.records import iter_jsonl, read_json

TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet"}
JSON_SUFFIXES = (".jsonl", ".json")


@dataclass
class Row:
    number: int
    """1-based, in file order."""
    where: str
    """How errors name it: file and row (and line, for JSON lines)."""
    data: dict[str, Any]


@dataclass
class Source:
    label: str
    rows: Iterator[Row]
    columns: list[str] | None
    """Every row's columns (tables and datasets); None for JSON lines, whose rows may differ."""
    typed: bool
    """False for CSV, whose cells are text: numeric strings are then read as numbers."""


# ------------------------------------------------------------------------------------------------------ reading

def _json_rows(path: Path) -> Iterator[Row]:
    with path.open("rb") as fh:
        start = fh.read(4096).lstrip()
    if path.suffix == ".json" and start.startswith(b"["):  # a JSON array of rows; otherwise JSON lines
        data = read_json(path)
        for i, obj in enumerate(data, start=1):
            yield Row(i, f"{path}: row {i}", obj)
        return
    for i, (lineno, obj) in enumerate(iter_jsonl(path), start=1):
        yield Row(i, f"{path}: row {i} (line {lineno})", obj)


def _dataset_rows(ds, label: str) -> Iterator[Row]:
    for i, obj in enumerate(ds, start=1):
        yield Row(i, f"{label}: row {i}", obj)


def _pick_split(ds, label: str, split: str):
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in ds:
            raise InputError(f"{label}: no split {split!r}; splits are {', '.join(ds)} (choose one with --split)")
        return ds[split]
    return ds


def open_source(source: str, split: str = "train", subset: str = "") -> Source:
    """The rows of ``source`` (a file, a dataset folder or a hub id; ``split`` and ``subset`` of a dataset), each
    with how an error names it."""
    if not source:
        raise ConfigError("source: not given; name a .jsonl/.json/.parquet/.csv file, a dataset folder or a hub id")
    path = Path(source)
    if path.is_file():
        if path.suffix in JSON_SUFFIXES:
            return Source(str(path), _json_rows(path), None, typed=True)
        kind = TABLE_SUFFIXES.get(path.suffix)
        if kind is None:
            raise InputError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl, .json, .parquet or "
                             ".csv, a Hugging Face dataset folder or a hub id")
        import datasets

        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # datasets raises many types for malformed files
            raise InputError(f"{path}: could not read as {kind}: {exc}") from None
        return Source(str(path), _dataset_rows(ds, str(path)), list(ds.column_names), typed=kind != "csv")
    if path.suffix in JSON_SUFFIXES + tuple(TABLE_SUFFIXES) and not path.exists():
        raise InputError(f"{path}: file not found")
    import datasets

    label = f"{source} [{split}]"
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = _pick_split(datasets.load_from_disk(str(path)), label, split)
        else:
            ds = datasets.load_dataset(source, subset or None, split=split)
    except InputError:
        raise
    except Exception as exc:
        where = "folder" if path.is_dir() else "path or hub dataset"
        raise InputError(f"{source}: could not load this {where} with datasets: {exc}") from None
    return Source(label, _dataset_rows(ds, label), list(ds.column_names), typed=True)
