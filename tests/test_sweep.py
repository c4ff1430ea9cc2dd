"""The validation split and `turnrl sweep`: choices made on validation questions, the test split touched once."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from turnrl.cli import main
from turnrl.errors import ConfigError
from turnrl.records import Task
from turnrl.workflows.sweep import choose
from turnrl.tasks import POOLS_SALT, TEST_SHARE, VAL_SHARE, DatasetConfig, _stable_int, load_tasks, split_tasks


def tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i}", source="x", question=f"q{i}", answer="A", choices=["a", "b"]) for i in range(n)]


def test_pools_are_disjoint_fixed_by_a_salted_hash_and_splits_extend():
    items = tasks(2000)
    cfg = DatasetConfig(name="sciq", n_train=300, n_val=100, n_test=200)  # a built-in dataset's pools
    train, val, test = split_tasks(items, cfg)
    share = {t.id: _stable_int(f"{POOLS_SALT}/{t.id}") / 2 ** 64 for t in items}  # the documented pools
    earlier = {t.id for t in sorted(items, key=lambda t: _stable_int(f"0/{t.id}"))[:300]}
    assert all(share[t.id] < TEST_SHARE and t.id not in earlier for t in test)
    assert all(TEST_SHARE <= share[t.id] < TEST_SHARE + VAL_SHARE for t in val)
    assert all(share[t.id] >= TEST_SHARE + VAL_SHARE or t.id in earlier for t in train)
    in_pool = sorted((t for t in items if share[t.id] < TEST_SHARE and t.id not in earlier),
                     key=lambda t: _stable_int(f"0/{t.id}"))
    assert [t.id for t in test] == [t.id for t in in_pool[:200]]  # the first n of the pool in (seed, id) order
    # A larger split extends a smaller one; another seed draws other items from the same pools.
    _, _, more = split_tasks(items, replace(cfg, n_train=0, n_val=0, n_test=300))
    assert [t.id for t in more[:200]] == [t.id for t in test]
    _, _, other = split_tasks(items, replace(cfg, n_train=0, n_val=0, seed=1))
    assert {t.id for t in other} != {t.id for t in test} and all(share[t.id] < TEST_SHARE for t in other)
    with pytest.raises(ConfigError, match="n_test: 2000, but the test pool"):
        split_tasks(items, replace(cfg, n_test=2000))


def test_a_users_own_file_is_one_hashed_order_cut_into_test_validation_and_train():
    items = tasks(40)
    train, val, test = split_tasks(items, DatasetConfig(name="mine.jsonl", n_train=20, n_val=8, n_test=10))
    by_hash = sorted(items, key=lambda t: _stable_int(f"0/{t.id}"))  # the documented order, computed here
    assert [t.id for t in test] == [t.id for t in by_hash[:10]]
    assert [t.id for t in val] == [t.id for t in by_hash[10:18]]
    assert [t.id for t in train] == [t.id for t in by_hash[18:38]]


def test_the_test_pool_holds_no_item_earlier_development_evaluated_on():
    """The built-in SciQ: none of the first 300 items of the earlier order (the hash of "0/<id>") is in the test
    pool, and the pools are disjoint."""
    sciq = [t for t in load_tasks(DatasetConfig(name="sciq"))]
    earlier = {t.id for t in sorted(sciq, key=lambda t: _stable_int(f"0/{t.id}"))[:300]}
    train, val, test = split_tasks(sciq, DatasetConfig(name="sciq", n_train=500, n_val=100, n_test=250))
    ids = [{t.id for t in split} for split in (train, val, test)]
    assert not ids[2] & earlier and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(ids[2]) == 250


def test_choose_takes_the_best_validation_accuracy_and_breaks_ties_towards_less_training():
    rows = [
        {"algorithm": "refit", "learning_rate": 1e-4, "epochs": 2, "val_accuracy": 0.30},
        {"algorithm": "refit", "learning_rate": 3e-5, "epochs": 2, "val_accuracy": 0.30},
        {"algorithm": "refit", "learning_rate": 1e-4, "epochs": 1, "val_accuracy": 0.30},
        {"algorithm": "refit", "learning_rate": 1e-5, "epochs": 4, "val_accuracy": 0.20},
        {"algorithm": "swift", "learning_rate": 1e-5, "epochs": 4, "val_accuracy": 0.25},
        {"algorithm": "swift", "learning_rate": 1e-4, "epochs": 1, "val_accuracy": 0.22},
    ]
    chosen = choose(rows)
    assert (chosen["refit"]["learning_rate"], chosen["refit"]["epochs"]) == (1e-4, 1)
    assert (chosen["swift"]["learning_rate"], chosen["swift"]["epochs"]) == (1e-5, 4)


def weights(folder: Path):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_model_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("sweep")
    args = ["sweep", "--run_dir", str(run_dir), "--model", str(tiny_model_dir), "--generation.dtype", "float32",
            "--dataset.name", "arc-easy", "--dataset.n_train", "4", "--dataset.n_val", "3", "--dataset.n_test", "3",
            "--env.max_new_tokens", "4", "--rollout.samples", "1", "--rollout.temperatures", "[0.0]",
            "--algorithms", "[sft]", "--optim.batch_size", "2", "--optim.precision", "fp32",
            "--sweep.learning_rates", "[1e-3, 1e-2]", "--sweep.epochs", "[1, 2]", "--split", "test"]
    assert main(args) == 0
    return run_dir


def test_sweep_validates_every_grid_point_and_tests_only_the_chosen_policy(swept):
    rows = list(csv.DictReader((swept / "sweep" / "results.csv").open()))
    assert sorted((float(r["learning_rate"]), int(r["epochs"])) for r in rows) == [(1e-3, 1), (1e-3, 2),
                                                                                     (1e-2, 1), (1e-2, 2)]
    assert all(int(r["n"]) == 3 for r in rows)
    val_folders = sorted(p.name for p in (swept / "eval-val").iterdir())
    assert val_folders == ["base", "sft@lr0.001-ep1", "sft@lr0.001-ep2", "sft@lr0.01-ep1", "sft@lr0.01-ep2"]
    # The test split holds only Base and the chosen policy, and the run's results list only those.
    assert sorted(p.name for p in (swept / "eval").iterdir()) == ["base", "sft"]
    assert sorted(json.loads((swept / "results.json").read_text())["methods"]) == ["base", "sft"]
    chosen = json.loads((swept / "sweep" / "chosen.json").read_text())["chosen"]["sft"]
    assert json.loads((swept / "eval" / "sft" / "evaluation.json").read_text())["model"] == chosen["policy"]
    test_ids = {json.loads(line)["task_id"] for line in (swept / "eval" / "sft" / "conversations.jsonl").open()}
    val_ids = {json.loads(line)["task_id"] for line in (swept / "eval-val" / "base" / "conversations.jsonl").open()}
    assert test_ids and val_ids and not test_ids & val_ids
    assert (swept / "sweep" / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_epoch_snapshot_is_the_policy_of_the_shorter_run(swept, tiny_model_dir):
    """The epoch-1 snapshot of the 2-epoch run equals a separate 1-epoch run (same seed, order and warm-up)."""
    from turnrl.algorithms.config import AlgoConfig
    from turnrl.train import train
    from turnrl.train.config import OptimConfig

    one = train(str(swept), str(tiny_model_dir), AlgoConfig(name="sft"),
                OptimConfig(learning_rate=1e-2, epochs=1, batch_size=2, precision="fp32"), output="one-epoch")
    snapshot, separate = weights(swept / "sweep" / "sft" / "lr0.01" / "epoch1"), weights(one)
    two = weights(swept / "sweep" / "sft" / "lr0.01" / "checkpoint")
    for name, tensor in separate.items():
        assert (snapshot[name] - tensor).abs().max().item() < 1e-6, name
    assert any((two[n] - separate[n]).abs().max().item() > 1e-4 for n in separate)


def test_sweep_without_a_validation_split_is_refused(tmp_path, capsys):
    assert main(["sweep", "--run_dir", str(tmp_path), "--dataset.n_val", "0"]) == 2
    assert "dataset.n_val" in capsys.readouterr().err


def test_sweep_refuses_an_override_for_an_algorithm_it_does_not_sweep(tmp_path, capsys):
    """As `turnrl run` does: a per_algorithm entry for an algorithm not in the list is a slip (a typo, or one
    left out), refused before anything is written."""
    config = tmp_path / "sweep.yaml"
    config.write_text("algorithms: [sft]\nper_algorithm:\n  refit: {optim: {learning_rate: 1.0e-5}}\n")
    assert main(["sweep", "--config", str(config), "--run_dir", str(tmp_path / "run"), "--dataset.n_val", "4"]) == 2
    assert "per_algorithm.refit: 'refit' is not in algorithms ['sft']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
