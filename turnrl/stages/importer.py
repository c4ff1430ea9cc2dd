"""``turnrl import``: logged conversations from elsewhere as the run's scored log (docs/import-export.md).

Reads JSONL, JSON, Parquet, CSV or a Hugging Face dataset (a ``save_to_disk`` folder, a folder of data files or a
hub id, loaded with ``datasets``; :mod:`turnrl.stages.import_sources`) in the shapes logs come in:

- TRL conversational and OpenAI chat / fine-tuning logs: a ``messages`` list of ``{role, content}`` (OpenAI's
  ``developer`` role is read as ``system``, its legacy ``function`` role as ``tool``; ``content`` may be a list of
  text parts; an assistant message with ``tool_calls`` and no content keeps its calls; a ``tools`` column is kept
  in ``meta.tools`` and written back by ``turnrl export``);
- ShareGPT: ``conversations`` of ``{from, value}``, with ``human`` / ``gpt`` / ``system`` read as user /
  assistant / system (``observation`` and ``function`` as ``tool``);
- TRL prompt-completion: ``prompt`` and ``completion`` lists of messages, joined into one conversation;
- MathDial (``--format mathdial``): its rows of teacher-student tutoring dialogues, the teacher as the assistant,
  with the reward read from the teacher's rating of the outcome (:func:`turnrl.stages.import_mathdial.mathdial_row`).

Each row becomes one :class:`~turnrl.records.Trajectory` with its scalar ``reward`` from one column
(``reward_column``) or a weighted sum of several (``reward_columns`` with ``reward_weights``: non-negative,
summing to 1, as the score stage's ``reward.weights``), each column also kept as a named component in
``rewards``. ``group_id`` (the context x that Swift standardises over and the pairings pair within) is a column's
value or, by default, a hash of the conversation's system prompt and first user message. Every other column is
kept in ``meta``.

The output is ``scored/trajectories.jsonl`` (what ``turnrl train`` reads), written whole or not at all. An imported
log has no :class:`~turnrl.records.Task`: training reads only the log, and the report reads tasks only where they
exist. Data still flow one way: nothing is written to ``tasks/`` (``turnrl evaluate`` creates the held-out split
from its own ``--dataset``) or ``rollouts/``. ``turnrl score`` is not run on an imported log: its components need
each task's gold answer, which a log from elsewhere does not have; the rewards come with the data.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from turnrl.errors import ConfigError, InputError
from turnrl.layout import SCORED
from turnrl.records import Trajectory, atomic_write_text, dumps
from turnrl.log import get_logger
from turnrl.stages.import_mathdial import MATHDIAL_FIELDS, MATHDIAL_REWARD, mathdial_row
from turnrl.stages.import_sources import open_source, Row

logger = get_logger(__name__)

ROLE_NAMES = {
    "system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
    "developer": "system",  # OpenAI's newer name for the system message
    "function": "tool",  # OpenAI's legacy function-result role
    "human": "user", "gpt": "assistant", "observation": "tool",  # ShareGPT
}
"""The roles (and ShareGPT ``from`` values) read, and the turnrl role each becomes."""

FORMATS = ("auto", "messages", "sharegpt", "prompt-completion", "mathdial")
KEPT_MESSAGE_KEYS = ("name", "tool_calls", "tool_call_id", "function_call", "weight")
"""Keys of a message kept beside role and content (OpenAI's tool calls, fine-tuning weights)."""


@dataclass
class ImportConfig:
    """Import logged conversations with rewards as the run's scored log."""

    run_dir: str = "runs/turnrl"
    source: str = ""
    """The data: a .jsonl/.json/.parquet/.csv file, a Hugging Face dataset folder (save_to_disk, or a folder of data
    files) or a hub id. A path is relative to the current directory, not to the run directory."""
    format: Literal["auto", "messages", "sharegpt", "prompt-completion", "mathdial"] = "auto"
    """auto (by the columns: messages, conversations, or prompt + completion), messages (TRL / OpenAI
    {role, content}), sharegpt ({from, value}), prompt-completion (TRL's two lists of messages) or mathdial
    (MathDial's rows: the teacher is the assistant, the reward is the self-correctness rating, the group the qid;
    docs/import-export.md)."""
    messages_column: str = ""
    """The column holding the conversation (default: messages, or conversations for ShareGPT)."""
    split: str = "train"
    """Hugging Face datasets: the split to read."""
    subset: str = ""
    """Hub datasets: the configuration (subset) name, if the dataset has several."""
    reward_column: str = "reward"
    """The column holding each conversation's scalar reward (unused when reward_columns or reward_weights are set)."""
    reward_columns: list[str] = field(default_factory=list)
    """Several reward component columns, e.g. [helpful, correct]; the reward is their weighted sum."""
    reward_weights: dict[str, float] = field(default_factory=dict)
    """Component column -> weight, non-negative and summing to 1 (as reward.weights of the score stage); default:
    equal weights. Given alone, its keys are the reward columns."""
    group_column: str = ""
    """The column naming each conversation's context x (Swift standardises within it, DPO pairs within it).
    Default: a hash of the system prompt and the first user message."""
    id_column: str = ""
    """A column of unique trajectory ids (default: <group>#<k>, k counting the group's rows in file order)."""
    policy_model: str = ""
    """The model that wrote the conversations, recorded as the trajectories' policy: `turnrl train` starts from it
    unless --model says otherwise (leave empty when it is not a model turnrl can load, e.g. a hosted API)."""
    skip_unrated: bool = False
    """mathdial: leave out rows whose self-correctness rating is empty (counted) instead of stopping at them."""
    output: str = SCORED
    """The log to write, in the run directory."""
    overwrite: bool = False
    """Replace an existing output with different content (otherwise refused)."""


# ----------------------------------------------------------------------------------------------- normalising

def _parsed(value: Any, where: str, name: str) -> Any:
    """A list column stored as JSON text (CSV, some Parquet files) parsed; anything else as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: field {name!r} is text that is not valid JSON ({exc.msg} at column "
                             f"{exc.colno}); expected a list of messages") from None
    return value


def _content(message: dict[str, Any], where: str, field_name: str) -> str:
    content = message.get("content") if "content" in message else message.get("value")
    if isinstance(content, str):
        return content
    if content is None:
        if message.get("tool_calls") or message.get("function_call"):
            return ""  # an OpenAI assistant turn that only calls tools
        raise InputError(f"{where}: field {field_name!r} is missing or null; expected the message's text")
    if isinstance(content, list):  # OpenAI content parts
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InputError(f"{where}: field '{field_name}[{j}]' is a {kind!r} part; only text parts are "
                                 "imported")
        return "".join(texts)
    raise InputError(f"{where}: field {field_name!r} is {type(content).__name__} {str(content)[:60]!r}; expected "
                     "text")


def _message(m: Any, i: int, column: str, fmt: str, where: str) -> dict[str, Any]:
    name = f"{column}[{i}]"
    if not isinstance(m, dict):
        raise InputError(f"{where}: field {name!r} is {type(m).__name__}; expected an object with "
                         f"{'from and value' if fmt == 'sharegpt' else 'role and content'}")
    if fmt == "sharegpt" or (fmt != "messages" and m.get("role") is None and m.get("from") is not None):
        role_key, content_key = "from", "value"
    else:
        role_key, content_key = "role", "content"
    raw = m.get(role_key)
    if raw is None:
        raise InputError(f"{where}: field '{name}.{role_key}' is missing")
    role = ROLE_NAMES.get(str(raw).strip().lower()) if isinstance(raw, str) else None
    if role is None:
        raise InputError(f"{where}: field '{name}.{role_key}' is {raw!r}; expected one of "
                         f"{', '.join(ROLE_NAMES)}")
    out: dict[str, Any] = {"role": role, "content": _content({"content": m.get(content_key),
                                                               "tool_calls": m.get("tool_calls"),
                                                               "function_call": m.get("function_call")},
                                                              where, f"{name}.{content_key}")}
    # Arrow tables give every message every key any message has (null where absent): keep only real values.
    out.update({k: m[k] for k in KEPT_MESSAGE_KEYS if m.get(k) is not None})
    return out


def detect_format(cfg: ImportConfig, columns: list[str], label: str) -> tuple[str, str]:
    """(format, messages column) from the config and the first row's (or the table's) columns."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format: {cfg.format!r}; expected one of {', '.join(FORMATS)}")
    if cfg.messages_column:
        fmt = cfg.format if cfg.format != "auto" else ("sharegpt" if cfg.messages_column == "conversations"
                                                      else "messages")
        if fmt == "prompt-completion":
            raise ConfigError("messages_column: prompt-completion data have two columns, prompt and completion")
        return fmt, cfg.messages_column
    if cfg.format == "prompt-completion" or (cfg.format == "auto" and "messages" not in columns and
                                             "conversations" not in columns and
                                             {"prompt", "completion"} <= set(columns)):
        return "prompt-completion", "prompt"
    if cfg.format == "sharegpt":
        return "sharegpt", "conversations"
    if cfg.format == "messages":
        return "messages", "messages"
    if "messages" in columns:
        return "messages", "messages"
    if "conversations" in columns:
        return "auto", "conversations"  # ShareGPT usually; role/content entries are read as such
    raise InputError(f"{label}: no column messages, conversations or prompt + completion; columns are "
                     f"{sorted(columns)} (name the conversation's column with --messages_column)")


def conversation(row: Row, fmt: str, column: str) -> list[dict[str, Any]]:
    """The row's messages, normalised and checked: non-empty, known roles, an assistant turn after a user turn."""
    columns = ["prompt", "completion"] if fmt == "prompt-completion" else [column]
    messages: list[dict[str, Any]] = []
    for col in columns:
        if row.data.get(col) is None:
            raise InputError(f"{row.where}: field {col!r} is missing; expected a list of messages")
        value = _parsed(row.data[col], row.where, col)
        if not isinstance(value, list):
            raise InputError(f"{row.where}: field {col!r} is {type(value).__name__}; expected a list of messages")
        messages += [_message(m, i, col, fmt, row.where) for i, m in enumerate(value)]
    if not messages:
        raise InputError(f"{row.where}: field {column!r} is an empty conversation")
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise InputError(f"{row.where}: field {column!r} has no assistant message (roles: {', '.join(roles)}); "
                         "there is no action to learn from")
    if "user" not in roles[: roles.index("assistant")]:
        raise InputError(f"{row.where}: field {column!r} has no user message before the first assistant message "
                         f"(roles: {', '.join(roles)}); the prompt x is the system and user turns before it")
    return messages


def _number(value: Any, where: str, name: str, typed: bool) -> float:
    if isinstance(value, str) and not typed:
        try:
            value = float(value)
        except ValueError:
            pass
    if value is None:
        raise InputError(f"{where}: field {name!r} is empty; expected a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: field {name!r} is {value!r}; expected a number")
    if not math.isfinite(value):
        raise InputError(f"{where}: field {name!r} is {value}; expected a finite number")
    return float(value)


def reward_spec(cfg: ImportConfig) -> tuple[list[str], dict[str, float] | None]:
    """The reward columns and, for several components, their weights (None: one column is the reward)."""
    if not cfg.reward_columns and not cfg.reward_weights:
        if not cfg.reward_column:
            raise ConfigError("reward_column: empty; name the column that holds the reward (or reward_columns)")
        return [cfg.reward_column], None
    if cfg.reward_column not in ("", ImportConfig.reward_column):
        raise ConfigError(f"reward_column: {cfg.reward_column!r} and reward_columns / reward_weights are both set; "
                          "give the one reward column, or the component columns and their weights")
    columns = list(cfg.reward_columns or cfg.reward_weights)
    if len(set(columns)) != len(columns):
        raise ConfigError(f"reward_columns: {columns} names a column twice")
    weights = dict(cfg.reward_weights) or {c: 1.0 / len(columns) for c in columns}
    unknown = [k for k in weights if k not in columns]
    if unknown:
        raise ConfigError(f"reward_weights.{unknown[0]}: not one of reward_columns {columns}")
    unweighted = [c for c in columns if c not in weights]
    if unweighted:
        raise ConfigError(f"reward_weights: no weight for column {unweighted[0]!r}; give every reward column one")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"reward_weights.{name}: {w!r}; weights must be numbers >= 0")
    if abs(sum(weights.values()) - 1.0) > 1e-6:
        raise ConfigError(f"reward_weights: they sum to {sum(weights.values()):.4g}; they must sum to 1 (as "
                          "reward.weights of the score stage)")
    return columns, {c: float(weights[c]) for c in columns}


def context_group(messages: list[dict[str, Any]]) -> str:
    """The default context x: a hash of the system messages before the first user message and that message."""
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    system = [m["content"] for m in messages[:first_user] if m["role"] == "system"]
    key = json.dumps({"system": system, "user": messages[first_user]["content"]}, ensure_ascii=False,
                     sort_keys=True)
    return "x-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    """A cell as JSON: dates as ISO text, decimals as numbers, anything else unknown as text."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def mathdial_config(cfg: ImportConfig) -> ImportConfig:
    """The defaults of a MathDial import: the reward is the self-correctness rating and the group the qid (its
    conversations about one problem and one incorrect solution share their context x), unless set otherwise."""
    if cfg.reward_column not in ("", ImportConfig.reward_column) or cfg.reward_columns or cfg.reward_weights:
        return replace(cfg, group_column=cfg.group_column or "qid")
    return replace(cfg, reward_column=MATHDIAL_REWARD, group_column=cfg.group_column or "qid")


# ------------------------------------------------------------------------------------------------- the stage

def read_conversations(cfg: ImportConfig) -> list[Trajectory]:
    """Every row of the source as a scored trajectory; the first bad row raises, naming file, row and field."""
    source = open_source(cfg.source, cfg.split, cfg.subset)
    mathdial = cfg.format == "mathdial"
    if mathdial:
        cfg = mathdial_config(cfg)
    reward_columns, weights = reward_spec(cfg)
    if source.columns is not None:
        produced = {"messages", MATHDIAL_REWARD, "teacher_moves"} if mathdial else set()
        for col in [*MATHDIAL_FIELDS] * mathdial + reward_columns + [c for c in (cfg.group_column, cfg.id_column)
                                                                     if c]:
            if col not in source.columns and col not in produced:
                raise InputError(f"{source.label}: no column {col!r}; columns are {source.columns}")
    fmt = column = None
    skipped = 0
    drafts: list[tuple[Row, list[dict[str, Any]], str, dict[str, float], float]] = []
    for row in source.rows:
        if not isinstance(row.data, dict):
            raise InputError(f"{row.where}: expected an object (one conversation), got {type(row.data).__name__}")
        if mathdial:
            converted = mathdial_row(row, cfg.skip_unrated)
            if converted is None:
                skipped += 1
                continue
            row = converted
            fmt, column = "messages", "messages"
        if fmt is None:
            fmt, column = detect_format(cfg, source.columns or list(row.data), source.label)
        messages = conversation(row, fmt, column)
        components = {}
        for col in reward_columns:
            if col not in row.data:
                found = sorted(source.columns or row.data)
                raise InputError(f"{row.where}: field {col!r} is missing; expected the reward (a number). Columns "
                                 f"found: {', '.join(found)}. Name the reward's column with --reward_column (or "
                                 "several with --reward_columns)")
            components[col] = _number(row.data[col], row.where, col, source.typed)
        reward = components[reward_columns[0]] if weights is None else \
            float(sum(w * components[c] for c, w in weights.items()))
        if cfg.group_column:
            value = row.data.get(cfg.group_column)
            if value is None or not str(value).strip():
                raise InputError(f"{row.where}: field {cfg.group_column!r} is {value!r}; expected the group (the "
                                 "context x) of this conversation")
            group = str(value).strip()
        else:
            group = context_group(messages)
        drafts.append((row, messages, group, components, reward))
    if skipped:
        logger.info(f"import: left out {skipped} MathDial rows without a self-correctness rating (--skip_unrated)")
    if not drafts:
        raise InputError(f"{source.label}: no rows to import")
    used = {column, *reward_columns, cfg.group_column, cfg.id_column} | (
        {"prompt", "completion"} if fmt == "prompt-completion" else set())
    trajectories, seen, samples = [], {}, Counter()
    for row, messages, group, components, reward in drafts:
        k = samples[group]
        samples[group] += 1
        if cfg.id_column:
            value = row.data.get(cfg.id_column)
            if value is None or not str(value).strip():
                raise InputError(f"{row.where}: field {cfg.id_column!r} is {value!r}; expected a trajectory id")
            tid = str(value).strip()
        else:
            tid = f"{group}#{k}"
        if tid in seen:
            raise InputError(f"{row.where}: field {cfg.id_column or 'id'!r}: trajectory id {tid!r} is also that of "
                             f"row {seen[tid]}; ids must be unique")
        seen[tid] = row.number
        meta = {str(k2): _jsonable(v) for k2, v in row.data.items() if k2 not in used}
        meta["imported_from"] = {"source": source.label, "row": row.number}
        trajectories.append(Trajectory(
            id=tid, task_id=group, group_id=group, messages=messages, sample=k,
            policy={"model": cfg.policy_model} if cfg.policy_model else {}, env={"name": "import"},
            rewards=components, reward=reward, meta=meta))
    return trajectories


def import_log(cfg: ImportConfig) -> Path:
    """Write the source's conversations as the run's scored log; return its path."""
    trajectories = read_conversations(cfg)
    out = Path(cfg.run_dir) / cfg.output
    text = "".join(dumps(t) + "\n" for t in trajectories)
    if out.exists() and not cfg.overwrite:
        if out.read_text(encoding="utf-8") == text:
            logger.info(f"import: {out} already holds these {len(trajectories)} trajectories; nothing to do")
            return out
        raise ConfigError(f"{out} exists (another log); pass --overwrite true to replace it, or another --output")
    atomic_write_text(out, text)
    sizes = Counter(t.group_id for t in trajectories)
    single = sum(n == 1 for n in sizes.values())
    rewards = [float(t.reward) for t in trajectories]  # type: ignore[arg-type]
    logger.info(f"import: {len(trajectories)} trajectories in {len(sizes)} groups, mean reward "
                f"{sum(rewards) / len(rewards):.3f} -> {out}")
    logger.info(f"import: {single} of {len(sizes)} groups have only one member (Swift's standardisation gives those "
                "weight 0, and the preference pairings skip them)"
                + ("; no group has two members: pass --group_column if the log records its contexts"
                   if single == len(sizes) else ""))
    return out
