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
import types
import typing
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

    def shown_in(self, order: list[int]) -> "Task":
        """The task with its options shown in ``order``: option i of the result is option ``order[i]`` of this
        task, and the gold letter moves with its option. Option order is drawn per conversation (see
        :func:`turnrl.tasks.option_order`) so that no letter is worth more than another."""
        if not self.choices:
            return self
        if sorted(order) != list(range(len(self.choices))):
            raise ValueError(f"task {self.id}: {order} is not an order of its {len(self.choices)} options")
        gold = self.letters.index(self.answer)
        return dataclasses.replace(self, choices=[self.choices[j] for j in order],
                                   answer=self.letters[order.index(gold)])

    def original_letter(self, letter: str | None, order: list[int]) -> str | None:
        """The letter (in this task's own order) of the option shown as ``letter`` under ``order``."""
        if letter is None or not order:
            return letter
        return self.letters[order[self.letters.index(letter)]]


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
    option_orders: list[list[int]] = field(default_factory=list)
    """Multiple choice: the order the options were shown in when each assistant turn was written (one entry per
    assistant turn; see :meth:`Task.shown_in`). Empty: the task's own order (imported logs, open answers)."""

    def assistant_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.messages) if m["role"] == "assistant"]

    def final_assistant(self) -> str:
        idx = self.assistant_indices()
        return self.messages[idx[-1]]["content"] if idx else ""

    def order_at(self, turn: int = -1) -> list[int]:
        """The option order of assistant turn ``turn`` (the final one by default); [] for the task's own."""
        return self.option_orders[turn] if self.option_orders else []


def shown_task(task: Task, traj: Trajectory, turn: int = -1) -> Task:
    """The task as ``traj`` showed it when its assistant turn ``turn`` was written (the final one by default):
    every reading of a conversation's answers goes through this, so letters are read in the order the policy saw."""
    order = traj.order_at(turn)
    return task.shown_in(order) if order and task.choices else task


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
        if not isinstance(kwargs["group_id"], str) or not kwargs["group_id"].strip():
            raise InputError(f"{where}: field 'group_id' is {kwargs['group_id']!r}; expected the non-empty id of the "
                             "context x its trajectories share (an empty one would pool every question into one "
                             "group for Swift and the preference pairs)")
    if cls is Task:
        for key in ("id", "question", "answer"):
            if isinstance(kwargs[key], (int, float)) and not isinstance(kwargs[key], bool):
                kwargs[key] = str(kwargs[key])  # a numeric id or answer ("42") is read as its text
    _check_types(cls, kwargs, where, skip=("messages", "reward", "rewards"))  # those have their own checks, above
    if cls is Trajectory:
        kwargs["turns"] = [_turn_info(t, f"{where}: turns[{i}]") for i, t in enumerate(kwargs.get("turns", []))]
        _check_option_orders(kwargs, where)
    return cls(**kwargs)


def _check_option_orders(fields: dict[str, Any], where: str) -> None:
    """``option_orders``: empty, or one order (a permutation of 0..k-1) per assistant turn."""
    orders = fields.get("option_orders") or []
    turns = sum(m["role"] == "assistant" for m in fields["messages"])
    if orders and len(orders) != turns:
        raise InputError(f"{where}: field 'option_orders' has {len(orders)} orders for {turns} assistant turns; "
                         "expected one per assistant turn (or none)")
    for i, order in enumerate(orders):
        if sorted(order) != list(range(len(order))):
            raise InputError(f"{where}: field 'option_orders[{i}]' is {_short(order)}; expected an order of the "
                             "options 0..k-1, each once")


_HINTS: dict[type, dict[str, Any]] = {}
_SCALARS = {str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            type(None): lambda v: v is None}


def _check_types(cls: type, fields: dict[str, Any], where: str, skip: tuple[str, ...] = ()) -> None:
    """Every field has its annotated type (elements of lists and values of objects too), or an InputError names
    the file, line, field and what was expected: a record must not fail later with a TypeError (an unhashable
    list as an id)."""
    hints = _HINTS.get(cls) or _HINTS.setdefault(cls, typing.get_type_hints(cls))
    for name, value in fields.items():
        if name not in skip and (problem := _type_problem(value, hints[name], name)) is not None:
            path, bad, expected = problem
            raise InputError(f"{where}: field {path!r} is {_short(bad)}; expected {expected}")


def _type_problem(value: Any, hint: Any, path: str) -> tuple[str, Any, str] | None:
    """(path, value, expected) of the first part of ``value`` that is not of type ``hint``, or None. Types other
    than str, int, float, bool, None, Any, unions, lists, dicts and dataclasses are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        if any(_type_problem(value, arg, path) is None for arg in args):
            return None
        return path, value, " or ".join(_describe(arg) for arg in args)
    if hint is list or origin is list:
        if not isinstance(value, list):
            return path, value, _describe(hint)
        items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
    elif hint is dict or origin is dict:
        if not isinstance(value, dict):
            return path, value, _describe(hint)
        items = ((f"{path}.{key}", item) for key, item in value.items())
    else:
        if dataclasses.is_dataclass(hint):
            ok = isinstance(value, dict)
        else:
            ok = _SCALARS[hint](value) if hint in _SCALARS else True
        return None if ok else (path, value, _describe(hint))
    element = args[-1] if args else Any  # list[X]: X; dict[str, X]: X (JSON keys are strings)
    return next((p for item_path, item in items if (p := _type_problem(item, element, item_path)) is not None), None)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if hint is list or origin is list:
        return "a list" + {str: " of strings", int: " of integers"}.get(args[0] if args else None, "")
    if hint is dict or origin is dict or dataclasses.is_dataclass(hint):
        return "an object"
    return {str: "a string", int: "an integer", float: "a finite number", bool: "true or false",
            type(None): "null"}.get(hint, str(hint))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


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
                # Without its newline, so that an error at the end of the line is placed on it, not on the next.
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None


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
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; JSON files are UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None


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
