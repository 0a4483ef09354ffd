#!/usr/bin/env bash
# Create .venv-deepsparse (once) with DeepSparse 1.8.0, for `penni-deploy bench --peers`.
# DeepSparse needs numpy<2 and Python <= 3.11, so it cannot share .venv (numpy 2); the bench runs its
# worker under this venv's Python (override with PENNI_DEEPSPARSE_PYTHON=/path/to/python).
# DeepSparse is deprecated and under Neural Magic's community licence (not Apache-2.0): read it before use.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${DEEPSPARSE_VENV:-.venv-deepsparse}"

fail() {
  echo "setup_deepsparse.sh: $*" >&2
  echo "setup_deepsparse.sh: bench --peers still runs; its deepsparse row will say DeepSparse is missing." >&2
  exit 1
}

version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || fail "cannot run $PYTHON"
"$PYTHON" -c 'import sys; sys.exit(not ((3, 8) <= sys.version_info[:2] <= (3, 11)))' \
  || fail "DeepSparse 1.8.0 needs Python 3.8-3.11, $PYTHON is $version: set PYTHON=python3.11"
[ "$(uname -m)" = x86_64 ] || fail "DeepSparse 1.8.0 has wheels for x86-64 Linux only, not $(uname -m)"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || fail "cannot create $VENV with $PYTHON -m venv (apt-get install python3-venv)"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip || fail "cannot upgrade pip in $VENV"
# onnx is pinned by deepsparse itself (onnx<1.15); numpy<2 is what its compiled engine was built against.
"$VENV/bin/python" -m pip install --quiet "deepsparse==1.8.0" "numpy<2" \
  || fail "pip could not install deepsparse==1.8.0 into $VENV (is the package registry reachable, and does it carry deepsparse 1.8.0 for Python $version?)"
NM_DISABLE_ANALYTICS=1 "$VENV/bin/python" -c 'import deepsparse, numpy; print("deepsparse", deepsparse.__version__, "numpy", numpy.__version__)' \
  || fail "deepsparse installed into $VENV but does not import (see the error above)"
echo "DeepSparse ready: $VENV/bin/python"
