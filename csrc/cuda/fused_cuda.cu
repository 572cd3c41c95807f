// csrc/cuda/fused_cuda.cu -- the fused CUDA optimizer kernels (NOTE [cuda multi-tensor launch] in fused_cuda.h).
//
// Memory-bound done right: every CTA updates one chunk of one tensor; each thread moves 16-byte vectors of
// param, grad and every state (all loads of an iteration are independent, so several are in flight), computes
// with the shared math of fusedopt/update_rules.h in float (double for float64), rounds once when storing, and
// finishes a tensor's unaligned or ragged end with scalar accesses. Indices are 64-bit throughout.
// Build (CI, no GPU): nvcc -std=c++17 -arch=sm_90 -Icsrc/include -Xptxas -v -c csrc/cuda/fused_cuda.cu
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fused_cuda.h"
#include "fusedopt/device_storage.cuh"
#include "fusedopt/update_rules.h"

namespace fusedopt::cuda {
namespace {

template <typename P, typename S>
__host__ __device__ constexpr int vector_elements() {
  return 16 / (sizeof(P) > sizeof(S) ? sizeof(P) : sizeof(S));
}

// Updates elements [begin, end) of one tensor: `update(param, grad, state)` on compute-type values, where
// state holds the kStates state values of the element in slot order.
template <typename P, typename S, int kStates, typename Update>
__device__ __forceinline__ void update_chunk(const TensorEntry& t, int64_t begin, int64_t end, const Update& update) {
  using C = device_compute_t<P>;
  P* __restrict__ param = static_cast<P*>(t.param);
  const P* __restrict__ grad = static_cast<const P*>(t.grad);
  S* state[kStates > 0 ? kStates : 1];
#pragma unroll
  for (int k = 0; k < kStates; ++k) state[k] = static_cast<S*>(t.state[k]);

  int64_t scalar_begin = begin;
  if (t.aligned) {
    constexpr int kVec = vector_elements<P, S>();
    // Chunk starts are multiples of kChunkElements, hence of kVec: every vector below is aligned.
    const int64_t vector_end = begin + ((end - begin) / kVec) * kVec;
    for (int64_t i = begin + int64_t{threadIdx.x} * kVec; i < vector_end; i += int64_t{blockDim.x} * kVec) {
      C p[kVec], g[kVec], s[kStates > 0 ? kStates : 1][kVec];
      load_vector(p, param + i);
      load_vector(g, grad + i);
#pragma unroll
      for (int k = 0; k < kStates; ++k) load_vector(s[k], state[k] + i);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        C element_state[kStates > 0 ? kStates : 1];
#pragma unroll
        for (int k = 0; k < kStates; ++k) element_state[k] = s[k][e];
        update(p[e], g[e], element_state);
#pragma unroll
        for (int k = 0; k < kStates; ++k) s[k][e] = element_state[k];
      }
      store_vector(param + i, p);
#pragma unroll
      for (int k = 0; k < kStates; ++k) store_vector(state[k] + i, s[k]);
    }
    scalar_begin = vector_end;
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) {
    C p = to_compute(param[i]);
    C element_state[kStates > 0 ? kStates : 1];
#pragma unroll
    for (int k = 0; k < kStates; ++k) element_state[k] = to_compute(state[k][i]);
    update(p, to_compute(grad[i]), element_state);
    param[i] = from_compute<P>(p);
#pragma unroll
    for (int k = 0; k < kStates; ++k) state[k][i] = from_compute<S>(element_state[k]);
  }
}

struct ChunkBounds {
  TensorEntry tensor;
  int64_t begin;
  int64_t end;
  int64_t index;
};

__device__ __forceinline__ ChunkBounds this_chunk(const LaunchTables& tables) {
  const ChunkEntry chunk = tables.chunks[blockIdx.x];
  const TensorEntry tensor = tables.tensors[chunk.tensor];
  const int64_t end = chunk.start + kChunkElements < tensor.numel ? chunk.start + kChunkElements : tensor.numel;
  return {tensor, chunk.start, end, chunk.tensor};
}

// ------------------------------------------------------------------------------------------------------------
// Adam / AdamW
// ------------------------------------------------------------------------------------------------------------
template <typename C, WeightDecayMode kDecay, bool kAmsgrad>
struct AdamElement {
  AdamScalars<C> s;
  __device__ __forceinline__ void operator()(C& p, C g, C (&state)[kAmsgrad ? 3 : 2]) const {
    C max_exp_avg_sq = C(0);
    if constexpr (kAmsgrad) max_exp_avg_sq = state[2];
    adam_update<C, kDecay, kAmsgrad>(p, g, state[0], state[1], max_exp_avg_sq, s);
    if constexpr (kAmsgrad) state[2] = max_exp_avg_sq;
  }
};

template <typename P, typename S, bool kAmsgrad>
__global__ void __launch_bounds__(kThreadsPerBlock)
    adam_kernel(const LaunchTables tables, const AdamScalars<double>* __restrict__ scalars) {
  using C = device_compute_t<P>;
  constexpr int kStates = kAmsgrad ? 3 : 2;
  const ChunkBounds chunk = this_chunk(tables);
  const AdamScalars<C> s = cast_scalars<C>(scalars[chunk.index]);
  switch (static_cast<WeightDecayMode>(chunk.tensor.decay_mode)) {
    case WeightDecayMode::kNone:
      return update_chunk<P, S, kStates>(chunk.tensor, chunk.begin, chunk.end,
                                         AdamElement<C, WeightDecayMode::kNone, kAmsgrad>{s});
    case WeightDecayMode::kL2:
      return update_chunk<P, S, kStates>(chunk.tensor, chunk.begin, chunk.end,
                                         AdamElement<C, WeightDecayMode::kL2, kAmsgrad>{s});
    case WeightDecayMode::kDecoupled:
      return update_chunk<P, S, kStates>(chunk.tensor, chunk.begin, chunk.end,
                                         AdamElement<C, WeightDecayMode::kDecoupled, kAmsgrad>{s});
  }
}

// ------------------------------------------------------------------------------------------------------------
// RMSprop: state slots are {square_avg, grad_avg (centered), momentum_buffer (momentum)}, packed in that order.
// ------------------------------------------------------------------------------------------------------------
template <typename C, bool kWeightDecay, bool kCentered, bool kMomentum>
struct RmspropElement {
  static constexpr int kStates = 1 + kCentered + kMomentum;
  RmspropScalars<C> s;
  __device__ __forceinline__ void operator()(C& p, C g, C (&state)[kStates]) const {
    C grad_avg = C(0), momentum_buffer = C(0);
    if constexpr (kCentered) grad_avg = state[1];
    if constexpr (kMomentum) momentum_buffer = state[kStates - 1];
    rmsprop_update<C, kWeightDecay, kCentered, kMomentum>(p, g, state[0], grad_avg, momentum_buffer, s);
    if constexpr (kCentered) state[1] = grad_avg;
    if constexpr (kMomentum) state[kStates - 1] = momentum_buffer;
  }
};

template <typename P, typename S, bool kCentered, bool kMomentum>
__global__ void __launch_bounds__(kThreadsPerBlock)
    rmsprop_kernel(const LaunchTables tables, const RmspropScalars<double>* __restrict__ scalars) {
  using C = device_compute_t<P>;
  constexpr int kStates = 1 + kCentered + kMomentum;
  const ChunkBounds chunk = this_chunk(tables);
  const RmspropScalars<C> s = cast_scalars<C>(scalars[0]);
  if (chunk.tensor.decay_mode != 0) {
    return update_chunk<P, S, kStates>(chunk.tensor, chunk.begin, chunk.end,
                                       RmspropElement<C, true, kCentered, kMomentum>{s});
  }
  update_chunk<P, S, kStates>(chunk.tensor, chunk.begin, chunk.end, RmspropElement<C, false, kCentered, kMomentum>{s});
}

// ------------------------------------------------------------------------------------------------------------
// Adagrad
// ------------------------------------------------------------------------------------------------------------
template <typename C, bool kWeightDecay>
struct AdagradElement {
  AdagradScalars<C> s;
  __device__ __forceinline__ void operator()(C& p, C g, C (&state)[1]) const {
    adagrad_update<C, kWeightDecay>(p, g, state[0], s);
  }
};

template <typename P, typename S>
__global__ void __launch_bounds__(kThreadsPerBlock)
    adagrad_kernel(const LaunchTables tables, const AdagradScalars<double>* __restrict__ scalars) {
  using C = device_compute_t<P>;
  const ChunkBounds chunk = this_chunk(tables);
  const AdagradScalars<C> s = cast_scalars<C>(scalars[chunk.index]);
  if (chunk.tensor.decay_mode != 0) {
    return update_chunk<P, S, 1>(chunk.tensor, chunk.begin, chunk.end, AdagradElement<C, true>{s});
  }
  update_chunk<P, S, 1>(chunk.tensor, chunk.begin, chunk.end, AdagradElement<C, false>{s});
}

// ------------------------------------------------------------------------------------------------------------
// Roofline: the same loads and stores, one add each
// ------------------------------------------------------------------------------------------------------------
template <typename C, int kStates>
struct StreamElement {
  __device__ __forceinline__ void operator()(C& p, C g, C (&state)[kStates > 0 ? kStates : 1]) const {
    p += g;
#pragma unroll
    for (int k = 0; k < kStates; ++k) state[k] += g;
  }
};

template <typename P, typename S, int kStates>
__global__ void __launch_bounds__(kThreadsPerBlock) stream_kernel(const LaunchTables tables) {
  const ChunkBounds chunk = this_chunk(tables);
  update_chunk<P, S, kStates>(chunk.tensor, chunk.begin, chunk.end, StreamElement<device_compute_t<P>, kStates>{});
}

// ------------------------------------------------------------------------------------------------------------
// Host-side dispatch: runtime storage types and flags become template arguments in one place.
// ------------------------------------------------------------------------------------------------------------
template <template <typename, typename> class Launch, typename... Args>
cudaError_t dispatch_storage(StorageType param, StorageType state, const Args&... args) {
  switch (param) {
    case StorageType::kFloat32:
      if (state == StorageType::kBFloat16) return Launch<float, __nv_bfloat16>::run(args...);
      return Launch<float, float>::run(args...);
    case StorageType::kFloat64:
      return Launch<double, double>::run(args...);
    case StorageType::kBFloat16:
      if (state == StorageType::kFloat32) return Launch<__nv_bfloat16, float>::run(args...);
      return Launch<__nv_bfloat16, __nv_bfloat16>::run(args...);
    case StorageType::kFloat16:
      if (state == StorageType::kFloat32) return Launch<__half, float>::run(args...);
      return Launch<__half, __half>::run(args...);
  }
  return cudaErrorInvalidValue;
}

dim3 grid_of(const LaunchTables& tables) { return dim3(static_cast<unsigned int>(tables.num_chunks)); }

template <typename P, typename S>
struct LaunchAdam {
  static cudaError_t run(const LaunchTables& t, bool amsgrad, const AdamScalars<double>* s, cudaStream_t stream) {
    if (amsgrad) {
      adam_kernel<P, S, true><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    } else {
      adam_kernel<P, S, false><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    }
    return cudaGetLastError();
  }
};

template <typename P, typename S>
struct LaunchRmsprop {
  static cudaError_t run(const LaunchTables& t, bool centered, bool momentum, const RmspropScalars<double>* s,
                         cudaStream_t stream) {
    if (centered && momentum) {
      rmsprop_kernel<P, S, true, true><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    } else if (centered) {
      rmsprop_kernel<P, S, true, false><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    } else if (momentum) {
      rmsprop_kernel<P, S, false, true><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    } else {
      rmsprop_kernel<P, S, false, false><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    }
    return cudaGetLastError();
  }
};

template <typename P, typename S>
struct LaunchAdagrad {
  static cudaError_t run(const LaunchTables& t, const AdagradScalars<double>* s, cudaStream_t stream) {
    adagrad_kernel<P, S><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t, s);
    return cudaGetLastError();
  }
};

template <typename P, typename S>
struct LaunchStream {
  static cudaError_t run(const LaunchTables& t, int num_states, cudaStream_t stream) {
    switch (num_states) {
      case 0:
        stream_kernel<P, S, 0><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t);
        break;
      case 1:
        stream_kernel<P, S, 1><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t);
        break;
      case 2:
        stream_kernel<P, S, 2><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t);
        break;
      default:
        stream_kernel<P, S, 3><<<grid_of(t), kThreadsPerBlock, 0, stream>>>(t);
        break;
    }
    return cudaGetLastError();
  }
};

}  // namespace

cudaError_t launch_adam(const LaunchTables& tables, bool amsgrad, const AdamScalars<double>* scalars,
                        cudaStream_t stream) {
  if (tables.num_chunks == 0) return cudaSuccess;
  return dispatch_storage<LaunchAdam>(tables.param_type, tables.state_type, tables, amsgrad, scalars, stream);
}

cudaError_t launch_rmsprop(const LaunchTables& tables, bool centered, bool momentum,
                           const RmspropScalars<double>* scalars, cudaStream_t stream) {
  if (tables.num_chunks == 0) return cudaSuccess;
  return dispatch_storage<LaunchRmsprop>(tables.param_type, tables.state_type, tables, centered, momentum, scalars,
                                         stream);
}

cudaError_t launch_adagrad(const LaunchTables& tables, const AdagradScalars<double>* scalars, cudaStream_t stream) {
  if (tables.num_chunks == 0) return cudaSuccess;
  return dispatch_storage<LaunchAdagrad>(tables.param_type, tables.state_type, tables, scalars, stream);
}

cudaError_t launch_stream(const LaunchTables& tables, int num_states, cudaStream_t stream) {
  if (tables.num_chunks == 0) return cudaSuccess;
  return dispatch_storage<LaunchStream>(tables.param_type, tables.state_type, tables, num_states, stream);
}

}  // namespace fusedopt::cuda
