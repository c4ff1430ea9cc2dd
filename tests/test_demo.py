"""`turnrl demo` and `turnrl run configs/demo.yaml` describe the same experiment, and the demo prints its sizes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import turnrl.workflows.demo
import turnrl.workflows.pipeline
import turnrl.workflows.sweep
from turnrl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def captured(monkeypatch, module, argv: list[str], entry: str = "run") -> list:
    """The configs the command passes to ``module.entry``, which is not run."""
    seen = []
    monkeypatch.setattr(module, entry, lambda cfg: seen.append(cfg) or {"table": "", "timings": {}})
    assert main(argv) == 0
    return seen


def test_demo_yamls_mirror_the_demo(monkeypatch, capsys):
    seen = captured(monkeypatch, turnrl.workflows.demo, ["demo", "--out", "runs/demo"])
    printed = capsys.readouterr().out
    assert "32 train / 80 test questions" in printed and "at most 40 tokens (final 24)" in printed
    assert "(50% opened by a scripted question)" in printed
    reasoning, ask = seen
    assert (reasoning.run_dir, ask.run_dir, ask.env.name) == ("runs/demo", "runs/demo/ask", "ask")
    for yaml, from_demo in (("demo.yaml", reasoning), ("demo-ask.yaml", ask)):
        (from_yaml,) = captured(monkeypatch, turnrl.workflows.pipeline, ["run", str(ROOT / "configs" / yaml)])
        assert asdict(from_yaml) == asdict(from_demo), yaml


def test_quick_demo_is_the_same_path_at_tiny_sizes():
    from turnrl.workflows.demo import DemoConfig, ask_demo_config, demo_config

    quick = DemoConfig(out="/tmp/q", quick=True)
    for make in (demo_config, ask_demo_config):
        tiny, full = make(quick), make(DemoConfig())
        assert (tiny.dataset.n_train, tiny.dataset.n_test) == (8, 6) and tiny.run_dir.startswith("/tmp/q")
        assert (tiny.algorithms, tiny.dataset.name, tiny.env.name) == (full.algorithms, full.dataset.name,
                                                                       full.env.name)


def test_preference_config_runs_on_the_sciq_log(monkeypatch):
    """configs/preference.yaml reuses a configs/sciq.yaml run: the logged data must be described identically."""
    (sciq,) = captured(monkeypatch, turnrl.workflows.sweep, ["sweep", str(ROOT / "configs" / "sciq.yaml")],
                       entry="sweep")
    (pref,) = captured(monkeypatch, turnrl.workflows.pipeline, ["run", str(ROOT / "configs" / "preference.yaml")])
    for section in ("model", "dataset", "env", "rollout", "reward"):
        assert asdict(pref)[section] == asdict(sciq)[section], section
    assert set(sciq.algorithms) <= set(pref.algorithms)
