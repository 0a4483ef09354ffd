#!/usr/bin/env bash
# Build build/cpp/penni-run (and libpenni_runtime.a) against the TVM runtime of the installed
# apache-tvm wheel. Python is used here only to find the wheel's libraries, headers and version;
# the result links no libpython and no TVM compiler library.
#   PYTHON=...   the Python whose apache-tvm to build against (default: .venv/bin/python)
#   BUILD_DIR=.. where to build (default: build/cpp)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_cpp.sh
PYTHON="${PYTHON:-.venv/bin/python}"
BUILD_DIR="${BUILD_DIR:-build/cpp}"
if [ ! -x "$PYTHON" ]; then
  echo "error: $PYTHON not found; run bash scripts/setup.sh first or set PYTHON=/path/to/python with apache-tvm" >&2
  exit 2
fi
# One line of four ;-free fields: runtime library, FFI library, include dirs (;-joined for CMake), version.
IFS='|' read -r runtime ffi includes version < <("$PYTHON" - <<'PY'
import os
import tvm, tvm_ffi
tvm_dir, ffi_dir = os.path.dirname(tvm.__file__), os.path.dirname(tvm_ffi.__file__)
runtime = os.path.join(tvm_dir, "lib", "libtvm_runtime.so")
ffi = os.path.join(ffi_dir, "lib", "libtvm_ffi.so")
includes = [os.path.join(ffi_dir, "include"), os.path.join(ffi_dir, "3rdparty", "dlpack", "include")]
for path in [runtime, ffi, *includes]:
    if not os.path.exists(path):
        raise SystemExit(f"error: the installed wheels lack {path}; reinstall apache-tvm and apache-tvm-ffi")
print("|".join([runtime, ffi, ";".join(includes), tvm.__version__]))
PY
)
GENERATOR=()
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ] && command -v ninja >/dev/null; then
  GENERATOR=(-G Ninja)  # a configured folder keeps the generator it was made with
fi
cmake -S cpp -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DTVM_RUNTIME_LIB="$runtime" -DTVM_FFI_LIB="$ffi" -DTVM_INCLUDE_DIRS="$includes" -DTVM_VERSION="$version" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
echo "built $BUILD_DIR/penni-run (TVM $version runtime in $BUILD_DIR/lib)" >&2
