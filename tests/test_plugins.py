"""Algorithms of one's own from the command line: `turnrl --import MODULE` and the `turnrl.algorithms` entry-point
group register them before the command runs."""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint

import pytest

from turnrl.algorithms import registry
from turnrl.cli import main

from test_distributed import logged

MODULE = '''
from turnrl.algorithms.registry import register_algorithm


@register_algorithm("{name}", family="weighted", display="Refit (rewards of at least a threshold)", paper="000 eq. 5")
def weights(trajectories, cfg, diag):
    threshold = cfg.extra.get("threshold", 0.5)
    weights = [float(t.reward) if t.reward >= threshold else 0.0 for t in trajectories]
    diag["kept"] = sum(w > 0 for w in weights)
    return weights
'''


@pytest.fixture()
def plugin_folder(tmp_path, monkeypatch):
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    for name in ("refit-half", "refit-half-ep"):
        registry.unregister_algorithm(name)
    for module in ("my_algos", "my_algos_ep"):
        sys.modules.pop(module, None)


def test_import_from_the_command_line_trains_the_new_algorithm(tmp_path, tiny_model_dir, plugin_folder):
    (plugin_folder / "my_algos.py").write_text(MODULE.format(name="refit-half"))
    run = tmp_path / "run"
    logged(run, tiny_model_dir)  # rewards 0.9, 0.1, 0.5, 0.7, 0.0, 0.3, 1.0, 0.2
    assert main(["--import", "my_algos", "train", "--run_dir", str(run), "--algo.name", "refit-half",
                 "--optim.precision", "fp32", "--optim.batch_size", "4", "--optim.micro_batch_tokens", "120"]) == 0
    diagnostics = json.loads((run / "train" / "refit-half" / "diagnostics.json").read_text())
    assert diagnostics["kept"] == 4  # 0.9, 0.5, 0.7 and 1.0, by hand
    assert (run / "train" / "refit-half" / "checkpoint" / "config.json").exists()
    # Its own parameter, from the command line.
    assert main(["--import", "my_algos", "train", "--run_dir", str(run), "--algo.name", "refit-half",
                 "--algo.extra", '{"threshold": 0.8}', "--output", "strict", "--optim.precision", "fp32",
                 "--optim.batch_size", "4", "--optim.micro_batch_tokens", "120"]) == 0
    assert json.loads((run / "strict" / "diagnostics.json").read_text())["kept"] == 2  # 0.9 and 1.0
    assert "| algo.extra.threshold | 0.8 |" in (run / "strict" / "checkpoint" / "README.md").read_text()


def test_a_module_that_fails_to_import_is_one_line(plugin_folder, capsys):
    (plugin_folder / "my_algos.py").write_text("raise RuntimeError('broken on purpose')\n")
    assert main(["--import", "my_algos", "train", "--algo.name", "refit"]) == 2
    assert capsys.readouterr().err.strip() == \
        "turnrl train: error: --import my_algos: RuntimeError: broken on purpose"


def test_an_entry_point_registers_without_a_flag(plugin_folder, monkeypatch):
    (plugin_folder / "my_algos_ep.py").write_text(MODULE.format(name="refit-half-ep"))
    monkeypatch.syspath_prepend(str(plugin_folder))
    points = [EntryPoint(name="refit-half-ep", value="my_algos_ep", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: points if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", False)
    assert registry.get_algorithm("refit-half-ep").family == "weighted"
