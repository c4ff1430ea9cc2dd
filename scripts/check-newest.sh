#!/usr/bin/env bash
# The suite against the newest releases of every dependency (not the lock), in a venv of its own (.venv-newest):
# run it before remaking the lock (scripts/lock.sh), and to learn early what a new release breaks.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-newest && python3 -m venv .venv-newest
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$tmp"
ln -s "$PWD/.venv-newest" "$tmp/.venv"
(cd "$tmp" && TURNRL_NEWEST=1 scripts/setup.sh --test && .venv/bin/python -m pip check; .venv/bin/python -m pytest -q)
