"""Every option of every command reaches its stage: each command is run through `main()` with a config in which
every scalar option differs from its default, and the config the stage receives must hold every one of them
(the class of bug where a command unpacks its config and drops an option on the way)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from turnrl import cli

VALID = {"report_to": "tensorboard"}
"""Options whose value is checked while parsing: a valid value other than the default."""


def changed(cls: type, default: object) -> dict[str, typing.Any]:
    """The config as a dict, each scalar option set to a value other than its default (nested configs too)."""
    out: dict[str, typing.Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = changed(type(value), value)
        elif f.name in VALID:
            out[f.name] = VALID[f.name]
        elif typing.get_origin(hints[f.name]) is typing.Literal:
            out[f.name] = next((c for c in typing.get_args(hints[f.name]) if c != value), value)
        elif isinstance(value, bool):
            out[f.name] = not value
        elif isinstance(value, (int, float)):
            out[f.name] = value + 3
        elif isinstance(value, str):
            out[f.name] = f"{value}-x"
        else:
            out[f.name] = value  # lists, dicts, None: their parsing is tested with the stages that use them
    return out


def leaves(d: dict, prefix: str = "") -> dict[str, typing.Any]:
    """Dotted option name -> value."""
    out = {}
    for k, v in d.items():
        out.update(leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


COMMANDS = cli._commands()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_reaches_the_stage(name, tmp_path, monkeypatch):
    cls, fn, _ = COMMANDS[name]
    wanted = changed(cls, cls())
    received: dict[str, typing.Any] = {}
    if name == "train":  # the command's own adapter runs; the training it calls is what records
        import turnrl.train

        monkeypatch.setattr(turnrl.train, "train", lambda **kwargs: received.update(
            config=dataclasses.asdict(cls(**kwargs))))
    else:
        fn = lambda cfg: received.update(config=dataclasses.asdict(cfg))  # noqa: E731
    table = {n: (c, fn if n == name else f, h) for n, (c, f, h) in COMMANDS.items()}
    monkeypatch.setattr(cli, "_commands", lambda: table)
    config = tmp_path / "options.yaml"
    config.write_text(yaml.safe_dump(wanted))
    assert cli.main([name, "--config", str(config)]) == 0
    got, want = leaves(received["config"]), leaves(wanted)
    lost = {k: (want[k], got.get(k)) for k in want if got.get(k) != want[k]}
    assert not lost, f"turnrl {name}: options that did not reach the stage (wanted, received): {lost}"
    assert len(want) >= 2


@pytest.mark.parametrize("command, old, new", [("simulate", ["env", "turns"], "env.max_turns"),
                                               ("score", ["reward", "reference"], "reward.likelihood_model"),
                                               ("run", ["reward", "reference_dtype"], "reward.likelihood_dtype"),
                                               ("compare", ["baseline"], "compare_against"),
                                               ("train", ["algo", "drift_beta"], "algo.drift.beta"),
                                               ("run", ["algo", "negative_floor"], "algo.swift.floor"),
                                               ("iterate", ["algo", "reference"], "algo.preference.ref_policy")])
def test_a_renamed_option_names_its_new_name(command, old, new, tmp_path, capsys):
    """The old name of a renamed option, as a flag or a YAML key, stops before any work and says the new one;
    the new name is an option of the command."""
    flag = "--" + ".".join(old)
    assert cli.main([command, flag, "3"]) == 2
    assert f"option '{flag}' is now '--{new}'" in capsys.readouterr().err
    config = tmp_path / "old.yaml"
    nested: dict = {old[-1]: 3}
    for part in reversed(old[:-1]):
        nested = {part: nested}
    config.write_text(yaml.safe_dump(nested))
    assert cli.main([command, "--config", str(config)]) == 2
    assert f"option '{'.'.join(old)}' is now '{new}'" in capsys.readouterr().err
    cls = cli._commands()[command][0]
    for part in new.split(".")[:-1]:
        cls = typing.get_type_hints(cls)[part]
    assert new.split(".")[-1] in {f.name for f in dataclasses.fields(cls)}


def test_train_help_shows_each_algorithms_own_options(capsys):
    """Each algorithm's parameters are a section of algo with its own options and their help."""
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for option in ("--algo.swift.floor", "--algo.drift.beta", "--algo.star_gate.top_k", "--algo.m_kto.lambda_d",
                   "--algo.preference.beta", "--algo.star_gate_d.temperature", "--algo.dpo.context"):
        assert option in out
    assert "--algo.drift_beta" not in out and "--algo.negative_floor" not in out
