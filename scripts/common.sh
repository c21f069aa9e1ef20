#!/usr/bin/env bash
# Helpers sourced by the run_*.sh launchers (not run directly).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# msrun starts its workers with the `python` on PATH: make that the same interpreter.
case "$PYTHON" in */*) export PATH="$(cd "$(dirname "$PYTHON")" && pwd):$PATH" ;; esac
export GLOG_v="${GLOG_v:-2}"

die_usage() {  # die_usage "message"
  echo "error: $1" >&2
  usage >&2
  exit 2
}

abs_path() {  # abs_path PATH -> absolute path (PATH need not exist)
  case "$1" in
    /*) echo "$1" ;;
    "~"/*) echo "$HOME/${1#\~/}" ;;
    *) echo "$PWD/$1" ;;
  esac
}

need_dir() { [ -d "$1" ] || die_usage "$2 '$1' is not a folder"; }
need_file() { [ -f "$1" ] || die_usage "$2 '$1' is not a file"; }
need_int() { [[ "$1" =~ ^[0-9]+$ ]] || die_usage "$2 must be a non-negative integer, got '$1'"; }
need_loss() {  # need_loss NAME: one of the loss names of src/losses/registry.py (which prints them, one a line)
  local names
  names=$("$PYTHON" -m src.losses.registry) || { echo "error: $PYTHON -m src.losses.registry failed" >&2; exit 2; }
  grep -qxF -- "$1" <<< "$names" || die_usage "LOSS_NAME must be one of $(paste -sd, <<< "$names" | sed 's/,/, /g'), got '$1'"
}

CKPT_ARGS=()
set_ckpt_args() {  # set_ckpt_args PATH NAME: CKPT_ARGS=(--ckpt_path ABS_PATH), or none for the word "none"
  CKPT_ARGS=()
  if [ "$1" != "none" ]; then
    local path; path=$(abs_path "$1")
    need_file "$path" "$2"
    CKPT_ARGS=(--ckpt_path "$path")
  fi
}

fresh_dir() {  # fresh_dir NAME: an empty folder NAME in the current directory, the old one kept as NAME.old
  if [ -e "$1" ]; then rm -rf "$1.old"; mv "$1" "$1.old"; fi
  mkdir -p "$1"
}

run_logged() {  # run_logged LOGFILE CMD...: run in the foreground, log to LOGFILE and stdout, keep the status
  local log="$1"; shift
  echo "[$(date '+%F %T')] $*" > "$log"
  set +e
  "$@" 2>&1 | tee -a "$log"
  local status=${PIPESTATUS[0]}
  set -e
  echo "exit status $status, log: $log"
  return "$status"
}
