#!/usr/bin/env bash
# Build the Ascend 310 runner: ascend310_infer/out/main, plus out/env.sh (its run-time environment).
# Needs the MindSpore C++ inference API (include/api/ and lib/libmindspore.so, shipped by MindSpore's Ascend
# package; found through $MINDSPORE_PATH, else the `mindspore` package of $PYTHON), the Ascend toolkit
# ($ASCEND_HOME_PATH, $ASCEND_TOOLKIT_HOME or /usr/local/Ascend/...), cmake >= 3.14, a C++17 compiler, gflags.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"

fail() {
  echo "build.sh: error: $*" >&2
  exit 1
}

MS="${MINDSPORE_PATH:-}"
if [ -z "$MS" ]; then
  # find_spec locates the package without importing it.
  MS=$("$PYTHON" -c "import importlib.util as u, os; s = u.find_spec('mindspore'); print(os.path.dirname(s.origin) if s and s.origin else '')" 2>/dev/null || true)
  [ -n "$MS" ] || fail "MindSpore not found: set MINDSPORE_PATH to the MindSpore package folder" \
    "(with include/api/ and lib/), or PYTHON to an interpreter with mindspore installed (tried: $PYTHON)"
fi
if [ ! -f "$MS/include/api/model.h" ] || [ ! -f "$MS/lib/libmindspore.so" ]; then
  fail "no MindSpore C++ inference API in $MS: include/api/model.h and lib/libmindspore.so are needed," \
    "and the CPU/GPU wheels ship neither. Install MindSpore's Ascend package or set MINDSPORE_PATH."
fi

TOOLKIT=""
for dir in "${ASCEND_HOME_PATH:-}" "${ASCEND_TOOLKIT_HOME:-}" /usr/local/Ascend/ascend-toolkit/latest /usr/local/Ascend/latest; do
  if [ -n "$dir" ] && [ -d "$dir/lib64" ]; then
    TOOLKIT="$dir"
    break
  fi
done
[ -n "$TOOLKIT" ] || fail "Ascend toolkit not found: none of \$ASCEND_HOME_PATH, \$ASCEND_TOOLKIT_HOME," \
  "/usr/local/Ascend/ascend-toolkit/latest, /usr/local/Ascend/latest has lib64/. Install CANN and source its set_env.sh."
command -v cmake > /dev/null || fail "cmake not found on PATH"

echo "MindSpore: $MS"
echo "Ascend toolkit: $TOOLKIT"
cmake -S "$HERE" -B "$HERE/build" -DCMAKE_BUILD_TYPE=Release -DMINDSPORE_PATH="$MS"
cmake --build "$HERE/build" -j "$(nproc 2> /dev/null || echo 2)"

{
  echo "# Written by build.sh: the run-time environment of out/main."
  if [ -f "$TOOLKIT/../set_env.sh" ]; then
    printf 'source %q\n' "$(cd "$TOOLKIT/.." && pwd)/set_env.sh"
  fi
  printf 'export LD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' "$MS/lib:$TOOLKIT/lib64"
} > "$HERE/out/env.sh"
echo "built: $HERE/out/main"
