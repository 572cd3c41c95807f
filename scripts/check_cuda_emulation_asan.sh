#!/usr/bin/env bash
# Runs the CUDA kernels' host emulation (NOTE [cuda host emulation]) under AddressSanitizer: every test that uses
# backend "cuda" on CPU tensors, with the emulation built with -fsanitize=address and libasan preloaded into Python,
# so that a kernel reading or writing past the end of a tensor's allocation (which a GPU may not notice either)
# stops the run with a report. Not part of CI (a second build, and the tests run about 3x slower); run it after
# changing the kernels or the binding. Uses the dev venv (.venv, scripts/setup_env.sh) or $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
libasan=$(gcc -print-file-name=libasan.so)
# libstdc++ preloaded too: ASan must find the real __cxa_throw when the first C++ exception is thrown.
libstdcxx=$(gcc -print-file-name=libstdc++.so)
[ -f "$libasan" ] || { echo "check_cuda_emulation_asan: gcc's libasan.so not found" >&2; exit 1; }
# Python's and torch's own allocations are not checked for leaks (they keep memory until exit on purpose);
# --capture=sys leaves file descriptor 2 to ASan, whose report would otherwise be lost with the aborting process.
FUSEDOPT_EMULATION_SANITIZE=address LD_PRELOAD="$libasan $libstdcxx" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  "$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys -k cuda "$@" \
  tests/test_gpu_backends.py tests/test_cuda_emulation.py tests/test_device_steps.py tests/test_step_plan.py \
  tests/test_mixed_precision.py tests/test_state_dtype.py tests/test_amp_and_clipping.py tests/test_launch_grouping.py \
  tests/test_state_dict.py tests/test_against_torch.py tests/test_integration.py tests/test_schedulers.py \
  tests/test_non_finite.py tests/test_functional_operands.py
