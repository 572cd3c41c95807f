#!/usr/bin/env bash
# Creates .venv (once) with the pinned dev tools and installs fusedopt into it, building the CPU extension
# against the installed torch (--no-build-isolation). Used by .ci/run and bench/run.sh; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --no-build-isolation --no-deps -e .
