#!/usr/bin/env bash
# Build the offline inference runner: out/main, plus out/env.sh (its run-time environment).
# Needs MindSpore Lite's package for the machine (mindspore-lite-<version>-linux-x64 or -linux-aarch64, unpacked;
# it serves Ascend 310/310P and CPUs), found through $MS_LITE_HOME, else $LITE_HOME; cmake >= 3.14 and a C++17
# compiler. INFER_BUILD_DIR / INFER_OUT_DIR choose the build and output folders (default build/ and out/ here).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="${INFER_BUILD_DIR:-$HERE/build}"
OUT_DIR="${INFER_OUT_DIR:-$HERE/out}"

fail() {
  echo "build.sh: error: $*" >&2
  exit 1
}

LITE="${MS_LITE_HOME:-${LITE_HOME:-}}"
[ -n "$LITE" ] || fail "MindSpore Lite not found: set MS_LITE_HOME (or LITE_HOME) to the unpacked" \
  "mindspore-lite-<version>-linux-x64 or -linux-aarch64 package, which has runtime/include/api/model.h and" \
  "runtime/lib/libmindspore-lite.so (MindSpore 2.10's pip wheels have no C++ inference API)"
LITE="$(cd "$LITE" 2> /dev/null && pwd)" || fail "MS_LITE_HOME/LITE_HOME '${MS_LITE_HOME:-${LITE_HOME:-}}' is not a folder"
missing=()
for file in runtime/include/api/model.h runtime/lib/libmindspore-lite.so; do
  [ -f "$LITE/$file" ] || missing+=("$LITE/$file")
done
[ ${#missing[@]} -eq 0 ] || fail "not a MindSpore Lite package: ${missing[*]} not found"
command -v cmake > /dev/null || fail "cmake not found on PATH"

echo "MindSpore Lite: $LITE"
cmake -S "$HERE" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMS_LITE_HOME="$LITE" -DOUT_DIR="$OUT_DIR"
cmake --build "$BUILD_DIR" -j "$(nproc 2> /dev/null || echo 2)"

# Run time: Lite's libraries (third_party/dnnl: the x86 CPU kernels), and on Ascend CANN's environment.
libs="$LITE/runtime/lib"
for dir in "$LITE/runtime/third_party/dnnl" "$LITE/tools/converter/lib"; do
  [ -d "$dir" ] && libs="$libs:$dir"
done
ascend_env=""
for file in "${ASCEND_HOME_PATH:-}/../set_env.sh" "${ASCEND_TOOLKIT_HOME:-}/../set_env.sh" \
  /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/set_env.sh; do
  if [ -f "$file" ]; then
    ascend_env="$(cd "$(dirname "$file")" && pwd)/set_env.sh"
    break
  fi
done
{
  echo "# Written by build.sh: the run-time environment of out/main."
  if [ -n "$ascend_env" ]; then
    printf 'source %q\n' "$ascend_env"
  else
    echo "# No Ascend toolkit found (set_env.sh): --device_type Ascend needs CANN's environment set beforehand."
  fi
  printf 'export LD_LIBRARY_PATH=%q${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' "$libs"
} > "$OUT_DIR/env.sh"
echo "built: $OUT_DIR/main"
