// tests/cuda_emulation/cuda_host_shim.h -- CUDA's built-in names for a host compiler, so that the kernels of
// csrc/cuda/fused_cuda_kernels.cuh compile unchanged with g++ and run on a CPU (NOTE [cuda host emulation] in
// fused_cuda_emulated.cpp). Include it before anything that includes the kernels.
//
// The CUDA headers themselves (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h) compile on the host: they make
// __global__, __device__ and __host__ empty and give __nv_bfloat16 and __half their host conversions. What
// they leave to the device compiler is defined here: the thread and block indices, __shared__, __syncthreads,
// the atomics, fences and bit casts the kernels use.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstring>

namespace fusedopt::emulation {

// The indices of the thread being run and the shape of the launch (one thread runs at a time).
inline uint3 thread_index;
inline uint3 block_index;
inline dim3 block_dim;
inline dim3 grid_dim;

// Suspends the running thread of the CTA until every thread of the CTA has reached the barrier.
void sync_threads();

}  // namespace fusedopt::emulation

#define threadIdx (::fusedopt::emulation::thread_index)
#define blockIdx (::fusedopt::emulation::block_index)
#define blockDim (::fusedopt::emulation::block_dim)
#define gridDim (::fusedopt::emulation::grid_dim)

// CTAs run one after another, so one variable serves the CTA being run.
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { ::fusedopt::emulation::sync_threads(); }
// Threads and CTAs run one at a time: every write is seen by every later read.
inline void __threadfence() {}

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
  const unsigned int old = *address;
  *address = old + value;
  return old;
}

inline unsigned int __float_as_uint(float value) {
  unsigned int bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float __uint_as_float(unsigned int bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
