#!/usr/bin/env bash
# Write train/test (+ half, tiny) list files into an extracted Stanford_Online_Products folder.
# Usage: bash scripts/prepare_sop.sh DATASET_PATH [--check] [more options of python -m src.sop_lists]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash $0 DATASET_PATH [--check]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="$REPO/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m src.sop_lists "$@"
