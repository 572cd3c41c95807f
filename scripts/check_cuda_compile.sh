#!/usr/bin/env bash
# Compiles the CUDA kernels with nvcc alone (no torch, no GPU) for sm_80 and sm_90; any warning is an error.
# Writes ptxas's register and spill report per architecture to $1 (default: build/ptxas), one file each.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x /usr/local/cuda-13.0/bin/nvcc ]; then NVCC=/usr/local/cuda-13.0/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found (set NVCC=/path/to/nvcc)" >&2
  exit 1
fi
out=${1:-build/ptxas}
mkdir -p "$out"
for arch in 80 90; do
  "$NVCC" -std=c++17 -O3 -arch=sm_$arch -Icsrc/include -Werror all-warnings -Xptxas -v \
    -c csrc/cuda/fused_cuda.cu -o "$out/fused_cuda_sm$arch.o" 2> "$out/ptxas_sm$arch.txt"
  kernels=$(grep -c "Compiling entry function" "$out/ptxas_sm$arch.txt")
  spills=$( (grep -E "[1-9][0-9]* bytes spill stores" "$out/ptxas_sm$arch.txt" || true) | wc -l)
  max_registers=$(grep -oE "Used [0-9]+ registers" "$out/ptxas_sm$arch.txt" | awk '{print $2}' | sort -n | tail -1)
  echo "sm_$arch: $kernels kernels compiled, at most $max_registers registers per thread, $spills with spills"
done
