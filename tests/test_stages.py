"""The stage commands as a user runs them: resumable simulate, and clear errors that lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from turnrl.cli import main


def turnrl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "turnrl.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if check and proc.returncode != 0:
        raise AssertionError(f"turnrl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def simulate_args(run_dir: Path, model: Path) -> list[str]:
    return ["simulate", "--run_dir", str(run_dir), "--policy.model", str(model), "--policy.dtype", "float32",
            "--dataset.name", "arc-easy", "--dataset.n_train", "10", "--dataset.n_test", "2",
            "--env.max_new_tokens", "6", "--rollout.samples", "2", "--rollout.chunk_size", "2"]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def without_timing(records: list[str]) -> list[dict]:
    """Records as content: wall-clock seconds differ between runs, everything else must not."""
    parsed = [json.loads(line) for line in records]
    for record in parsed:
        record.pop("timing", None)
    return parsed


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> list[str]:
    run_dir = tmp_path_factory.mktemp("full")
    turnrl(*simulate_args(run_dir, tiny_model_dir))
    return lines(run_dir / "rollouts" / "trajectories.jsonl")


def test_simulate_killed_then_resumed_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, uninterrupted):
    assert len(uninterrupted) == 20
    out = tmp_path / "rollouts" / "trajectories.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "turnrl.cli", *simulate_args(tmp_path, tiny_model_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(lines(out)) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(lines(out))
    assert 0 < written < 20, f"the kill should land mid-run (saw {written} of 20 records)"
    turnrl(*simulate_args(tmp_path, tiny_model_dir))
    assert without_timing(lines(out)) == without_timing(uninterrupted)


def test_simulate_resumes_after_a_partly_written_record(tmp_path, tiny_model_dir, uninterrupted):
    out = tmp_path / "rollouts" / "trajectories.jsonl"
    out.parent.mkdir(parents=True)
    text = "\n".join(uninterrupted[:7]) + "\n" + uninterrupted[7][:40]  # a kill in the middle of a write
    out.write_text(text)
    turnrl(*simulate_args(tmp_path, tiny_model_dir))
    assert without_timing(lines(out)) == without_timing(uninterrupted)


def test_resume_with_other_settings_is_refused(tmp_path, tiny_model_dir, uninterrupted):
    out = tmp_path / "rollouts" / "trajectories.jsonl"
    turnrl(*simulate_args(tmp_path, tiny_model_dir))
    before = out.read_text()
    proc = turnrl(*simulate_args(tmp_path, tiny_model_dir), "--rollout.samples", "3", check=False)
    assert proc.returncode == 2
    assert "started with other settings" in proc.stderr and "rollout" in proc.stderr
    assert out.read_text() == before


def test_malformed_line_names_file_and_line_and_keeps_outputs(tmp_path, capsys):
    rollouts = tmp_path / "rollouts" / "trajectories.jsonl"
    rollouts.parent.mkdir(parents=True)
    good = {"id": "t#0", "task_id": "t", "group_id": "t", "messages": [{"role": "user", "content": "q"},
                                                                        {"role": "assistant", "content": "a"}]}
    rollouts.write_text(json.dumps(good) + "\n" + '{"id": "t#1", "task_id": ' + "\n")
    scored = tmp_path / "scored" / "trajectories.jsonl"
    scored.parent.mkdir(parents=True)
    scored.write_text("previous results\n")
    assert main(["score", "--run_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{rollouts}:2:26: not valid JSON" in err  # file, line and column: the value cut off at column 26
    assert scored.read_text() == "previous results\n"


def test_missing_field_is_named(tmp_path, capsys):
    rollouts = tmp_path / "rollouts" / "trajectories.jsonl"
    rollouts.parent.mkdir(parents=True)
    rollouts.write_text(json.dumps({"id": "t#0", "task_id": "t", "group_id": "t"}) + "\n")
    assert main(["score", "--run_dir", str(tmp_path)]) == 2
    assert f"{rollouts}:1: missing field 'messages'" in capsys.readouterr().err


def test_bad_message_role_is_named(tmp_path, capsys):
    rollouts = tmp_path / "rollouts" / "trajectories.jsonl"
    rollouts.parent.mkdir(parents=True)
    bad = {"id": "t#0", "task_id": "t", "group_id": "t", "messages": [{"role": "narrator", "content": "x"}]}
    rollouts.write_text(json.dumps(bad) + "\n")
    assert main(["score", "--run_dir", str(tmp_path)]) == 2
    assert "messages[0].role is 'narrator'" in capsys.readouterr().err


def test_unknown_dataset(tmp_path, capsys):
    assert main(["simulate", "--run_dir", str(tmp_path), "--dataset.name", "arc-medium"]) == 2
    err = capsys.readouterr().err
    assert "dataset.name: 'arc-medium'; expected one of arc-easy" in err and "or a path to a .jsonl" in err
    assert not (tmp_path / "tasks").exists()


def test_missing_model_path(tmp_path, capsys):
    assert main(["simulate", "--run_dir", str(tmp_path), "--policy.model", str(tmp_path / "no-such-model"),
                 "--dataset.n_train", "4", "--dataset.n_test", "2"]) == 2
    assert "no-such-model': no such file or folder" in capsys.readouterr().err


def test_unknown_config_key_is_named(tmp_path):
    config = tmp_path / "simulate.yaml"
    config.write_text("run_dir: x\nrollout:\n  samplez: 3\n")
    proc = turnrl("simulate", "--config", str(config), check=False)
    assert proc.returncode == 2
    assert "samplez" in proc.stderr


def test_dataset_file_with_missing_column(tmp_path, capsys):
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"q": "Which is a gas?", "label": "A", "options": ["air", "rock"]}) + "\n")
    assert main(["simulate", "--run_dir", str(tmp_path / "run"), "--dataset.name", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: no column 'question'" in err and "dataset.columns" in err


@pytest.mark.parametrize("command", ["evaluate", "run"])
def test_option_reward_on_open_answer_tasks_fails_before_generating(tmp_path, capsys, command):
    # The default reward's gold_likelihood reads the option letters; GSM8K has none. A missing model path shows
    # that the check comes before any model is loaded or any conversation generated.
    args = [command, "--run_dir", str(tmp_path / "run"), "--dataset.name", "gsm8k", "--dataset.n_train", "2",
            "--dataset.n_test", "2", "--env.name", "feedback"]
    args += ["--model" if command == "run" else "--policy.model", str(tmp_path / "no-such-model")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "reward.weights: gold_likelihood" in err and "has no options" in err and "{accuracy: 1.0}" in err
    assert not (tmp_path / "run" / "eval").exists() and not (tmp_path / "run" / "rollouts").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_are_written_with_the_umask_like_an_ordinary_file(tmp_path, umask, mode):
    from turnrl.records import atomic_write_text, write_json

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "results.md", "| a |\n")
        write_json(tmp_path / "metrics.json", {"accuracy": 0.5})
        (tmp_path / "plain.txt").write_text("x")  # what an ordinary write gives, for comparison
    finally:
        os.umask(old)
    for name in ("results.md", "metrics.json", "plain.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize("argv, key", [(["train", "--optim.schedule", "cosin"], "optim.schedule"),
                                       (["train", "--optim.precision", "bf17"], "optim.precision"),
                                       (["evaluate", "--split", "vall"], "split"),
                                       (["simulate", "--env.mode", "thinkin"], "env.mode")])
def test_a_misspelled_choice_is_refused_before_any_work(tmp_path, capsys, argv, key):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--run_dir", str(tmp_path / "run")])
    assert exc.value.code == 2 and f'"{key}"' in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_empty_log_is_an_error_and_keeps_the_scored_file(tmp_path, capsys):
    rollouts = tmp_path / "rollouts" / "trajectories.jsonl"
    rollouts.parent.mkdir(parents=True)
    rollouts.write_text("")
    scored = tmp_path / "scored" / "trajectories.jsonl"
    scored.parent.mkdir(parents=True)
    scored.write_text("previous results\n")
    assert main(["score", "--run_dir", str(tmp_path)]) == 2
    assert f"{rollouts}: no trajectories to score" in capsys.readouterr().err
    assert scored.read_text() == "previous results\n"


@pytest.mark.parametrize("field, value, expected", [
    ("reward", "NaN", "field 'reward' is nan; expected a finite number"),
    ("reward", "Infinity", "field 'reward' is inf; expected a finite number"),
    ("reward", '"0.148"', "field 'reward' is '0.148'; expected a number"),
    ("rewards", '{"accuracy": [0.5]}', "field 'rewards.accuracy' is [0.5]; expected a number"),
])
def test_a_reward_that_is_not_a_finite_number_is_refused_with_its_line(tmp_path, field, value, expected):
    from turnrl.errors import InputError
    from turnrl.records import read_trajectories

    good = {"id": "t#0", "task_id": "t", "group_id": "t", "reward": 0.5,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = json.dumps({**good, "id": "t#1"}).replace('"reward": 0.5', f'"{field}": {value}')
    path = tmp_path / "scored.jsonl"
    path.write_text(json.dumps(good) + "\n" + bad + "\n")
    with pytest.raises(InputError) as exc:
        read_trajectories(path)
    assert str(exc.value) == f"{path}:2: {expected}"


GOOD = {"id": "t#0", "task_id": "t", "group_id": "t", "reward": 0.5, "turns": [{"tokens": 2, "truncated": False}],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize("line, expected", [
    (json.dumps({**GOOD, "reward": "high"}).encode(), "field 'reward' is 'high'; expected a number"),
    (json.dumps({**GOOD, "turns": [{"tokens": 2, "truncated": False, "color": 1}]}).encode(),
     'turns[0]: {"tokens": 2, "truncated": false, "color": 1}; expected an object with exactly tokens'),
    (json.dumps({**GOOD, "turns": [{"tokens": "2", "truncated": False}]}).encode(), "turns[0]: "),
    (json.dumps({**GOOD, "group_id": ""}).encode(), "field 'group_id' is ''; expected the non-empty id"),
    (json.dumps(GOOD).encode().replace(b'"q"', b'"q\xff"').replace(b"\\xff", b"\xff"), "not UTF-8 text (byte 0xff"),
])
def test_bad_records_are_named_by_file_and_line(tmp_path, line, expected):
    from turnrl.errors import InputError
    from turnrl.records import read_trajectories

    path = tmp_path / "log.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    with pytest.raises(InputError) as exc:
        read_trajectories(path)
    assert str(exc.value).startswith(f"{path}:2: {expected}")


@pytest.mark.parametrize("file, change, expected", [
    ("rollouts", {"id": [1, 2]}, "field 'id' is [1, 2]; expected a string"),
    ("rollouts", {"task_id": {"t": 1}}, "field 'task_id' is {'t': 1}; expected a string"),
    ("rollouts", {"sample": "1"}, "field 'sample' is '1'; expected an integer"),
    ("rollouts", {"temperature": "hot"}, "field 'temperature' is 'hot'; expected a finite number"),
    ("rollouts", {"timing": {"seconds": [1]}}, "field 'timing.seconds' is [1]; expected a finite number"),
    ("rollouts", {"turns": {}}, "field 'turns' is {}; expected a list"),
    ("rollouts", {"meta": ["x"]}, "field 'meta' is ['x']; expected an object"),
    ("tasks", {"id": ["t"]}, "field 'id' is ['t']; expected a string"),
    ("tasks", {"choices": ["yes", 2]}, "field 'choices[1]' is 2; expected a string"),
])
def test_a_field_of_the_wrong_type_is_one_line_through_score(tmp_path, capsys, file, change, expected):
    """`turnrl score` on a record with a field of the wrong type: one line naming the file, the line, the field
    and what was expected; exit status 2; the scored file is left as it was."""
    tasks = tmp_path / "tasks" / "train.jsonl"
    rollouts = tmp_path / "rollouts" / "trajectories.jsonl"
    for path in (tasks, rollouts):
        path.parent.mkdir(parents=True)
    task = {"id": "t", "source": "test", "question": "Yes or no?", "answer": "A", "choices": ["yes", "no"]}
    traj = {"id": "t#0", "task_id": "t", "group_id": "t",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]}
    bad = {**task, "id": "u", **change} if file == "tasks" else {**traj, "id": "t#1", **change}  # on line 2
    tasks.write_text(json.dumps(task) + "\n" + (json.dumps(bad) + "\n" if file == "tasks" else ""))
    rollouts.write_text(json.dumps(traj) + "\n" + (json.dumps(bad) + "\n" if file == "rollouts" else ""))
    scored = tmp_path / "scored" / "trajectories.jsonl"
    scored.parent.mkdir(parents=True)
    scored.write_text("previous results\n")
    assert main(["score", "--run_dir", str(tmp_path), "--reward.weights", "{accuracy: 1.0}"]) == 2
    err = capsys.readouterr().err
    assert err == f"turnrl score: error: {tasks if file == 'tasks' else rollouts}:2: {expected}\n"
    assert scored.read_text() == "previous results\n"


@pytest.mark.parametrize("cls_name", ["Trajectory", "Task"])
def test_every_field_of_a_record_is_type_checked(tmp_path, cls_name):
    """Each field of the dataclass, in turn given a value of another JSON type than its annotation allows: the
    error names the file, line and that field (so a field added later is checked too)."""
    import dataclasses
    import typing

    from turnrl import records
    from turnrl.errors import InputError

    cls = getattr(records, cls_name)
    good = GOOD if cls is records.Trajectory else {"id": "t", "source": "s", "question": "q", "answer": "A"}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        container = typing.get_origin(hint) or hint
        wrong = {list: {"x": 1}, dict: ["x"]}.get(container, [["x"]])  # no scalar field takes a list
        path = tmp_path / f"{f.name}.jsonl"
        path.write_text(json.dumps({**good, f.name: wrong}) + "\n")
        with pytest.raises(InputError) as exc:
            records.read_records(path, cls)
        message = str(exc.value)
        assert message.startswith(f"{path}:1: ") and f"field '{f.name}" in message, message
        assert "\n" not in message


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("run_dir: x\n  bad: [\n")
    assert main(["run", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"turnrl run: error: {config}:2:6: not valid YAML (mapping values are " \
                                              "not allowed here)"


def test_a_corrupt_gguf_file_is_named(tmp_path, monkeypatch):
    from turnrl.errors import InputError
    from turnrl.models import resolve

    monkeypatch.setenv("TURNRL_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "model.gguf"
    broken.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    with pytest.raises(InputError, match=rf"{broken}: not a readable GGUF model file \(.*\); is it complete\? "
                                         r"\(17 bytes\)"):
        resolve(str(broken))
    assert not list((tmp_path / "cache" / "models").glob("*"))  # nothing half-written in the cache


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"turnrl {version('turnrl')}"


def test_check_resume_protects_only_logs_with_records(tmp_path):
    """A log written under other settings is refused (or restarted); an empty log, or a settings record with
    fields a newer version no longer writes, does not block the command."""
    from turnrl.errors import ConfigError
    from turnrl.records import write_json
    from turnrl.rollout import check_resume

    out, record = tmp_path / "log.jsonl", tmp_path / "log.jsonl.config.json"
    write_json(record, {"model": "/typo", "run_dir": "elsewhere"})
    out.write_text("")
    check_resume(out, record, {"model": "smollm2"}, on_change="refuse")  # no records: nothing to protect
    out.write_text('{"id": "a"}\n')
    check_resume(out, record, {"model": "smollm2"}, on_change="refuse")  # same settings; run_dir not compared
    with pytest.raises(ConfigError, match=r"started with other settings \['model'\]"):
        check_resume(out, record, {"model": "other"}, on_change="refuse")
    assert out.read_text() == '{"id": "a"}\n'
    check_resume(out, record, {"model": "other"}, on_change="restart")
    assert not out.exists()


def test_check_resume_ignores_options_the_record_predates(tmp_path):
    """A config section that gained an option since the log was started (its record lacks the key) resumes; a changed
    value of an option both know still refuses."""
    from turnrl.errors import ConfigError
    from turnrl.rollout import check_resume

    out, record = tmp_path / "log.jsonl", tmp_path / "log.jsonl.config.json"
    out.write_text('{"id": "a"}\n')
    check_resume(out, record, {"dataset": {"name": "sciq", "n_train": 8}}, on_change="refuse")
    check_resume(out, record, {"dataset": {"name": "sciq", "n_train": 8, "path": ""}}, on_change="refuse")
    with pytest.raises(ConfigError, match=r"\['dataset'\]"):
        check_resume(out, record, {"dataset": {"name": "sciq", "n_train": 9, "path": ""}}, on_change="refuse")
    assert out.read_text() == '{"id": "a"}\n'
