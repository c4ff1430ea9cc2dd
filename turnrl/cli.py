"""The ``turnrl`` command. Each subcommand is a config dataclass; YAML files (``--config``) and flags mirror it.

Flags name config fields by their dotted path (``--rollout.samples 3``, ``--optim.learning_rate 1e-5``); a YAML
file holds the same keys nested. ``turnrl <command> --print_config`` prints the full config of a command.
Errors in the user's input print one line naming the file, line or field and exit with status 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable

from turnrl.algorithms.config import RENAME_NOTES as ALGO_RENAME_NOTES, RENAMED as ALGO_RENAMED
from turnrl.errors import TurnrlError


def _commands() -> dict[str, tuple[type, Callable[[Any], Any], str]]:
    from turnrl.stages.compare import CompareConfig, compare
    from turnrl.workflows.demo import DemoConfig, demo
    from turnrl.stages.evaluate import EvaluateConfig, evaluate
    from turnrl.stages.export import ExportConfig, export
    from turnrl.stages.harness import HarnessConfig, harness
    from turnrl.stages.heldout import HeldoutConfig, heldout
    from turnrl.stages.importer import ImportConfig, import_log
    from turnrl.workflows.iterate import IterateConfig, iterate
    from turnrl.workflows.pipeline import RunConfig, run
    from turnrl.stages.rejudge import RejudgeConfig, rejudge
    from turnrl.stages.score import ScoreConfig, score
    from turnrl.serve import ServeConfig, serve
    from turnrl.stages.simulate import SimulateConfig, simulate
    from turnrl.workflows.sweep import SweepConfig, sweep
    from turnrl.train.config import TrainConfig

    def train_cmd(cfg: TrainConfig) -> Any:
        from turnrl.train import train

        # Every field, by name: a field train() does not take fails here instead of being dropped.
        return train(**{f.name: getattr(cfg, f.name) for f in fields(cfg)})

    return {
        "simulate": (SimulateConfig, simulate, "Roll out the logging policy: m trajectories per task, as JSONL."),
        "import": (ImportConfig, import_log, "Import logged conversations with rewards (JSONL, Parquet, CSV, a "
                                             "Hugging Face dataset) as the run's scored log."),
        "score": (ScoreConfig, score, "Compute reward components and the scalar reward of each trajectory."),
        "rejudge": (RejudgeConfig, rejudge, "Score judged conversations with a second judge, beside the first "
                                            "judge's scores, and report how the two judges agree."),
        "train": (TrainConfig, train_cmd, "Train a policy on the scored log with one algorithm."),
        "export": (ExportConfig, export, "Write a scored log as TRL SFT / DPO / KTO data or OpenAI fine-tuning "
                                         "JSONL (randomized rounding of the rewards)."),
        "evaluate": (EvaluateConfig, evaluate, "Run a policy on the test split and report metrics with SEs."),
        "heldout": (HeldoutConfig, heldout, "Held-out log-likelihood of logged conversations (rewards, no gold "
                                            "answers) by outcome, under Base and each trained policy."),
        "harness": (HarnessConfig, harness, "Write the run's questions as lm-evaluation-harness tasks and its "
                                            "evaluations as harness results."),
        "compare": (CompareConfig, compare, "Compare evaluated policies: table, paired differences, report."),
        "run": (RunConfig, run, "All stages for several algorithms on the same logged data."),
        "sweep": (SweepConfig, sweep, "Choose each algorithm's learning rate and epochs on the validation split, "
                                      "then evaluate the chosen policies once on the test split."),
        "iterate": (IterateConfig, iterate, "Online iterative preference learning (M-DPO / M-KTO, 003)."),
        "serve": (ServeConfig, serve, "Serve a model over the OpenAI-compatible chat-completions API."),
        "demo": (DemoConfig, demo, "The whole Refit/Swift loop on the offline default, sized for a laptop CPU."),
    }


# `--algo refit` is short for `--algo.name refit` (and likewise for the other configs with a name field).
_SHORTHANDS = {"--algo": "--algo.name", "--dataset": "--dataset.name", "--env": "--env.name"}
_BARE_FLAGS = {"--quick", "--overwrite"}


def _expand_shorthands(argv: list[str]) -> list[str]:
    """`--algo refit` -> `--algo.name refit`; `turnrl run configs/demo.yaml` -> `turnrl run --config ...`."""
    if len(argv) >= 2 and not argv[1].startswith("-") and argv[1].endswith((".yaml", ".yml")):
        argv = [argv[0], "--config", *argv[1:]]
    out = []
    for i, arg in enumerate(argv):
        if arg in _BARE_FLAGS and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out += [arg, "true"]  # `--quick` alone means `--quick true`
            continue
        if arg in _SHORTHANDS and i + 1 < len(argv):
            value = argv[i + 1]
            if not value.startswith("-") and "{" not in value and not Path(value).is_file():
                out.append(_SHORTHANDS[arg])
                continue
        out.append(arg)
    return out


def _yaml_problem(argv: list[str]) -> str | None:
    """A YAML file given to --config (or to any option that takes one) that does not parse, named with its line
    and column (the parser would name only "<unicode string>")."""
    import yaml

    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--") and "=" in arg]
    values += [value for flag, value in zip(argv, argv[1:]) if flag.startswith("--")]
    for value in values:
        if not value.endswith((".yaml", ".yml")) or not Path(value).is_file():
            continue
        try:
            yaml.safe_load(Path(value).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{value}:{mark.line + 1}:{mark.column + 1}" if mark else value
            return f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})"
        except UnicodeDecodeError:
            return f"{value}: not UTF-8 text"
    return None


def _config_files(argv: list[str]) -> list[str]:
    return [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")] + \
        [value for flag, value in zip(argv, argv[1:]) if flag == "--config"]


RENAMED = {("EnvConfig", "turns"): "max_turns", ("RewardConfig", "reference"): "likelihood_model",
           ("RewardConfig", "reference_dtype"): "likelihood_dtype", ("CompareConfig", "baseline"): "compare_against",
           **{("AlgoConfig", old): new for old, new in ALGO_RENAMED.items()}}
"""Options renamed (class, old name) -> new name: a config or flag with the old name is told the new one."""


def _note(kind: type, old: str) -> str:
    """What a renamed option's new name alone does not say."""
    note = ALGO_RENAME_NOTES.get(old) if kind.__name__ == "AlgoConfig" else None
    return f" ({note})" if note else ""


def _dataclass_of(tp: Any) -> type | None:
    """The config class an option's type holds (``EnvConfig`` of ``EnvConfig | None``), if any."""
    import typing

    if is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if is_dataclass(a)), None)


def _renamed_flag(cls: type, argv: list[str]) -> str | None:
    """A command-line flag under an old option name, e.g. --env.turns, with the name it has now."""
    import typing

    def renamed(kind: type, parts: list[str], prefix: str) -> tuple[str, str] | None:
        """(the new dotted name, a note) of an old one."""
        if len(parts) == 1:
            new = RENAMED.get((kind.__name__, parts[0]))
            return None if new is None else (f"{prefix}{new}", _note(kind, parts[0]))
        inner = _dataclass_of(typing.get_type_hints(kind).get(parts[0]))
        return renamed(inner, parts[1:], f"{prefix}{parts[0]}.") if inner is not None else None

    for arg in argv:
        if arg.startswith("--") and (found := renamed(cls, arg[2:].split("=", 1)[0].split("."), "")) is not None:
            new, note = found
            return f"option '{arg.split('=', 1)[0]}' is now '--{new}'{note}"
    return None


def _unknown_key(cls: type, argv: list[str]) -> str | None:
    """A key of a --config YAML file that the command does not take, named with its file, line and column and the
    nearest known option (the parser would name the option but not where it is)."""
    import difflib
    import typing

    import yaml

    def walk(node: Any, kind: type, prefix: str, path: str) -> str | None:
        if not isinstance(node, yaml.MappingNode):
            return None
        hints = typing.get_type_hints(kind)
        known = [f.name for f in fields(kind)]
        for key, value in node.value:
            name = key.value
            if (kind.__name__, name) in RENAMED:
                return (f"{path}:{key.start_mark.line + 1}:{key.start_mark.column + 1}: option '{prefix}{name}' is "
                        f"now '{prefix}{RENAMED[kind.__name__, name]}'{_note(kind, name)}")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; {kind.__name__} takes " + \
                    ", ".join(known)
                return (f"{path}:{key.start_mark.line + 1}:{key.start_mark.column + 1}: unknown option "
                        f"'{prefix}{name}'{hint}")
            inner = _dataclass_of(hints.get(name))
            if inner is not None and (problem := walk(value, inner, f"{prefix}{name}.", path)):
                return problem
        return None

    for path in _config_files(argv):
        if not path.endswith((".yaml", ".yml")) or not Path(path).is_file():
            continue
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
        if (problem := walk(root, cls, "", path)) is not None:
            return problem
    return None


def _build(cls: type, namespace: Any) -> Any:
    values = {f.name: getattr(namespace, f.name) for f in fields(cls)}
    for name, value in values.items():
        if hasattr(value, "as_dict") and not is_dataclass(value):  # a nested Namespace that was not instantiated
            values[name] = value.as_dict()
    return cls(**values)


def _imports(argv: list[str]) -> tuple[list[str], list[str]]:
    """`--import MODULE` (any number, anywhere): the modules to import before the command runs, and argv without
    them."""
    modules, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--import" and i + 1 < len(argv):
            modules.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith("--import="):
            modules.append(argv[i].split("=", 1)[1])
        else:
            rest.append(argv[i])
        i += 1
    return modules, rest


def _import_extensions(modules: list[str]) -> str | None:
    """Import each module (from the working directory too, as `python -m` would): algorithms and environments
    outside turnrl register themselves on import. A problem, as one line."""
    import importlib

    if modules and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 -- any failure of the user's module is reported, not raised
            return f"--import {module}: {type(exc).__name__}: {exc}"
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("turnrl")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    commands = _commands()
    parser = ArgumentParser(prog="turnrl", description="Offline RL of multi-turn LLM conversation policies.",
                            exit_on_error=True)
    parser.add_argument("--version", action="version", version=f"turnrl {_version()}")
    parser.add_argument("--import", dest="extension_modules", metavar="MODULE", action="append",
                        help="Import a module before the command (any number of times): algorithms and environments "
                             "of your own register themselves on import (docs/design.md, Adding an algorithm).")
    subcommands = parser.add_subcommands(dest="command", required=True)
    subparsers = {}
    for name, (cls, _, help_text) in commands.items():
        sub = ArgumentParser(description=help_text)
        sub.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of these options.")
        sub.add_class_arguments(cls, as_group=False)
        subcommands.add_subcommand(name, sub, help=help_text)
        subparsers[name] = sub
    modules, argv = _imports(list(sys.argv[1:] if argv is None else argv))
    argv = _expand_shorthands(argv)
    problem = _import_extensions(modules) or _yaml_problem(argv)
    if problem is None and argv and argv[0] in commands:
        problem = _renamed_flag(commands[argv[0]][0], argv) or _unknown_key(commands[argv[0]][0], argv)
    if problem is not None:
        print(f"turnrl {argv[0] if argv else ''}: error: {problem}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    name = args.command
    cls, fn, _ = commands[name]
    try:
        cfg = _build(cls, subparsers[name].instantiate(args[name]))
        fn(cfg)
    except TurnrlError as exc:
        print(f"turnrl {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"turnrl {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
