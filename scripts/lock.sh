#!/usr/bin/env bash
# Remake constraints.txt (the lock) from a fresh install of the newest releases that pass the suite
# (scripts/check-newest.sh leaves them in .venv-newest).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-newest/bin/python ] || { echo "lock: run scripts/check-newest.sh first"; exit 1; }
{ sed -n 1,2p constraints.txt; .venv-newest/bin/python -m pip freeze --exclude-editable | grep -v -e "^turnrl" -e "^torch=="; } \
  > constraints.txt.new && mv constraints.txt.new constraints.txt
