"""``turnrl run`` end to end on a tiny model: an algorithm the log gives nothing to learn is skipped, the rest run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turnrl.algorithms.config import AlgoConfig
from turnrl.envs import EnvConfig
from turnrl.errors import NothingToLearn
from turnrl.generation import BackendConfig
from turnrl.records import read_trajectories
from turnrl.rewards.scoring import RewardConfig
from turnrl.stages.simulate import RolloutOptions
from turnrl.tasks import DatasetConfig
from turnrl.train import train
from turnrl.train.config import OptimConfig
from turnrl.workflows.pipeline import RunConfig, run


@pytest.mark.slow
def test_run_skips_an_algorithm_with_nothing_to_learn(tmp_path, tiny_model_dir, capsys):
    # Options no random 2-layer model names: every logged conversation has accuracy 0.
    rows = [{"id": f"q{i}", "question": f"Which word is number {i}?", "choices": ["qqq1", "qqq2", "qqq3", "qqq4"],
             "answer": "ABCD"[i % 4]} for i in range(3)]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig(run_dir=str(tmp_path / "run"), model=str(tiny_model_dir),
                    dataset=DatasetConfig(name=str(tmp_path / "tasks.jsonl"), n_train=2, n_test=1),
                    env=EnvConfig(max_turns=1, max_new_tokens=4), generation=BackendConfig(dtype="float32"),
                    rollout=RolloutOptions(samples=2, temperatures=[1.0]),
                    reward=RewardConfig(weights={"accuracy": 1.0}),
                    algorithms=["refit", "sft"], optim=OptimConfig(batch_size=2, precision="fp32"),
                    evaluate_base=False, split="test")
    result = run(cfg)
    scored = read_trajectories(tmp_path / "run/scored/trajectories.jsonl")
    assert {t.reward for t in scored} == {0.0}  # so Refit's weights are all 0
    assert list(result["skipped"]) == ["refit"] and "weight 0" in result["skipped"]["refit"]
    assert json.loads((tmp_path / "run/skipped.json").read_text()) == result["skipped"]
    assert "skipping refit" in capsys.readouterr().out
    table = json.loads((tmp_path / "run/results.json").read_text())["methods"]
    assert sorted(table) == ["always-a", "sft"]  # trained on every logged conversation, and evaluated
    # Alone, the same training stops with the message (and a non-zero exit from the CLI).
    with pytest.raises(NothingToLearn, match="weight 0"):
        train(cfg.run_dir, cfg.model, AlgoConfig(name="refit"), cfg.optim)


@pytest.mark.slow
def test_the_same_run_twice_is_byte_identical_and_seeds_make_one_table(tmp_path, tiny_model_dir):
    """Two seeds, run twice into two folders: every conversation, per-question outcome and checkpoint revision is
    the same; the table's per-seed values are the per-question means of each seed's outcomes."""
    from turnrl.models import resolve

    rows = [{"id": f"q{i}", "question": f"Pick option {i}.", "choices": ["qqq1", "qqq2", "qqq3", "qqq4"],
             "answer": "ABCD"[i % 4]} for i in range(6)]
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def config(out: str) -> RunConfig:
        return RunConfig(run_dir=str(tmp_path / out), model=str(tiny_model_dir),
                         dataset=DatasetConfig(name=str(tmp_path / "tasks.jsonl"), n_train=3, n_test=3),
                         env=EnvConfig(max_turns=1, max_new_tokens=4), generation=BackendConfig(dtype="float32"),
                         rollout=RolloutOptions(samples=2, temperatures=[1.0]),
                         reward=RewardConfig(weights={"accuracy": 1.0}), algorithms=["sft"],
                         optim=OptimConfig(batch_size=2, precision="fp32"), split="test", seeds=[0, 1])

    first = run(config("a"))
    run(config("b"))
    assert first["methods"] == ["base", "sft", "always-a"]
    for seed in (0, 1):
        for method in ("base", "sft", "always-a"):
            folders = [tmp_path / f"{out}/seed{seed}/eval/{method}" for out in "ab"]
            assert (folders[0] / "per_question.jsonl").read_bytes() == (folders[1] / "per_question.jsonl").read_bytes()
            conversations = [read_trajectories(f / "conversations.jsonl") for f in folders]
            for t in conversations[0] + conversations[1]:
                t.timing, t.policy["model"] = {}, ""  # wall-clock seconds and the folder differ, nothing else may
            assert conversations[0] == conversations[1]
        revisions = [resolve(str(tmp_path / f"{out}/seed{seed}/train/sft/checkpoint")).revision for out in "ab"]
        assert revisions[0] == revisions[1]
    seeds = json.loads((tmp_path / "a/seeds.json").read_text())
    for method in ("base", "sft", "always-a"):
        per_seed = []
        for seed in (0, 1):
            outcomes = [json.loads(line)["accuracy"]
                        for line in (tmp_path / f"a/seed{seed}/eval/{method}/per_question.jsonl").open()]
            per_seed.append(sum(outcomes) / len(outcomes))
        assert seeds["methods"][method]["estimate"]["per_seed"] == pytest.approx(per_seed)
    csv_lines = (tmp_path / "a/results.csv").read_text().splitlines()
    assert csv_lines[0] == "method,seed,accuracy,n_questions" and len(csv_lines) == 1 + 3 * 2
    # The seeds draw different logs: the logged conversations' option orders differ.
    logs = [read_trajectories(tmp_path / f"a/seed{s}/scored/trajectories.jsonl") for s in (0, 1)]
    assert [t.option_orders for t in logs[0]] != [t.option_orders for t in logs[1]]


def test_per_algorithm_overrides_reach_one_algorithm_and_its_sections():
    """A per_algorithm override changes that algorithm's settings only, a nested mapping going into its section;
    an unknown key names where it is."""
    from turnrl.errors import ConfigError
    from turnrl.workflows.pipeline import algorithm_settings

    cfg = RunConfig(algorithms=["swift", "refit"], optim=OptimConfig(learning_rate=1e-5),
                    per_algorithm={"swift": {"algo": {"swift": {"floor": -1.0}, "kl_coef": 0.1},
                                             "optim": {"learning_rate": 3e-5}}})
    swift_algo, swift_optim = algorithm_settings(cfg, "swift")
    refit_algo, refit_optim = algorithm_settings(cfg, "refit")
    assert (swift_algo.name, swift_algo.swift.floor, swift_algo.kl_coef, swift_optim.learning_rate) == \
        ("swift", -1.0, 0.1, 3e-5)
    assert (refit_algo.name, refit_algo.swift.floor, refit_algo.kl_coef, refit_optim.learning_rate) == \
        ("refit", 0.0, 0.0, 1e-5)
    assert cfg.algo.swift.floor == 0.0  # the run's own config is not changed
    bad = RunConfig(algorithms=["swift"], per_algorithm={"swift": {"algo": {"swift": {"flor": 1}}}})
    with pytest.raises(ConfigError, match=r"per_algorithm\.swift\.algo\.swift\.flor: unknown option"):
        algorithm_settings(bad, "swift")


def test_an_old_option_name_in_per_algorithm_names_the_new_one():
    from turnrl.errors import ConfigError
    from turnrl.workflows.pipeline import algorithm_settings

    cfg = RunConfig(algorithms=["swift"], per_algorithm={"swift": {"algo": {"negative_floor": -1.0}}})
    with pytest.raises(ConfigError, match=r"option 'per_algorithm\.swift\.algo\.negative_floor' is now "
                                          r"'per_algorithm\.swift\.algo\.swift\.floor' \(the floor is Swift's own"):
        algorithm_settings(cfg, "swift")


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_experiment_config_is_read_by_the_command_it_names(config, capsys):
    """Each config under configs/ parses, with no stale option name, under the command its header gives for it
    ("turnrl sweep configs/sciq.yaml"; `turnrl run` where none is named)."""
    import re

    from turnrl.cli import main

    named = re.search(rf"turnrl (\w+) (?:--config )?configs/{re.escape(config.name)}", config.read_text())
    command = named.group(1) if named else "run"
    try:
        status = main([command, "--config", str(config), "--print_config"])
    except SystemExit as printed:  # --print_config prints the whole configuration and exits
        status = printed.code
    assert status in (0, None), capsys.readouterr().err


@pytest.mark.parametrize("seeds", [[], [0, 1]])
def test_a_bad_per_algorithm_override_is_refused_before_anything_is_written(seeds, tmp_path, capsys):
    """Checked first, so that an existing run's run_config.json is never overwritten by a config that is refused
    (with seeds too, whose top-level record is written before any seed runs)."""
    from turnrl.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"algorithms: [sft]\nseeds: {seeds}\n"
                      "per_algorithm:\n  refit: {optim: {learning_rate: 1.0e-5}}\n")
    assert main(["run", "--config", str(config), "--run_dir", str(tmp_path / "run")]) == 2
    assert "per_algorithm.refit: 'refit' is not in algorithms ['sft']" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
