#!/usr/bin/env bash
# Set up .venv (if missing), install runtime + test dependencies, run the test suite on every core.
# Usage: bash scripts/run_tests.sh [--quick] [pytest args...]
#   --quick   the tests not marked slow (no end-to-end training runs): the daily tier, about a minute on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[run_tests] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
if [ "${1:-}" = "--quick" ]; then
  shift
  exec .venv/bin/python -m pytest -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
