// csrc/cuda/fused_cuda_kernels.cuh -- the fused CUDA optimizer kernels (NOTE [cuda multi-tensor launch] in
// fused_cuda.h) and the host dispatch that turns runtime dtypes and flags into template arguments.
//
// Memory-bound done right: every CTA updates one chunk of one tensor; each thread moves 16-byte vectors of
// param, grad and every state (all loads of an iteration are independent, so several are in flight), computes
// with the shared math of fusedopt/update_rules.h in float (double for float64), rounds once when storing, and
// finishes a tensor's unaligned or ragged end with scalar accesses. Indices are 64-bit throughout. The step
// counters are read and advanced here too (NOTE [device steps] in fused_cuda.h).
//
// Included by exactly one translation unit per binary, which defines launch_kernel first: fused_cuda.cu (nvcc, the
// GPU) or tests/cuda_emulation/fused_cuda_emulated.cpp (a host compiler, NOTE [cuda host emulation] there).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "fused_cuda.h"
#include "fusedopt/device_storage.cuh"
#include "fusedopt/update_rules.h"

namespace fusedopt::cuda {
namespace {

// Launches `kernel(tables, args...)` with one CTA of kThreadsPerBlock threads per chunk of the tables on `stream`
// and returns the launch's error. Defined by the translation unit that includes this header, before including it:
// fused_cuda.cu launches on the GPU, the host emulation of the tests (tests/cuda_emulation/) runs the CTAs on the
// CPU. It is the only difference between the two.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(LaunchTables, Params...), const LaunchTables& tables, cudaStream_t stream,
                          const Args&... args);

template <typename P, typename S>
__host__ __device__ constexpr int vector_elements() {
  return 16 / (sizeof(P) > sizeof(S) ? sizeof(P) : sizeof(S));
}

// ------------------------------------------------------------------------------------------------------------
// Parameter access: how the value being updated is read and the result stored (fusedopt/param_rounding.h)
// ------------------------------------------------------------------------------------------------------------
template <typename P>
struct PlainParam {
  P* __restrict__ param;
  template <int kN>
  __device__ __forceinline__ void load(device_compute_t<P> (&out)[kN], int64_t i) const {
    load_vector(out, param + i);
  }
  template <int kN>
  __device__ __forceinline__ void store(int64_t i, const device_compute_t<P> (&in)[kN]) const {
    store_vector(param + i, in);
  }
};

// A chunk never straddles a multiple of 2^32 elements, so all its elements share one rounding_block_key.
static_assert((int64_t{1} << 32) % kChunkElements == 0, "chunks must tile the blocks of rounding_block_key");

struct StochasticParam {  // NOTE [stochastic rounding]
  __nv_bfloat16* __restrict__ param;
  uint32_t block_key;  // rounding_block_key of the tensor's key and this CTA's chunk
  template <int kN>
  __device__ __forceinline__ void load(float (&out)[kN], int64_t i) const {
    load_vector(out, param + i);
  }
  template <int kN>
  __device__ __forceinline__ void store(int64_t i, const float (&in)[kN]) const {
    VectorOf<__nv_bfloat16, kN> stored;
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      const uint16_t bits =
          stochastic_round_to_bfloat16(__float_as_uint(in[e]), rounding_bits_in_block(block_key, i + e));
      stored.value[e] = __ushort_as_bfloat16(bits);
    }
    store_raw_vector(param + i, stored);
  }
};

template <typename P>
struct MasterParam {  // the float32 master is updated; the parameter gets it rounded to nearest even
  P* __restrict__ param;
  float* __restrict__ master;
  template <int kN>
  __device__ __forceinline__ void load(float (&out)[kN], int64_t i) const {
    load_vector(out, master + i);
  }
  template <int kN>
  __device__ __forceinline__ void store(int64_t i, const float (&in)[kN]) const {
    store_vector(master + i, in);
    store_vector(param + i, in);
  }
};

struct RemainderParam {  // NOTE [master remainder]
  __nv_bfloat16* __restrict__ param;
  int16_t* __restrict__ remainder;
  template <int kN>
  __device__ __forceinline__ void load(float (&out)[kN], int64_t i) const {
    const auto high = load_raw_vector<kN>(param + i);
    const auto low = load_raw_vector<kN>(remainder + i);
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      out[e] = __uint_as_float(join_master(__bfloat16_as_ushort(high.value[e]), low.value[e]));
    }
  }
  template <int kN>
  __device__ __forceinline__ void store(int64_t i, const float (&in)[kN]) const {
    VectorOf<__nv_bfloat16, kN> high;
    VectorOf<int16_t, kN> low;
#pragma unroll
    for (int e = 0; e < kN; ++e) {
      uint16_t bits;
      split_master(__float_as_uint(in[e]), bits, low.value[e]);
      high.value[e] = __ushort_as_bfloat16(bits);
    }
    store_raw_vector(param + i, high);
    store_raw_vector(remainder + i, low);
  }
};

// Updates elements [begin, end) of one tensor: `update(param, grad, state)` on compute-type values, where
// state holds the kStates state values of the element in slot order; `param` reads and writes the value being
// updated (vectors of kVec elements, or single elements in the scalar tail).
template <typename P, typename S, int kStates, typename Update, typename Access>
__device__ __forceinline__ void update_chunk(const TensorEntry& t, int64_t begin, int64_t end, const Update& update,
                                             const Access& param) {
  using C = device_compute_t<P>;
  const P* __restrict__ grad = assume_global(static_cast<const P*>(t.grad));
  S* state[kStates > 0 ? kStates : 1];
#pragma unroll
  for (int k = 0; k < kStates; ++k) state[k] = assume_global(static_cast<S*>(t.state[k]));

  int64_t scalar_begin = begin;
  if (t.aligned) {
    constexpr int kVec = vector_elements<P, S>();
    // Chunk starts are multiples of kChunkElements, hence of kVec: every vector below is aligned.
    const int64_t vector_end = begin + ((end - begin) / kVec) * kVec;
    for (int64_t i = begin + int64_t{threadIdx.x} * kVec; i < vector_end; i += int64_t{blockDim.x} * kVec) {
      C p[kVec], g[kVec], s[kStates > 0 ? kStates : 1][kVec];
      param.load(p, i);
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
      param.store(i, p);
#pragma unroll
      for (int k = 0; k < kStates; ++k) store_vector(state[k] + i, s[k]);
    }
    scalar_begin = vector_end;
  }
  for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) {
    C p_one[1];
    param.load(p_one, i);
    C p = p_one[0];
    C element_state[kStates > 0 ? kStates : 1];
#pragma unroll
    for (int k = 0; k < kStates; ++k) element_state[k] = to_compute(state[k][i]);
    update(p, to_compute(grad[i]), element_state);
    const C p_out[1] = {p};
    param.store(i, p_out);
#pragma unroll
    for (int k = 0; k < kStates; ++k) state[k][i] = from_compute<S>(element_state[k]);
  }
}

// Calls update_chunk with the access of the launch's parameter mode (checked on the host to suit P); `key` is the
// tensor's stochastic rounding key for this step.
template <typename P, typename S, int kStates, typename Update>
__device__ __forceinline__ void update_chunk(const LaunchTables& tables, const TensorEntry& t, uint32_t key,
                                             int64_t begin, int64_t end, const Update& update) {
  P* param = assume_global(static_cast<P*>(t.param));  // NOTE [global operands], as every operand below
  switch (tables.param_mode) {
    case ParamMode::kPlain:
      return update_chunk<P, S, kStates>(t, begin, end, update, PlainParam<P>{param});
    case ParamMode::kMaster:
      if constexpr (!std::is_same_v<P, float> && !std::is_same_v<P, double>) {
        return update_chunk<P, S, kStates>(t, begin, end, update,
                                           MasterParam<P>{param, assume_global(static_cast<float*>(t.master))});
      }
      break;
    case ParamMode::kStochastic:
      if constexpr (std::is_same_v<P, __nv_bfloat16>) {
        return update_chunk<P, S, kStates>(t, begin, end, update,
                                           StochasticParam{param, rounding_block_key(key, begin)});
      }
      break;
    case ParamMode::kRemainder:
      if constexpr (std::is_same_v<P, __nv_bfloat16>) {
        return update_chunk<P, S, kStates>(t, begin, end, update,
                                           RemainderParam{param, assume_global(static_cast<int16_t*>(t.master))});
      }
      break;
  }
}

struct ChunkBounds {
  TensorEntry tensor;
  int64_t begin;
  int64_t end;
  int64_t index;
};

// NOTE [grad factor]: GradScaler's 1/scale and the clip coefficient, when they stay on the device, are read here,
// once per CTA, so the host never waits for them.
template <typename Scalars>
__device__ __forceinline__ Scalars with_device_factor(Scalars s, const LaunchTables& tables) {
  if (tables.grad_factor_scale != nullptr) {
    s.grad_factor *= static_cast<decltype(s.grad_factor)>(*assume_global(tables.grad_factor_scale));
  }
  return s;
}

__device__ __forceinline__ ChunkBounds this_chunk(const LaunchTables& tables) {
  const ChunkEntry chunk = tables.chunks[blockIdx.x];
  const TensorEntry tensor = tables.tensors[chunk.tensor];
  const int64_t end = chunk.start + kChunkElements < tensor.numel ? chunk.start + kChunkElements : tensor.numel;
  return {tensor, chunk.start, end, chunk.tensor};
}

// NOTE [device steps]: GradScaler found an inf or NaN in this step's grads.
__device__ __forceinline__ bool step_skipped(const LaunchTables& tables) {
  return tables.found_inf != nullptr && *assume_global(tables.found_inf) != 0.0f;
}

// NOTE [device steps]: the CTA that finishes last advances every step counter of the launch. Each CTA read its
// counter before its ticket (the __syncthreads below orders every thread's read before thread 0 takes it), so the
// counters change only once no CTA of the launch can read them any more.
__device__ __forceinline__ void finish_launch(const LaunchTables& tables) {
  __shared__ bool is_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    is_last = atomicAdd(tables.finished_ctas, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;
  if (!step_skipped(tables)) {
    for (int64_t i = threadIdx.x; i < tables.num_tensors; i += blockDim.x)
      *assume_global(tables.tensors[i].step) += 1.0f;
  }
  if (threadIdx.x == 0) *tables.finished_ctas = 0u;
}

// One CTA of an optimizer step: unless found_inf is set, `update(chunk, scalars, key)` with the scalars of the
// tensor's new step count (its hyperparameters and the counter, NOTE [device steps]), then the launch's end.
template <typename C, typename Hyper, typename Update>
__device__ __forceinline__ void step_chunk(const LaunchTables& tables, const Hyper* __restrict__ hyper,
                                           const Update& update) {
  const ChunkBounds chunk = this_chunk(tables);
  if (!step_skipped(tables)) {
    const double step = static_cast<double>(*assume_global(chunk.tensor.step)) + 1.0;
    const auto scalars = with_device_factor(cast_scalars<C>(scalars_at_step(hyper[chunk.tensor.group], step)), tables);
    const uint32_t key = rounding_key(tables.rounding_seed, static_cast<uint64_t>(step), chunk.index);
    update(chunk, scalars, key);
  }
  finish_launch(tables);
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
    adam_kernel(const LaunchTables tables, const AdamHyper* __restrict__ hyper) {
  using C = device_compute_t<P>;
  constexpr int kStates = kAmsgrad ? 3 : 2;
  step_chunk<C>(tables, hyper, [&](const ChunkBounds& chunk, const AdamScalars<C>& s, uint32_t key) {
    switch (static_cast<WeightDecayMode>(chunk.tensor.decay_mode)) {
      case WeightDecayMode::kNone:
        return update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,
                                           AdamElement<C, WeightDecayMode::kNone, kAmsgrad>{s});
      case WeightDecayMode::kL2:
        return update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,
                                           AdamElement<C, WeightDecayMode::kL2, kAmsgrad>{s});
      case WeightDecayMode::kDecoupled:
        return update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,
                                           AdamElement<C, WeightDecayMode::kDecoupled, kAmsgrad>{s});
    }
  });
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
    rmsprop_kernel(const LaunchTables tables, const RmspropHyper* __restrict__ hyper) {
  using C = device_compute_t<P>;
  constexpr int kStates = 1 + kCentered + kMomentum;
  step_chunk<C>(tables, hyper, [&](const ChunkBounds& chunk, const RmspropScalars<C>& s, uint32_t key) {
    if (chunk.tensor.decay_mode != 0) {
      return update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,
                                         RmspropElement<C, true, kCentered, kMomentum>{s});
    }
    update_chunk<P, S, kStates>(tables, chunk.tensor, key, chunk.begin, chunk.end,
                                RmspropElement<C, false, kCentered, kMomentum>{s});
  });
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
    adagrad_kernel(const LaunchTables tables, const AdagradHyper* __restrict__ hyper) {
  using C = device_compute_t<P>;
  step_chunk<C>(tables, hyper, [&](const ChunkBounds& chunk, const AdagradScalars<C>& s, uint32_t key) {
    if (chunk.tensor.decay_mode != 0) {
      return update_chunk<P, S, 1>(tables, chunk.tensor, key, chunk.begin, chunk.end, AdagradElement<C, true>{s});
    }
    update_chunk<P, S, 1>(tables, chunk.tensor, key, chunk.begin, chunk.end, AdagradElement<C, false>{s});
  });
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
  update_chunk<P, S, kStates>(tables, chunk.tensor, 0u, chunk.begin, chunk.end,
                              StreamElement<device_compute_t<P>, kStates>{});
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

template <typename P, typename S>
struct LaunchAdam {
  static cudaError_t run(const LaunchTables& t, bool amsgrad, const AdamHyper* s, cudaStream_t stream) {
    return amsgrad ? launch_kernel(adam_kernel<P, S, true>, t, stream, s)
                   : launch_kernel(adam_kernel<P, S, false>, t, stream, s);
  }
};

template <typename P, typename S>
struct LaunchRmsprop {
  static cudaError_t run(const LaunchTables& t, bool centered, bool momentum, const RmspropHyper* s,
                         cudaStream_t stream) {
    if (centered && momentum) return launch_kernel(rmsprop_kernel<P, S, true, true>, t, stream, s);
    if (centered) return launch_kernel(rmsprop_kernel<P, S, true, false>, t, stream, s);
    if (momentum) return launch_kernel(rmsprop_kernel<P, S, false, true>, t, stream, s);
    return launch_kernel(rmsprop_kernel<P, S, false, false>, t, stream, s);
  }
};

template <typename P, typename S>
struct LaunchAdagrad {
  static cudaError_t run(const LaunchTables& t, const AdagradHyper* s, cudaStream_t stream) {
    return launch_kernel(adagrad_kernel<P, S>, t, stream, s);
  }
};

template <typename P, typename S>
struct LaunchStream {
  static cudaError_t run(const LaunchTables& t, int num_states, cudaStream_t stream) {
    switch (num_states) {
      case 0:
        return launch_kernel(stream_kernel<P, S, 0>, t, stream);
      case 1:
        return launch_kernel(stream_kernel<P, S, 1>, t, stream);
      case 2:
        return launch_kernel(stream_kernel<P, S, 2>, t, stream);
      default:
        return launch_kernel(stream_kernel<P, S, 3>, t, stream);
    }
  }
};

}  // namespace

cudaError_t launch_adam(const LaunchTables& tables, bool amsgrad, const AdamHyper* hyper, cudaStream_t stream) {
  return dispatch_storage<LaunchAdam>(tables.param_type, tables.state_type, tables, amsgrad, hyper, stream);
}

cudaError_t launch_rmsprop(const LaunchTables& tables, bool centered, bool momentum, const RmspropHyper* hyper,
                           cudaStream_t stream) {
  return dispatch_storage<LaunchRmsprop>(tables.param_type, tables.state_type, tables, centered, momentum, hyper,
                                         stream);
}

cudaError_t launch_adagrad(const LaunchTables& tables, const AdagradHyper* hyper, cudaStream_t stream) {
  return dispatch_storage<LaunchAdagrad>(tables.param_type, tables.state_type, tables, hyper, stream);
}

cudaError_t launch_stream(const LaunchTables& tables, int num_states, cudaStream_t stream) {
  return dispatch_storage<LaunchStream>(tables.param_type, tables.state_type, tables, num_states, stream);
}

}  // namespace fusedopt::cuda
