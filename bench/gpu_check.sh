#!/usr/bin/env bash
# The one prepared script for a lent GPU (H200: torch 2.11 + CUDA 13, triton 3.6, nvcc 13.0, no internet):
# builds the extensions, runs the GPU tests, runs the benchmark, measures the Triton block/warp table, and writes
# everything under $OUT (default: bench/results/local). Everything together stays within GPU_CHECK_SECONDS
# (default 560, under the device tool's 600 s per call): each stage has its own limit, capped by the time left,
# a stage with no time left is skipped, and the script goes on after a failing stage, recording every exit code
# in $OUT/stages.txt. Afterwards, commit $OUT's files under bench/results/<date>-<device>/.
#
#   device run:  bash bench/gpu_check.sh          (the device tool sets $OUT)
#   a second call for the stages the first one had no time for (each call builds what it needs):
#                GPU_CHECK_STAGES="build gpu_tests_triton host_overhead triton_tune ptxas host_overhead_dtensor
#                  host_overhead_without_grads" \
#                  bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/local}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
# Work from the source tree: the Triton kernels live in triton_kernels/ and are imported as fusedopt.triton_kernels.
[ -e fusedopt/triton_kernels ] || ln -s ../triton_kernels fusedopt/triton_kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export FUSEDOPT_CUDA_ARCH=${FUSEDOPT_CUDA_ARCH:-90} MAX_JOBS=${MAX_JOBS:-16} FUSEDOPT_VERBOSE_BUILD=1
: > "$OUT/stages.txt"
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-560}))

stage() {  # stage NAME SECONDS COMMAND...: runs one stage with a time limit, logs to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ " $GPU_CHECK_STAGES " != *" $name "* ]]; then
    echo "$name not selected" >> "$OUT/stages.txt"
    return
  fi
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 15 ]; then
    echo "$name skipped: ${left}s left" | tee -a "$OUT/stages.txt"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/stages.txt"
  tail -n 3 "$OUT/$name.log"
}

stage info 30 $PY -m fusedopt info
stage build 240 $PY -c "from fusedopt import _extensions as e; e.cuda_extension(); e.cpu_extension(); print('built')"
# The CUDA backend's tests first (no JIT), the benchmark next, the Triton tests (which compile every kernel
# variant they use) after it: a call that runs out of time still has the numbers.
GPU_TESTS="tests/test_cuda.py tests/test_gpu_backends.py tests/test_triton.py tests/test_non_finite.py \
  tests/test_random_sequences.py"
stage gpu_tests_cuda 120 $PY -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS -k "not triton" \
  --junitxml="$OUT/gpu_tests_cuda.xml"
stage bench 200 $PY -m fusedopt.bench --device cuda --optimizer adamw --dtype float32,bfloat16 --variants default \
  --impl fusedopt,torch,apex,deepspeed,bitsandbytes,torchao,roofline \
  --size 1M,16M,64M,256M,gpt2-small,small-2000x4K-256K --reps 20 --no-progress \
  --json "$OUT/bench.json" --csv "$OUT/bench.csv" --plot "$OUT/bench.png"
stage summary 30 $PY bench/summarize.py "$OUT/bench.json"
# The mixed-precision issue's goals: bf16 + stochastic rounding and the fused clip+step against torch's ways.
stage bench_modes 90 bash -c "$PY -m fusedopt.bench.modes --device cuda --size 256M --json $OUT/modes.json && \
  $PY -m fusedopt.bench.modes --device cuda --size gpt2-small --json $OUT/modes-gpt2.json"
stage gpu_tests_triton 200 $PY -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS -k triton \
  --junitxml="$OUT/gpu_tests_triton.xml"
stage host_overhead 40 $PY bench/host_overhead.py --device cuda --reps 200 --json "$OUT/host_overhead.json"
stage triton_tune 90 $PY bench/triton_tune.py --out "$OUT" --reps 10
stage ptxas 60 bash scripts/check_cuda_compile.sh "$OUT/ptxas"
stage host_overhead_dtensor 30 $PY bench/host_overhead.py --device cuda --dtensor --reps 50 \
  --json "$OUT/host_overhead_dtensor.json"
# Planned steps that leave out parameters without a grad: the CUDA binding builds a device table per grad pattern.
stage host_overhead_without_grads 30 $PY bench/host_overhead.py --device cuda --without-grads 10 --reps 100 \
  --json "$OUT/host_overhead_without_grads.json"
cp "$OUT/summary.log" "$OUT/summary.md" 2>/dev/null
echo "== stages"; cat "$OUT/stages.txt"
grep -E "^\| (fusedopt|torch-fused|roofline)" "$OUT/summary.md" 2>/dev/null | head -40
