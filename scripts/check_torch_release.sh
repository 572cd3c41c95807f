#!/usr/bin/env bash
# The whole test suite on another torch release than CI's 2.13.0, with the Triton it brings, without a GPU:
#   bash scripts/check_torch_release.sh 2.11.0   the lent H200's torch (a CUDA 13 build with Triton 3.6.0)
#   bash scripts/check_torch_release.sh 2.14.1   the newest (a CUDA 13 build with Triton 3.8.0)
# each in a virtual environment of its own, .venv-torch-<release> (VENV= names another; PYTHON= picks the Python that
# makes it, for example PYTHON=python3.12 VENV=.venv-torch-2.11.0-py312 for the H200's Python too).
# For a CUDA build of torch, first builds the whole CUDA extension against it (check_cuda_extension.sh: what a GPU
# machine with that torch builds). Then builds and installs the package with the CPU extension (warnings as errors)
# from a copy of the tree, and runs the suite on the installed package from outside the checkout, with the fused CPU
# backend, interpreted Triton and the CUDA host emulation required, as in CI. What fails here against that
# torch.optim, or with that Triton, fails on a GPU too. Not part of .ci/run: each release is a 3 to 5 GB download.
# Output: bench/results/<date>-cpu/torch_<release>_py<python version>.txt.
# The oldest supported torch (2.4.1) has its own script, check_oldest_torch.sh: it cannot run all of the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
release=${1:?usage: check_torch_release.sh TORCH_RELEASE (for example 2.11.0)}
VENV=${VENV:-.venv-torch-$release}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch==$release" -r requirements-torch-releases.txt
python_bin=$(cd "$VENV/bin" && pwd)/python
python_tag=$("$python_bin" -c "import sys; print(f'py{sys.version_info[0]}{sys.version_info[1]}')")
out="$repo/bench/results/$(date +%F)-cpu/torch_${release}_$python_tag.txt"
mkdir -p "$(dirname "$out")"
{
  "$python_bin" -c "import sys, numpy, torch, triton
print('python', sys.version.split()[0], '| torch', torch.__version__, '| triton', triton.__version__, '| numpy',
      numpy.__version__)"
  if "$python_bin" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
    CUDA_TORCH_VENV=$VENV bash scripts/check_cuda_extension.sh
  fi
} 2>&1 | tee "$out"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r setup.py pyproject.toml README.md fusedopt triton_kernels csrc "$build"/
find "$build/fusedopt" -name "*.so" -delete
rm -f "$build/fusedopt/triton_kernels"
(cd "$build" && FUSEDOPT_WERROR=1 FUSEDOPT_SKIP_CUDA_BUILD=1 "$python_bin" -m pip install --quiet --no-build-isolation \
  --no-deps .)
# From an empty folder outside the checkout, so that `import fusedopt` finds the installed package (`python -m` puts
# the working folder first on sys.path: the checkout, or the build copy, would shadow it).
mkdir "$build/run"
cd "$build/run"
{
  "$python_bin" -c "import fusedopt; print('fusedopt from', fusedopt.__file__)"
  TORCH_EXTENSIONS_DIR="$build/torch_extensions" FUSEDOPT_REQUIRE_BACKENDS=cpu,triton,cuda-emulation \
    "$python_bin" -m pytest -q -p no:cacheprovider "$repo/tests" -rs
} 2>&1 | tee -a "$out"
