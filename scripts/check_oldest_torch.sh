#!/usr/bin/env bash
# fusedopt on the oldest torch it supports (torch 2.4.1 and its Triton 3.0.0), without a GPU:
#   1. builds and installs the package with the CPU extension (warnings as errors) into .venv-torch24,
#   2. compiles the CUDA extension's torch binding against torch 2.4.1's headers (g++ -fsyntax-only; the kernel
#      units include no torch header, and nvcc 13 cannot build against torch's CUDA 12.1),
#   3. compiles every Triton kernel with Triton 3.0 for sm_80/sm_90 and checks the PTX (tests/test_triton_compile.py),
#   4. runs the test suite on the installed package, except what torch 2.4 / Triton 3.0 cannot run on a CPU:
#      - the Triton kernels through the interpreter (Triton 3.0's interpreter hands a jit helper its constexpr block
#        size as an array, and tl.arange refuses it; compiled, step 3 covers them): tests/test_triton.py,
#        tests/test_gpu_backends.py (which runs them on CPU tensors without a GPU) and the Triton rows of the
#        host-time benchmark; TRITON_INTERPRET=0 keeps Triton out of every other test's backends,
#      - FSDP2 on two CPU ranks (torch 2.4's fully_shard makes CUDA streams whatever the device).
# Not part of .ci/run: it downloads about 3.5 GB from PyPI. Output: bench/results/<date>-cpu/oldest_torch.txt.
# With the oldest Python too (pyproject's requires-python):
#   PYTHON=python3.9 VENV=.venv-torch24-py39 bash scripts/check_oldest_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
VENV=${VENV:-.venv-torch24}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -r requirements-oldest-torch.txt
python_bin=$(cd "$VENV/bin" && pwd)/python
"$python_bin" -c "import sys, torch, triton
print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__)"

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r setup.py pyproject.toml README.md fusedopt triton_kernels csrc "$build"/
find "$build/fusedopt" -name "*.so" -delete
rm -f "$build/fusedopt/triton_kernels"
echo "== 1. build and install (CPU extension, -Werror)"
(cd "$build" && FUSEDOPT_WERROR=1 FUSEDOPT_SKIP_CUDA_BUILD=1 "$python_bin" -m pip install --quiet --no-build-isolation \
  --no-deps .)

echo "== 2. the CUDA binding against torch 2.4.1's headers"
site=$("$python_bin" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
includes=$("$python_bin" -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
print(' '.join('-isystem ' + p for p in include_paths() + [sysconfig.get_paths()['include']]))" 2>/dev/null)
# torch's CUDA headers need the CUDA runtime, cuBLAS and cuSPARSE headers of its nvidia wheels (CUDA 12.1); those
# wheels lack crt/host_defines.h, which the machine's CUDA 13 headers supply.
for dir in "$site"/nvidia/*/include; do includes="$includes -isystem $dir"; done
# shellcheck disable=SC2086
g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror $includes -isystem "${CUDA_HOME:-/usr/local/cuda-13.0}/include" \
  -Icsrc/include -DTORCH_EXTENSION_NAME=_cuda_ext -DTORCH_API_INCLUDE_EXTENSION_H csrc/cuda/bindings_cuda.cpp
echo "csrc/cuda/bindings_cuda.cpp compiles against torch 2.4.1"

# From an empty folder outside the checkout, so that `import fusedopt` finds the installed package (`python -m` puts
# the working folder first on sys.path: the checkout, or the build copy, would shadow it).
mkdir "$build/run"
cd "$build/run"
"$python_bin" -c "import fusedopt; print('fusedopt from', fusedopt.__file__)"
echo "== 3. Triton 3.0 compiles every kernel"
"$python_bin" -m pytest -q -p no:cacheprovider "$repo/tests/test_triton_compile.py"
echo "== 4. the test suite"
TRITON_INTERPRET=0 FUSEDOPT_REQUIRE_BACKENDS=cpu "$python_bin" -m pytest -q -p no:cacheprovider "$repo/tests" \
  --ignore "$repo/tests/test_triton.py" --ignore "$repo/tests/test_triton_compile.py" \
  --ignore "$repo/tests/test_gpu_backends.py" -rs \
  -k "not test_host_overhead_script and not (test_two_ranks and not zero_redundancy_optimizer)"
