#!/usr/bin/env bash
# Builds the whole CUDA extension (kernels and torch binding) against a CUDA 13 build of torch, without a GPU,
# with warnings as errors, then imports it. The build happens in a temporary copy so the CPU build of the
# work tree stays as it is. Needs nvcc 13 (default /usr/local/cuda-13.0); torch comes from
# requirements-cuda-ci.txt into .venv-cuda (about 5.5 GB), or is the one a CUDA_TORCH_VENV already holds
# (check_torch_release.sh builds against other releases so).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0}
VENV=${CUDA_TORCH_VENV:-.venv-cuda}
if [ -z "${CUDA_TORCH_VENV:-}" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet -r requirements-cuda-ci.txt
fi
python_bin=$(cd "$VENV/bin" && pwd)/python
# torch's headers include cuBLAS and cuSPARSE headers, which come with the nvidia cu13 wheels, not with nvcc.
nvidia=$("$python_bin" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r setup.py pyproject.toml README.md fusedopt triton_kernels csrc "$build"/
find "$build/fusedopt" -name "*.so" -delete
cd "$build"
CUDA_HOME=$CUDA_HOME CPATH=$nvidia/include LIBRARY_PATH=$nvidia/lib FUSEDOPT_WERROR=1 FUSEDOPT_SKIP_CPU_BUILD=1 \
  "$python_bin" setup.py --quiet build_ext --inplace
"$python_bin" -c "import torch, fusedopt._cuda_ext as ext; assert callable(ext.adam); print('CUDA extension built and imported against torch', torch.__version__)"
PYTHONPATH=$build "$python_bin" "$repo/scripts/cuda_binding_signature_check.py"
