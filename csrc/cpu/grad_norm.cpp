// csrc/cpu/grad_norm.cpp -- the multi-tensor norm of grad_norm.h: one pass over all tensors, OpenMP across chunks,
// SIMD within a chunk (parallel_chunks.h).
#include "grad_norm.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fusedopt/host_storage.h"
#include "parallel_chunks.h"

namespace fusedopt::cpu {

namespace {

// Double accumulators: a float32 square never overflows one, and a chunk's 32K terms lose nothing a float32 result
// would keep, so each norm, rounded to its tensor's dtype by the caller, is at least as accurate as torch's.
template <typename T>
FUSEDOPT_ALWAYS_INLINE double sum_of_squares(const T* __restrict values, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const double value = load_as<double>(values[i]);
    sum += value * value;
  }
  return sum;
}

// The largest magnitude, or NaN when there is a NaN (a max reduction alone would skip it, torch's norm does not).
template <typename T>
FUSEDOPT_ALWAYS_INLINE double largest_magnitude(const T* __restrict values, int64_t n) {
  double largest = 0.0;
  int64_t nans = 0;
#pragma omp simd reduction(max : largest) reduction(+ : nans)
  for (int64_t i = 0; i < n; ++i) {
    const double magnitude = std::fabs(load_as<double>(values[i]));
    largest = std::max(largest, magnitude);
    nans += magnitude != magnitude;
  }
  return nans ? std::numeric_limits<double>::quiet_NaN() : largest;
}

template <typename T>
FUSEDOPT_ALWAYS_INLINE double chunk_norm_of(const void* data, const Chunk& chunk, bool infinity) {
  const T* values = static_cast<const T*>(data) + chunk.begin;
  const int64_t n = chunk.end - chunk.begin;
  return infinity ? largest_magnitude(values, n) : sum_of_squares(values, n);
}

// A chunk's sum of squares (2-norm) or largest magnitude (infinity norm).
FUSEDOPT_CPU_CLONES double chunk_norm(const NormLaunch& launch, const Chunk& chunk) {
  const void* data = launch.data[chunk.tensor];
  switch (launch.type) {
    case StorageType::kFloat32:
      return chunk_norm_of<float>(data, chunk, launch.infinity);
    case StorageType::kFloat64:
      return chunk_norm_of<double>(data, chunk, launch.infinity);
    case StorageType::kBFloat16:
      return chunk_norm_of<BFloat16Bits>(data, chunk, launch.infinity);
    case StorageType::kFloat16:
      return chunk_norm_of<Float16>(data, chunk, launch.infinity);
  }
  return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

void tensor_norms(const NormLaunch& launch, double* per_tensor) {
  const std::vector<Chunk> chunks = chunks_of(launch.num_tensors, [&](int64_t t) { return launch.numels[t]; });
  std::vector<double> partial(chunks.size());
  parallel_for_chunks(chunks, launch.num_threads, [&](int64_t i) { partial[i] = chunk_norm(launch, chunks[i]); });
  std::fill(per_tensor, per_tensor + launch.num_tensors, 0.0);
  for (size_t i = 0; i < chunks.size(); ++i) {
    double& norm = per_tensor[chunks[i].tensor];
    if (!launch.infinity) {
      norm += partial[i];
    } else if (norm == norm) {  // a NaN stays
      norm = partial[i] != partial[i] ? partial[i] : std::max(norm, partial[i]);
    }
  }
  if (!launch.infinity) {
    for (int64_t t = 0; t < launch.num_tensors; ++t) per_tensor[t] = std::sqrt(per_tensor[t]);
  }
}

}  // namespace fusedopt::cpu
