"""The accelerate configs of configs/accelerate/, read by accelerate and launched for real on this machine's CPUs.

Each launch is ``accelerate launch --config_file <config> --num_processes 2`` of ``turnrl train`` (two optimizer
steps on the tiny random model, gloo between the processes), checked against one process on the same steps: the
same losses, gradient norms, learning rates and weights.

- ``ddp.yaml``: as launched.
- ``fsdp.yaml``: as launched, accelerate runs DDP on CPU processes (it builds FSDP on GPUs only) and turnrl says so;
  through ``tests/accelerate_cpu.py``, which switches accelerate to the FSDP engine the config describes, the real
  FSDP2 sharding, with steps whose processes have different numbers of micro-batches (turnrl pads them with idle
  passes: every FSDP pass is collective) and a LoRA DPO run whose reference pass goes through the sharded policy.
- ``deepspeed-zero2-offload.yaml``: through ``tests/accelerate_cpu.py``, DeepSpeed's ZeRO-2 engine with the
  optimizer offloaded (DeepSpeed's CPU Adam, compiled on first use), where DeepSpeed and a C++ compiler are
  installed (``pip install deepspeed``: pure Python, its ops compile when used).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import logged

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
NAMES = ["ddp", "fsdp", "deepspeed-zero2-offload"]
KINDS = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2-offload": "DEEPSPEED"}
# 4 trajectories per step, each its own micro-batch (50 tokens): step 2 gives one process two micro-batches and the
# other one; step 1 leaves one process without data. Linear decay, so that a schedule stepped twice would show.
ARGS = ["train", "--algo.name", "swift", "--optim.precision", "fp32", "--optim.batch_size", "4", "--optim.epochs",
        "1", "--optim.micro_batch_tokens", "50", "--optim.schedule", "linear", "--optim.warmup_ratio", "0",
        "--optim.learning_rate", "1e-4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def launch(config: str, args: list[str], engine: bool = False) -> subprocess.CompletedProcess:
    """``accelerate launch`` with this config on 2 processes: ``turnrl`` itself, or (``engine``) through
    tests/accelerate_cpu.py with the config's engine switched on."""
    entry = [str(ROOT / "tests" / "accelerate_cpu.py")] if engine else ["-m", "turnrl.cli"]
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
           "--num_processes", "2", "--main_process_port", str(free_port()), *entry, *args]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def log(run: Path, output: str) -> list[dict]:
    return [json.loads(line) for line in (run / output / "train_log.jsonl").read_text().splitlines()]


def assert_like(run: Path, output: str, reference: str, keys=("loss", "grad_norm", "lr", "nll_per_token")) -> None:
    got, want = log(run, output), log(run, reference)
    assert len(got) == len(want) == 2  # one log, written by the main process only
    for a, b in zip(got, want):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (key, a, b)
    assert_same_weights(run / output / "checkpoint", run / reference / "checkpoint")


def assert_same_weights(got: Path, want: Path) -> None:
    """The two checkpoints load as the same model. (A sharded engine's gathered state holds the tied output layer
    as a tensor of its own, so its file has ``lm_head.weight`` beside the embedding, equal to it.)"""
    from transformers import AutoModelForCausalLM

    saved, reference = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    assert set(saved) - set(reference) <= {"lm_head.weight"}
    if "lm_head.weight" in saved and "lm_head.weight" not in reference:
        torch.testing.assert_close(saved["lm_head.weight"], saved["model.embed_tokens.weight"], rtol=0, atol=0)
    a, b = (AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).state_dict() for d in (got, want))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir) -> Path:
    """A scored log of 8 trajectories and one process's training on it (output ``one``)."""
    run = tmp_path_factory.mktemp("accelerate")
    logged(run, tiny_model_dir)
    proc = subprocess.run([sys.executable, "-m", "turnrl.cli", *ARGS, "--run_dir", str(run), "--output", "one"],
                          env=env(), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["active"] for r in log(run, "one")] == [1, 3]
    return run


# --------------------------------------------------------------------------- what accelerate reads from each file


def launch_environment(name: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file <name>`` gives its processes (accelerate's own parsing)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "-m", "turnrl.cli"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", NAMES)
def test_accelerate_reads_each_config(name, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == KINDS[name]
    assert (config.num_machines, config.machine_rank, config.mixed_precision) == (1, 0, "no")
    launched = launch_environment(name)
    assert launched["ACCELERATE_MIXED_PRECISION"] == "no"  # turnrl's optim.precision decides
    for key, value in launched.items():
        monkeypatch.setenv(key, value)
    if name == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"
        assert launched["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
        assert launched["FSDP_OFFLOAD_PARAMS"] == "false"
    elif name == "deepspeed-zero2-offload":
        pytest.importorskip("deepspeed")
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin()
        zero = plugin.deepspeed_config["zero_optimization"]
        assert plugin.zero_stage == 2 and zero["stage"] == 2
        assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "none"
    else:
        assert "ACCELERATE_USE_FSDP" not in launched and "ACCELERATE_USE_DEEPSPEED" not in launched


# --------------------------------------------------------------------------- launched


@pytest.mark.slow
def test_ddp_config_trains_like_one_process(run):
    launch("ddp", [*ARGS, "--run_dir", str(run), "--output", "ddp"])
    assert_like(run, "ddp", "one")


@pytest.mark.slow
def test_fsdp_config_on_cpu_processes_says_it_runs_ddp(run):
    proc = launch("fsdp", [*ARGS, "--run_dir", str(run), "--output", "fsdp-ddp"])
    assert "asks for FSDP, but accelerate runs MULTI_CPU on cpu" in proc.stdout
    assert_like(run, "fsdp-ddp", "one")


@pytest.mark.slow
def test_fsdp_engine_trains_like_one_process(run):
    """FSDP2 sharding for real: without the idle passes, step 2 (two micro-batches on one process, one on the
    other) hangs in the second process's missing all-gather."""
    proc = launch("fsdp", [*ARGS, "--run_dir", str(run), "--output", "fsdp"], engine=True)
    # the root and each of the 2 decoder layers, sharded on their own (the wrapper names the layer class)
    assert proc.stdout.count("accelerate_cpu: FSDP FSDPMaskedLogprobLM AdamW fsdp_units=3") == 2
    assert_like(run, "fsdp", "one")


@pytest.mark.slow
def test_fsdp_engine_lora_dpo_with_the_reference_through_the_policy(tmp_path, tiny_model_dir):
    """M-DPO with a fresh LoRA adapter and no precomputation: the reference is the policy with its adapter off, a
    pass through the sharded model that an idle process must join too. (LoRA dropout 0: dropout masks are drawn per
    process, so with dropout the runs would differ.)"""
    from test_preference import _write_run, traj

    pairs = [traj(g, k, float(k == 0), f"The answer is {'AB'[k]}. " + "More. " * (i % 3), float(k == 0))
             for i, g in enumerate("abcde") for k in (0, 1)]
    _write_run(tmp_path, tiny_model_dir, pairs)
    args = ["train", "--run_dir", str(tmp_path), "--algo.name", "m-dpo", "--algo.preference.precompute_reference", "false",
            "--optim.lora", "true", "--optim.lora_dropout", "0", "--optim.precision", "fp32", "--optim.batch_size",
            "3", "--optim.micro_batch_tokens", "60", "--optim.learning_rate", "1e-3", "--optim.warmup_ratio", "0"]
    one = subprocess.run([sys.executable, "-m", "turnrl.cli", *args, "--output", "one"], env=env(),
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = launch("fsdp", [*args, "--output", "fsdp"], engine=True)
    assert proc.stdout.count("accelerate_cpu: FSDP FSDPMaskedLogprobLM AdamW fsdp_units=3") == 2
    got, want = log(tmp_path, "fsdp"), log(tmp_path, "one")
    assert len(got) == len(want) == 2
    assert want[1]["rewards/margin"] != 0  # the first step moved the policy away from its reference
    for a, b in zip(got, want):
        for key in ("loss", "grad_norm", "rewards/margin", "logps/chosen"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), (key, a, b)


@pytest.mark.slow
def test_deepspeed_zero2_offload_engine_trains_like_one_process(run):
    pytest.importorskip("deepspeed")
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("DeepSpeed's CPU Adam compiles on first use: no C++ compiler")
    proc = launch("deepspeed-zero2-offload", [*ARGS, "--run_dir", str(run), "--output", "deepspeed"], engine=True)
    assert proc.stdout.count("accelerate_cpu: DEEPSPEED DeepSpeedEngine DeepSpeedZeroOptimizer/DeepSpeedCPUAdam "
                             "fsdp_units=0") == 2
    assert_like(run, "deepspeed", "one")
