#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The C++ host's build tools and libraries (cmake, g++, OpenSSL, zlib): installs only what is missing.
bash scripts/setup_cpp.sh
exec .venv/bin/python -m pytest -q "$@"
