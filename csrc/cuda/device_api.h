// csrc/cuda/device_api.h -- the few CUDA runtime services the CUDA binding uses: which tensors it takes, the
// device guard, the current stream, the caching allocator's stream record, uploads of host tables, and the check of
// a launch's error.
//
// Built with FUSEDOPT_CUDA_HOST_EMULATION (only by the tests, NOTE [cuda host emulation] in
// tests/cuda_emulation/fused_cuda_emulated.cpp), the same binding takes CPU tensors and its launches run the kernels
// on the host; everything else in bindings_cuda.cpp (checks, table cache, group rows, step plans) is the code the
// GPU build runs.
#pragma once

#include <torch/extension.h>

#include <cstring>
#include <vector>

#ifdef FUSEDOPT_CUDA_HOST_EMULATION
#include <cuda_runtime.h>  // cudaError_t and cudaStream_t only: nothing of the runtime library is called

namespace fusedopt::emulation {
// Stand-ins for a user's streams and for the caching allocator's stream record, which the tests set and count
// (defined in tests/cuda_emulation/fused_cuda_emulated.cpp).
cudaStream_t current_stream();
void record_stream(cudaStream_t stream);
}  // namespace fusedopt::emulation
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fusedopt::cuda::device_api {

#ifdef FUSEDOPT_CUDA_HOST_EMULATION
inline bool takes_device(const at::Device& device) { return device.is_cpu(); }

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

inline cudaStream_t current_stream() { return emulation::current_stream(); }

inline void record_current_stream(const at::Tensor&) { emulation::record_stream(current_stream()); }

inline void check_launch(cudaError_t error) {
  TORCH_CHECK(error == cudaSuccess, "fusedopt CUDA backend (host emulation): the launch failed with cudaError_t ",
              static_cast<int>(error));
}

constexpr bool kPinnedUploads = false;
#else
inline bool takes_device(const at::Device& device) { return device.is_cuda(); }

using DeviceGuard = c10::cuda::CUDAGuard;

inline cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream(); }

// Tells the caching allocator that `tensor` is used on the current stream too, so that its memory, once freed, is
// not handed out again before the work queued there so far is done (Tensor.record_stream).
inline void record_current_stream(const at::Tensor& tensor) { tensor.record_stream(at::cuda::getCurrentCUDAStream()); }

inline void check_launch(cudaError_t error) { C10_CUDA_CHECK(error); }

// Host tables go through pinned memory, so the copy to the device is asynchronous and the host never waits.
constexpr bool kPinnedUploads = true;
#endif

// `values` as bytes on `device`, copied without the host waiting for the device.
template <typename T>
at::Tensor upload(const std::vector<T>& values, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(values.size() * sizeof(T))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(kPinnedUploads));
  std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(T));
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace fusedopt::cuda::device_api
