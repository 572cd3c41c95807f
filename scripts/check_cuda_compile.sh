#!/usr/bin/env bash
# Compiles the CUDA kernels with nvcc alone (no torch, no GPU) for sm_80 and sm_90; any warning is an error.
# Writes ptxas's register and spill report per architecture to $1 (default: build/ptxas), one file each, and checks
# the PTX (scripts/ptx_checks.py): correctly rounded square roots and divisions, no flushed subnormals, no generic
# loads or stores, and 16-byte global loads and stores in every kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x /usr/local/cuda-13.0/bin/nvcc ]; then NVCC=/usr/local/cuda-13.0/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 1
fi
PYTHON=${PYTHON:-python3}
# The nvcc flags of the real build, torch's and fusedopt's (fusedopt/_build_config.py, loaded by path: it imports no
# torch).
code_flags=$("$PYTHON" -c 'import importlib.util as u; s = u.spec_from_file_location("c", "fusedopt/_build_config.py")
m = u.module_from_spec(s); s.loader.exec_module(m); print(" ".join(m.nvcc_standalone_flags()))')
out=${1:-build/ptxas}
mkdir -p "$out"
for arch in 80 90; do
  # -keep leaves the PTX of this very compile (with the other intermediate files, removed after the check).
  keep="$out/keep_sm$arch"
  rm -rf "$keep" && mkdir -p "$keep"
  "$NVCC" -std=c++17 $code_flags -arch=sm_$arch -Icsrc/include -Werror all-warnings -Xptxas -v -keep -keep-dir "$keep" \
    -c csrc/cuda/fused_cuda.cu -o "$out/fused_cuda_sm$arch.o" 2> "$out/ptxas_sm$arch.txt"
  "$PYTHON" scripts/ptx_checks.py "$keep/fused_cuda.ptx" > "$out/ptx_checks_sm$arch.txt" ||
    { cat "$out/ptx_checks_sm$arch.txt" >&2; exit 1; }
  rm -rf "$keep"
  kernels=$(grep -c "Compiling entry function" "$out/ptxas_sm$arch.txt")
  spills=$( (grep -E "[1-9][0-9]* bytes spill stores" "$out/ptxas_sm$arch.txt" || true) | wc -l)
  max_registers=$(grep -oE "Used [0-9]+ registers" "$out/ptxas_sm$arch.txt" | awk '{print $2}' | sort -n | tail -1)
  echo "sm_$arch: $kernels kernels compiled, at most $max_registers registers per thread, $spills with spills;" \
    "PTX: sqrt and division correctly rounded, no flushed subnormals, global 16-byte accesses in every kernel"
done
