"""The records that flow between stages, and the JSONL files that hold them.

Every stage reads the previous stage's files and writes its own (docs/design.md sections 1-2). Reads validate
each line and name the file and line of anything wrong; writes are atomic (temporary file + rename) or, for long
stages, appends of whole records that a restarted run can pick up from (see :class:`ResumableJsonlWriter`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from turnrl.errors import InputError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Task:
    """One question, normalised from any dataset (docs/design.md section 2).

    ``answer`` is an option letter ("A".."J") for multiple-choice tasks and a value (a number or expression as a
    string) for open-answer tasks such as GSM8K and MATH.
    """

    id: str
    source: str
    question: str
    answer: str
    choices: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        return [chr(ord("A") + i) for i in range(len(self.choices))]


@dataclass
class TurnInfo:
    """What happened in one assistant turn: its length and whether it stopped by itself."""

    tokens: int
    truncated: bool


@dataclass
class Trajectory:
    """One logged conversation in the ``messages`` format, with everything needed to score and train on it.

    Assistant messages are the agent's actions; every other message after the first user turn is an observation.
    ``turns[i]`` describes the i-th assistant message. ``reward`` is the scalar the algorithms use; ``rewards``
    holds its named components.
    """

    id: str
    task_id: str
    group_id: str
    messages: list[dict[str, str]]
    sample: int = 0
    policy: dict[str, Any] = field(default_factory=dict)
    temperature: float = 0.0
    seed: int = 0
    env: dict[str, Any] = field(default_factory=dict)
    turns: list[TurnInfo] = field(default_factory=list)
    finish: str = "done"
    rewards: dict[str, Any] = field(default_factory=dict)
    reward: float | None = None
    timing: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def assistant_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]

    def final_assistant(self) -> str:
        idx = self.assistant_indices()
        return self.messages[idx[-1]]["content"] if idx else ""


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [n for n in required if n not in data]
    if missing:
        raise InputError(f"{where}: missing field {missing[0]!r} (a {cls.__name__} needs {', '.join(required)})")
    kwargs = {k: v for k, v in data.items() if k in names}
    if cls is Trajectory:
        _check_messages(kwargs["messages"], where)
        _check_rewards(kwargs, where)
        kwargs["turns"] = [_turn_info(t, f"{where}: turns[{i}]") for i, t in enumerate(kwargs.get("turns", []))]
        if not isinstance(kwargs["group_id"], str) or not kwargs["group_id"].strip():
            raise InputError(f"{where}: field 'group_id' is {kwargs['group_id']!r}; expected the non-empty id of the "
                             "context x its trajectories share (an empty one would pool every question into one "
                             "group for Swift and the preference pairs)")
    if cls is Task:
        for key in ("id", "question", "answer"):
            kwargs[key] = str(kwargs[key])
        if not isinstance(kwargs.get("choices", []), list):
            raise InputError(f"{where}: field 'choices' must be a list of strings")
    return cls(**kwargs)


def _check_rewards(fields: dict[str, Any], where: str) -> None:
    """A reward is a finite number or null: NaN or infinity (which JSON parsers accept) would train a NaN model,
    and a numeric string would be coerced silently."""
    values = [("reward", fields.get("reward"))]
    rewards = fields.get("rewards", {})
    if not isinstance(rewards, dict):
        raise InputError(f"{where}: field 'rewards' must be an object of named reward components")
    values += [(f"rewards.{k}", v) for k, v in rewards.items()]
    for name, value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: field {name!r} is {value!r}; expected a number")
        if not math.isfinite(value):
            raise InputError(f"{where}: field {name!r} is {value}; expected a finite number")


def _turn_info(entry: Any, where: str) -> TurnInfo:
    """One entry of ``turns``: exactly {"tokens": an integer, "truncated": true or false}."""
    if not isinstance(entry, dict) or set(entry) != {"tokens", "truncated"} or \
            isinstance(entry["tokens"], bool) or not isinstance(entry["tokens"], int) or \
            not isinstance(entry["truncated"], bool):
        raise InputError(f"{where}: {json.dumps(entry)[:200]}; expected an object with exactly tokens (an integer) "
                         "and truncated (true or false)")
    return TurnInfo(**entry)


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise InputError(f"{where}: messages[{i}].role is {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise InputError(f"{where}: messages[{i}].content must be a string")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-empty line; a malformed line raises naming file and line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                                 f"{exc.start + 1}); JSONL files are UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_records(path: str | Path, cls: type) -> list[Any]:
    return [_from_dict(cls, obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def read_tasks(path: str | Path) -> list[Task]:
    return read_records(path, Task)


def read_trajectories(path: str | Path) -> list[Trajectory]:
    trajectories = read_records(path, Trajectory)
    seen: set[str] = set()
    for t in trajectories:
        if t.id in seen:
            raise InputError(f"{path}: trajectory id {t.id!r} appears more than once")
        seen.add(t.id)
    return trajectories


def dumps(record: Any) -> str:
    obj = to_dict(record) if dataclasses.is_dataclass(record) else record
    return json.dumps(obj, ensure_ascii=False)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole file so that readers see either the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; an ordinary write respects the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; restore it at once
    os.umask(mask)
    return mask


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(dumps(r) + "\n" for r in records))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


class ResumableJsonlWriter:
    """Append-only JSONL output of a long stage that a killed run can continue.

    Records are appended in a deterministic order and flushed to disk batch by batch. A kill can only leave a
    prefix of that order plus, at worst, one partly written line; :meth:`open` drops that partial line and reports
    the ids already done, so a restarted run writes exactly the missing records and the file ends up identical to
    the one an uninterrupted run writes.
    """

    def __init__(self, path: str | Path, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.done: set[str] = set()
        self._fh = None

    def open(self) -> "ResumableJsonlWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            keep = data.rfind(b"\n") + 1  # everything after the last newline is a partly written record
            if keep < len(data):
                with self.path.open("r+b") as fh:
                    fh.truncate(keep)
            for lineno, obj in iter_jsonl(self.path):
                if self.key not in obj:
                    raise InputError(f"{self.path}:{lineno}: missing field {self.key!r}; cannot resume from this file")
                self.done.add(str(obj[self.key]))
        self._fh = self.path.open("a", encoding="utf-8")
        return self

    def write(self, records: Iterable[Any]) -> None:
        assert self._fh is not None, "call open() first"
        for record in records:
            obj = to_dict(record) if dataclasses.is_dataclass(record) else record
            if str(obj[self.key]) in self.done:
                continue
            self._fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            self.done.add(str(obj[self.key]))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ResumableJsonlWriter":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()
