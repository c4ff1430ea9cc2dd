"""Experiment tracking (``report_to``): what TensorBoard's own reader finds in the event files equals the trainer's
train_log.jsonl, step by step; a resumed run logs each step once; ``none`` writes nothing; a missing tracker is a
ConfigError naming the package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from turnrl.algorithms.config import AlgoConfig
from turnrl.errors import ConfigError
from turnrl.train import train
from turnrl.train.config import OptimConfig
from turnrl.train.tracking import parse_report_to

from test_distributed import logged

EVENTS = "events.out.tfevents"


def optim(**over) -> OptimConfig:
    # 8 trajectories, batch 4, 2 epochs: 4 steps; linear decay so that the learning rate differs at every step.
    base = dict(precision="fp32", batch_size=4, epochs=2, micro_batch_tokens=120, learning_rate=1e-3,
                warmup_ratio=0.0, schedule="linear")
    return OptimConfig(**{**base, **over})


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files directly in ``folder``, read by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def train_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def assert_matches_log(series: dict[str, list[tuple[int, float]]], log: list[dict]) -> None:
    """Each step's loss, NLL per token, gradient norm and learning rate, exactly as float32 holds them."""
    for key in ("loss", "nll_per_token", "grad_norm", "lr", "epoch", "tokens", "active"):
        assert [s for s, _ in series[f"train/{key}"]] == [r["step"] for r in log], key
        assert [v for _, v in series[f"train/{key}"]] == [float(np.float32(r[key])) for r in log], key


def test_tensorboard_events_equal_the_train_log(tmp_path, tiny_model_dir):
    logged(tmp_path, tiny_model_dir)
    train(str(tmp_path), "", AlgoConfig(name="swift"), optim(), output="tb", report_to="tensorboard")
    out = tmp_path / "tb"
    log = train_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert len({r["lr"] for r in log}) == 4
    series = scalars(out / "tensorboard")
    assert_matches_log(series, log)
    # The weight diagnostics, once at step 0, as diagnostics.json has them.
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    for key in ("ess", "nonzero", "weight_mean", "weight_max"):
        assert series[f"diagnostics/{key}"] == [(0, float(np.float32(diagnostics[key])))]
    # The run's settings as hyperparameters (accelerate also keeps them as hparams.yml).
    assert list(out.glob("tensorboard/*/hparams.yml"))
    assert "optim.learning_rate: 0.001" in next(out.glob("tensorboard/*/hparams.yml")).read_text()


def test_resumed_run_logs_each_step_once(tmp_path, tiny_model_dir, monkeypatch):
    from turnrl.train import loop as train_loop

    logged(tmp_path, tiny_model_dir)
    original_run = train_loop.TrainLoop.run

    def log_three_steps_then_die(self, step_loss, steps_per_epoch):
        # The state is saved at the end of epoch 1 (step 2); step 3 is logged (train_log and TensorBoard), then
        # the run dies before saving it.
        self.steps = self.steps[:3]
        original_run(self, step_loss, steps_per_epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_loop.TrainLoop, "run", log_three_steps_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(str(tmp_path), "", AlgoConfig(name="swift"), optim(), output="tb", report_to="tensorboard")
    out = tmp_path / "tb"
    assert json.loads((out / "state" / "trainer_state.json").read_text())["step"] == 2  # the epoch-end save
    assert [s for s, _ in scalars(out / "tensorboard")["train/loss"]] == [1, 2, 3]
    monkeypatch.setattr(train_loop.TrainLoop, "run", original_run)
    train(str(tmp_path), "", AlgoConfig(name="swift"), optim(), output="tb", report_to="tensorboard")
    log = train_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert len(list((out / "tensorboard").glob(f"{EVENTS}*"))) == 2  # one writer per run
    assert_matches_log(scalars(out / "tensorboard"), log)  # step 3 once: the second run's


def test_report_to_none_writes_no_event_file(tmp_path, tiny_model_dir):
    logged(tmp_path, tiny_model_dir)
    train(str(tmp_path), "", AlgoConfig(name="sft"), optim(epochs=1), output="plain")
    out = tmp_path / "plain"
    assert (out / "checkpoint" / "turnrl_train.json").exists() and len(train_log(out)) == 2
    assert not list(out.rglob(f"{EVENTS}*")) and not (out / "tensorboard").exists()


def test_report_to_values_and_missing_tracker(monkeypatch):
    assert parse_report_to("none") == [] and parse_report_to("") == [] and parse_report_to(None) == []
    assert parse_report_to("tensorboard") == ["tensorboard"]
    assert parse_report_to(" TensorBoard , tensorboard") == ["tensorboard"]
    with pytest.raises(ConfigError, match="expected none, tensorboard, wandb, trackio"):
        parse_report_to("tensorbored")
    with pytest.raises(ConfigError, match="cannot be combined"):
        parse_report_to("none,tensorboard")
    import importlib.util

    import turnrl.train.tracking as tracking

    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else real(name, *a))
    with pytest.raises(ConfigError, match="report_to: tensorboard is not installed; pip install tensorboard"):
        parse_report_to("tensorboard")


def test_missing_tracker_stops_train_before_any_work(tmp_path, tiny_model_dir, monkeypatch):
    import turnrl.train.tracking as tracking

    logged(tmp_path, tiny_model_dir)
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else real(name, *a))
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        train(str(tmp_path), "", AlgoConfig(name="sft"), optim(), output="tb", report_to="tensorboard")
    assert not (tmp_path / "tb").exists()


def test_iterate_logs_each_iteration(tmp_path, tiny_model_dir):
    from test_iterate import config

    from turnrl.records import read_json
    from turnrl.workflows.iterate import iterate

    cfg = config(tmp_path, str(tiny_model_dir), iterations=1, report_to="tensorboard", evaluate_best=False)
    iterate(cfg)
    run = tmp_path / "run"
    series = scalars(run / "tensorboard")
    for t in (0, 1):
        heldout = read_json(run / f"iter_{t}" / "iteration.json")["heldout"]
        for metric in ("reward", "accuracy"):
            assert (t, float(np.float32(heldout[metric]["mean"]))) in series[f"heldout/{metric}/mean"]
    assert [s for s, _ in series["heldout/reward/mean"]] == [0, 1]
    assert series["pairing/pairs"][0][0] == 1
    training = run / "iter_1" / "train" / "m-dpo"
    dpo = scalars(training / "tensorboard")
    log = train_log(training)
    assert [v for _, v in dpo["train/loss"]] == [float(np.float32(r["loss"])) for r in log]
    assert "train/rewards/chosen" in dpo


CLI_OPTIM = ["--optim.precision", "fp32", "--optim.batch_size", "4", "--optim.epochs", "2",
             "--optim.micro_batch_tokens", "120", "--optim.learning_rate", "1e-3", "--optim.warmup_ratio", "0",
             "--optim.schedule", "linear"]


def test_cli_train_reports_to_tensorboard(tmp_path, tiny_model_dir):
    """`turnrl train --report_to tensorboard` through the command line: TensorBoard's reader finds every step of
    train_log.jsonl in the event files, and the run's settings record the tracker."""
    from turnrl.cli import main

    logged(tmp_path, tiny_model_dir)
    assert main(["train", "--run_dir", str(tmp_path), "--algo", "refit", "--output", "tb",
                 "--report_to", "tensorboard", *CLI_OPTIM]) == 0
    out = tmp_path / "tb"
    assert json.loads((out / "train_settings.json").read_text())["report_to"] == "tensorboard"
    assert list((out / "tensorboard").glob(f"{EVENTS}*"))
    log = train_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert_matches_log(scalars(out / "tensorboard"), log)


def test_cli_train_refuses_an_unknown_tracker(tmp_path, capsys):
    """One line naming the option and the trackers it knows, exit status 2, before anything is written."""
    from turnrl.cli import main

    assert main(["train", "--run_dir", str(tmp_path / "run"), "--algo", "refit",
                 "--report_to", "no-such-tracker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("turnrl train: error: report_to: no-such-tracker; expected none, tensorboard, wandb, trackio "
                   "(or several, comma-separated)")
    assert not (tmp_path / "run").exists()


def test_cli_train_passes_every_config_field(tmp_path, monkeypatch):
    """Each field of TrainConfig, set on the command line to a value other than its default, reaches train()
    under its own name: a field the command line forgets to pass fails here."""
    import dataclasses
    import inspect
    import typing

    import turnrl.train
    from turnrl.cli import main
    from turnrl.train.config import TrainConfig

    real_train = turnrl.train.train
    calls = []
    monkeypatch.setattr(turnrl.train, "train", lambda *args, **kwargs: calls.append(
        inspect.signature(real_train).bind(*args, **kwargs).arguments))
    hints = typing.get_type_hints(TrainConfig)
    special = {"report_to": "tensorboard", "algo": ("name", "swift"), "optim": ("learning_rate", 0.125)}
    argv, expected = ["train"], {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("algo", "optim"):  # nested configs: one field each, checked on the object train() gets
            sub, value = special[f.name]
            argv += [f"--{f.name}.{sub}", str(value)]
            expected[f.name] = (sub, value)
            continue
        if hints[f.name] is bool:
            value = not f.default
        else:
            assert hints[f.name] is str, f"{f.name}: give this test a value for a {hints[f.name]} field"
            value = special.get(f.name, str(tmp_path / f"value-of-{f.name}"))
        assert value != f.default
        argv += [f"--{f.name}", str(value).lower() if isinstance(value, bool) else value]
        expected[f.name] = value
    assert main(argv) == 0
    (got,) = calls
    for name, value in expected.items():
        if isinstance(value, tuple):
            assert getattr(got[name], value[0]) == value[1], name
        else:
            assert got.get(name) == value, name
