#!/usr/bin/env bash
# Write the list files of a retrieval benchmark into its extracted folder: sop, cub, cars or inshop.
# Usage: bash scripts/prepare_lists.sh DATASET ROOT [--check] [--subset] [--out-dir DIR]
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash $0 DATASET ROOT [--check] [--subset] [--out-dir DIR]   (DATASET: sop, cub, cars or inshop)" >&2
  exit 2
fi
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="$REPO/.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m src.data.benchmark_lists "$@"
