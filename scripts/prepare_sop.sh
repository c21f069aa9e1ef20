#!/usr/bin/env bash
# Write train/test (+ half, tiny) list files into an extracted Stanford_Online_Products folder.
# Usage: bash scripts/prepare_sop.sh DATASET_PATH [--check] [more options of python -m src.data.sop_lists]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash $0 DATASET_PATH [--check]" >&2
  exit 2
fi
exec bash "$(dirname "$0")/prepare_lists.sh" sop "$@"
