"""`turnrl demo` and `turnrl run configs/demo.yaml` describe the same experiment, and the demo prints its sizes."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import turnrl.workflows.demo
import turnrl.workflows.pipeline
import turnrl.workflows.sweep
from turnrl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def captured(monkeypatch, module, argv: list[str], entry: str = "run"):
    seen = []
    monkeypatch.setattr(module, entry, lambda cfg: seen.append(cfg) or {"table": "", "timings": {}})
    assert main(argv) == 0
    return seen[0]


def test_demo_yaml_mirrors_the_demo(monkeypatch, capsys):
    from_demo = captured(monkeypatch, turnrl.workflows.demo, ["demo", "--out", "runs/demo"])
    printed = capsys.readouterr().out
    assert "32 train / 80 test questions" in printed and "at most 40 tokens (final 24)" in printed
    from_yaml = captured(monkeypatch, turnrl.workflows.pipeline, ["run", str(ROOT / "configs" / "demo.yaml")])
    assert asdict(from_yaml) == asdict(from_demo)


def test_quick_demo_is_the_same_path_at_tiny_sizes(monkeypatch):
    quick = captured(monkeypatch, turnrl.workflows.demo, ["demo", "--quick", "--out", "/tmp/q"])
    full = turnrl.workflows.demo.demo_config(turnrl.workflows.demo.DemoConfig())
    assert (quick.dataset.n_train, quick.dataset.n_test, quick.run_dir) == (4, 6, "/tmp/q")
    assert quick.algorithms == full.algorithms and quick.dataset.name == full.dataset.name


def test_preference_config_runs_on_the_sciq_log(monkeypatch):
    """configs/preference.yaml reuses a configs/sciq.yaml run: the logged data must be described identically."""
    sciq = captured(monkeypatch, turnrl.workflows.sweep, ["sweep", str(ROOT / "configs" / "sciq.yaml")], entry="sweep")
    pref = captured(monkeypatch, turnrl.workflows.pipeline, ["run", str(ROOT / "configs" / "preference.yaml")])
    for section in ("model", "dataset", "env", "rollout", "reward"):
        assert asdict(pref)[section] == asdict(sciq)[section], section
    assert set(sciq.algorithms) <= set(pref.algorithms)
