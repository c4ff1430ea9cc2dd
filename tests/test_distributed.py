"""Data-parallel training (torchrun, 2 processes on CPU with gloo) equals one process on the same steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from turnrl.records import Trajectory, TurnInfo, write_jsonl


def logged(run_dir: Path, tiny_model_dir: Path) -> None:
    rewards = [0.9, 0.1, 0.5, 0.7, 0.0, 0.3, 1.0, 0.2]
    trajectories = [
        Trajectory(id=f"t{k // 2}#{k % 2}", task_id=f"t{k // 2}", group_id=f"t{k // 2}", sample=k % 2,
                   reward=rewards[k], policy={"model": str(tiny_model_dir)},
                   messages=[{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": f"Question {k}: pick A or B."},
                             {"role": "assistant", "content": "Thinking it over. " * (1 + k % 3)},
                             {"role": "user", "content": "Final answer?"},
                             {"role": "assistant", "content": f"The answer is {'AB'[k % 2]}."}],
                   turns=[TurnInfo(5, False), TurnInfo(5, False)])
        for k in range(8)
    ]
    write_jsonl(run_dir / "scored" / "trajectories.jsonl", trajectories)


def test_two_processes_train_like_one(tmp_path, tiny_model_dir):
    logged(tmp_path, tiny_model_dir)
    args = ["train", "--run_dir", str(tmp_path), "--algo.name", "swift", "--optim.precision", "fp32",
            "--optim.batch_size", "4", "--optim.epochs", "2", "--optim.micro_batch_tokens", "120"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "turnrl.cli", *args, "--output", "one"], check=True, env=env,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "turnrl.cli", *args, "--output", "two"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [json.loads(line) for line in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 4  # one log, written by the main process only
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * a["grad_norm"]
    w1 = load_file(tmp_path / "one" / "checkpoint" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "checkpoint" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-5, atol=1e-6)
