// csrc/cuda/fused_cuda.cu -- the fused CUDA kernels of fused_cuda_kernels.cuh, compiled by nvcc and launched on
// the GPU.
// Build (CI, no GPU): nvcc -std=c++17 -arch=sm_90 -Icsrc/include -Xptxas -v -c csrc/cuda/fused_cuda.cu
#include <cuda_runtime.h>

#include "fused_cuda.h"

namespace fusedopt::cuda {
namespace {

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(LaunchTables, Params...), const LaunchTables& tables, cudaStream_t stream,
                          const Args&... args) {
  kernel<<<static_cast<unsigned int>(tables.num_chunks), kThreadsPerBlock, 0, stream>>>(tables, args...);
  return cudaGetLastError();
}

}  // namespace
}  // namespace fusedopt::cuda

#include "fused_cuda_kernels.cuh"
