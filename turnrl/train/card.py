"""Model cards for trained checkpoints, and publishing a checkpoint to the Hugging Face Hub.

Every checkpoint folder gets a ``README.md`` in the Hub's model-card form: YAML front matter (``base_model`` as a
hub id, ``library_name``, tags) and what made it -- the algorithm and its paper, the data it was trained on (log
size, reward components, the weights' effective sample size or the pairs), the hyperparameters, and held-out
results where the checkpoint has been evaluated. ``turnrl train --push_to_hub`` (or :func:`push_to_hub`) uploads
the folder with the card; the uploaded adapter config names the base model by its hub id, not by a path on the
training machine.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from turnrl.layout import SCORED
from turnrl.models import ALIASES, HUB_IDS

CARD = "README.md"


def hub_id(model: str) -> str | None:
    """The hub id of a model name: an alias's published original, a hub id itself, a turnrl checkpoint's own base
    (recursively); None for a local folder or file of unknown origin."""
    if model in HUB_IDS:
        return HUB_IDS[model]
    path = Path(model).expanduser()
    if path.is_dir():
        record = path / "turnrl_train.json"
        return hub_id(json.loads(record.read_text()).get("model", "")) if record.exists() else None
    if model and model not in ALIASES and not path.exists() and model.count("/") == 1 and \
            not model.endswith((".gguf", ".safetensors", ".bin")) and not model.startswith((".", "/", "~")):
        return model
    return None


def _log_summary(log: Path) -> dict[str, Any]:
    from turnrl.records import iter_jsonl

    n, rewards, components = 0, [], {}
    if log.exists():
        for _, row in iter_jsonl(log):
            n += 1
            if row.get("reward") is not None:
                rewards.append(float(row["reward"]))
            for name in row.get("rewards") or {}:
                components[name] = components.get(name, 0) + 1
    return {"trajectories": n, "scored": len(rewards),
            "mean_reward": sum(rewards) / len(rewards) if rewards else None, "components": sorted(components)}


def _evaluations(checkpoint: Path, run_dir: Path, name: str) -> list[tuple[str, dict[str, Any]]]:
    """(split, summary) of each evaluation of this checkpoint's method in its run directory."""
    from turnrl.layout import RunDir

    out = []
    for split in ("val", "test"):
        metrics = RunDir(run_dir).metrics(name, split)
        if metrics.exists():
            out.append((split, json.loads(metrics.read_text())))
    return out


def model_card(checkpoint: Path) -> str:
    """The card of a checkpoint folder, from its ``turnrl_train.json`` and the run it belongs to."""
    from turnrl.algorithms.registry import get_algorithm

    record = json.loads((checkpoint / "turnrl_train.json").read_text())
    config = record.get("config", {})
    algo, optim, diag = config.get("algo", {}), config.get("optim", {}), record.get("diagnostics", {})
    name = algo.get("name", "")
    try:
        algorithm = get_algorithm(name)
        display, paper, sections = algorithm.display, algorithm.paper, (*algorithm.sections, "extra")
    except Exception:  # an extension algorithm not registered in this process
        display, paper, sections = name, "", ("extra",)
    base = record.get("model", "")
    base_hub = hub_id(base)
    adapter = (checkpoint / "adapter_config.json").exists()
    run_dir = Path(config.get("run_dir", checkpoint.parent.parent.parent))
    data = _log_summary(run_dir / config.get("input", SCORED))

    front = ["---"]
    if base_hub:
        front.append(f"base_model: {base_hub}")
    front += [f"library_name: {'peft' if adapter else 'transformers'}", "pipeline_tag: text-generation", "tags:",
              "- turnrl", f"- {name}", "- reinforcement-learning", "- multi-turn", "---", ""]
    where = f"[{base_hub}](https://huggingface.co/{base_hub})" if base_hub else f"`{base}`"
    if base_hub and base != base_hub:
        where += f" (trained from turnrl's `{base}`)"
    lines = [f"# {display} policy ({'LoRA adapter' if adapter else 'full fine-tune'})", "",
             f"A multi-turn conversation policy trained with turnrl's `{name}` ({display}"
             f"{', ' + paper if paper else ''}) from {where}.", "", "## Data", ""]
    lines.append(f"- Log: {data['trajectories']} logged conversations ({data['scored']} with a reward"
                 + (f", mean reward {data['mean_reward']:.3f}" if data["mean_reward"] is not None else "") + ")")
    if data["components"]:
        lines.append(f"- Reward components recorded: {', '.join(data['components'])}")
    for key, label in (("trajectories", "Trajectories used"), ("nonzero", "With a non-zero weight"),
                       ("ess", "Effective sample size of the weights"), ("pairs", "Preference pairs"),
                       ("examples", "KTO examples"), ("pairing", "Pairing")):
        if key in diag:
            value = f"{diag[key]:.1f}" if isinstance(diag[key], float) else diag[key]
            lines.append(f"- {label}: {value}")
    lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
    shown = {"algorithm": name}
    for key, value in algo.items():  # the algorithm's own sections, not every algorithm's
        if isinstance(value, dict):
            shown.update({f"algo.{key}.{k}": v for k, v in value.items() if key in sections and v not in ("", None)})
        elif key != "name" and value not in ("", None):
            shown[f"algo.{key}"] = value
    for key in ("learning_rate", "epochs", "batch_size", "schedule", "warmup_ratio", "weight_decay", "precision",
                "lora", "lora_r", "lora_alpha", "max_length", "seed"):
        if key in optim:
            shown[f"optim.{key}"] = optim[key]
    for key, value in shown.items():
        lines.append(f"| {key} | {value} |")
    summary = record.get("summary", {})
    if "steps" in summary:
        lines += ["", f"{summary['steps']} optimiser steps."]
    evaluations = _evaluations(checkpoint, run_dir, name)
    lines += ["", "## Evaluation", ""]
    if evaluations:
        lines += ["| pool | questions | accuracy % | SE |", "|---|---|---|---|"]
        for split, s in evaluations:
            acc = s.get("metrics", {}).get("accuracy", {})
            if acc:
                lines.append(f"| {split} | {acc.get('n', '')} | {100 * acc['mean']:.1f} | {100 * acc['se']:.1f} |")
    else:
        lines.append("Not evaluated yet: `turnrl evaluate` on this checkpoint writes its held-out results here.")
    lines += ["", "## Use", "", "```python"]
    if adapter:
        lines += ["from peft import AutoPeftModelForCausalLM", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("<this repository>")']
    else:
        lines += ["from transformers import AutoModelForCausalLM", "",
                  'model = AutoModelForCausalLM.from_pretrained("<this repository>")']
    lines += ["```", ""]
    return "\n".join(front + lines)


def write_card(checkpoint: Path) -> Path:
    """(Re)write the card of a checkpoint folder; returns its path."""
    from turnrl.records import atomic_write_text

    path = checkpoint / CARD
    atomic_write_text(path, model_card(checkpoint))
    return path


def push_to_hub(checkpoint: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                endpoint: str | None = None) -> str:
    """Upload a checkpoint folder (weights, tokenizer, card, turnrl_train.json) to the Hub as ``repo_id``; the
    uploaded adapter config names the base by its hub id where one is known. Returns the commit URL."""
    from huggingface_hub import HfApi

    checkpoint = Path(checkpoint)
    if not (checkpoint / "turnrl_train.json").exists():
        from turnrl.errors import InputError

        raise InputError(f"{checkpoint}: not a turnrl checkpoint (no turnrl_train.json)")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "checkpoint"
        shutil.copytree(checkpoint, staged)
        base_hub = hub_id(json.loads((checkpoint / "turnrl_train.json").read_text()).get("model", ""))
        adapter_config = staged / "adapter_config.json"
        if adapter_config.exists() and base_hub:
            cfg = json.loads(adapter_config.read_text())
            cfg["base_model_name_or_path"] = base_hub
            adapter_config.write_text(json.dumps(cfg, indent=2) + "\n")
        if not (staged / CARD).exists():
            (staged / CARD).write_text(model_card(checkpoint))
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=staged, commit_message="Upload turnrl checkpoint")
    return str(getattr(info, "commit_url", info))
