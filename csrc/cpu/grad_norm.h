// csrc/cpu/grad_norm.h -- the norms of many tensors in one pass on the CPU, for gradient clipping
// (fusedopt/clip.py); no torch headers.
#pragma once

#include <cstdint>

#include "fusedopt/storage_type.h"

namespace fusedopt::cpu {

// Contiguous tensors of one storage type.
struct NormLaunch {
  StorageType type;
  const void* const* data;
  const int64_t* numels;
  int64_t num_tensors;
  bool infinity;  // the largest magnitude instead of the 2-norm
  int num_threads;
};

// Writes each tensor's norm to per_tensor[0 .. num_tensors-1], accumulated in double over chunks that the threads
// share, and summed per tensor in chunk order, so the result does not depend on the thread count. A NaN element
// makes its tensor's norm NaN, in both norms; an empty tensor's norm is 0.
void tensor_norms(const NormLaunch& launch, double* per_tensor);

}  // namespace fusedopt::cpu
