// csrc/cpu/fused_cpu.cpp -- the fused CPU update loops: one pass, OpenMP across chunks, SIMD within a chunk.
//
// Each element of param, grad and every state is loaded once, updated by the shared math of
// fusedopt/update_rules.h, and stored once. The chunk functions are compiled three times (AVX-512, AVX2+FMA+F16C,
// baseline x86-64) by GCC's target_clones and the best one is picked when the library loads, the way ATen's
// CPU_CAPABILITY dispatch does it, so one binary is fast on new machines and still runs on old ones.
// Build note: -fno-math-errno is required, or GCC keeps a scalar libm call for every sqrt and does not vectorize.
#include "fused_cpu.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "fusedopt/host_storage.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FUSEDOPT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSEDOPT_CPU_CLONES
#endif

// The loop bodies must be inlined into each target clone: a call out of the clone would run baseline code.
#if defined(__GNUC__)
#define FUSEDOPT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FUSEDOPT_ALWAYS_INLINE inline
#endif

namespace fusedopt::cpu {

namespace {

// 32K elements: 128 KiB per float32 stream, so the four to six streams of a chunk stay within L2 while
// a 64M-element tensor still splits into 2,048 chunks, plenty to balance any thread count.
constexpr int64_t kChunkElements = int64_t{1} << 15;
// Below this many elements per thread, waking another thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 16;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// Calls `run_chunk` once for every chunk of every tensor; exceptions must not escape `run_chunk`.
template <typename ChunkFn>
void parallel_over_chunks(const LaunchLayout& layout, const ChunkFn& run_chunk) {
  std::vector<Chunk> chunks;
  int64_t total_elements = 0;
  for (int64_t t = 0; t < layout.num_tensors; ++t) {
    const int64_t numel = layout.tensors[t].numel;
    total_elements += numel;
    for (int64_t begin = 0; begin < numel; begin += kChunkElements) {
      chunks.push_back({t, begin, std::min(begin + kChunkElements, numel)});
    }
  }
  const int64_t useful_threads = std::max<int64_t>(1, total_elements / kMinElementsPerThread);
  const int threads = static_cast<int>(std::min<int64_t>(std::max(layout.num_threads, 1), useful_threads));
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < num_chunks; ++i) {
    run_chunk(chunks[i]);
  }
}

// Calls Body<Param, State>::run(args...) for the launch's storage pair; check_layout has vetted the pair.
template <template <typename, typename> class Body, typename... Args>
FUSEDOPT_ALWAYS_INLINE void dispatch_storage(StorageType param, StorageType state, const Args&... args) {
  switch (param) {
    case StorageType::kFloat32:
      if (state == StorageType::kBFloat16) return Body<float, BFloat16Bits>::run(args...);
      return Body<float, float>::run(args...);
    case StorageType::kFloat64:
      return Body<double, double>::run(args...);
    case StorageType::kBFloat16:
      if (state == StorageType::kFloat32) return Body<BFloat16Bits, float>::run(args...);
      return Body<BFloat16Bits, BFloat16Bits>::run(args...);
    case StorageType::kFloat16:
      if (state == StorageType::kFloat32) return Body<Float16, float>::run(args...);
      return Body<Float16, Float16>::run(args...);
  }
}

// ----------------------------------------------------------------------------------------------------------
// Adam / AdamW
// ----------------------------------------------------------------------------------------------------------
template <typename P, typename S>
struct AdamChunk {
  using C = compute_t<P>;

  template <WeightDecayMode kDecay, bool kAmsgrad>
  static FUSEDOPT_ALWAYS_INLINE void loop(P* __restrict param, const P* __restrict grad, S* __restrict exp_avg,
                                          S* __restrict exp_avg_sq, S* __restrict max_exp_avg_sq, int64_t n,
                                          const AdamScalars<C>& s) {
    for (int64_t i = 0; i < n; ++i) {
      C p = load_as<C>(param[i]);
      C m = load_as<C>(exp_avg[i]);
      C v = load_as<C>(exp_avg_sq[i]);
      C v_max = kAmsgrad ? load_as<C>(max_exp_avg_sq[i]) : C(0);
      adam_update<C, kDecay, kAmsgrad>(p, load_as<C>(grad[i]), m, v, v_max, s);
      param[i] = store_as<P>(p);
      exp_avg[i] = store_as<S>(m);
      exp_avg_sq[i] = store_as<S>(v);
      if (kAmsgrad) max_exp_avg_sq[i] = store_as<S>(v_max);
    }
  }

  template <bool kAmsgrad>
  static FUSEDOPT_ALWAYS_INLINE void with_amsgrad(const AdamLaunch& launch, P* param, const P* grad, S** state,
                                                  int64_t n, const AdamScalars<C>& s) {
    switch (launch.decay) {
      case WeightDecayMode::kNone:
        return loop<WeightDecayMode::kNone, kAmsgrad>(param, grad, state[0], state[1], state[2], n, s);
      case WeightDecayMode::kL2:
        return loop<WeightDecayMode::kL2, kAmsgrad>(param, grad, state[0], state[1], state[2], n, s);
      case WeightDecayMode::kDecoupled:
        return loop<WeightDecayMode::kDecoupled, kAmsgrad>(param, grad, state[0], state[1], state[2], n, s);
    }
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const AdamLaunch& launch, const Chunk& chunk) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    const AdamScalars<C> s = cast_scalars<C>(launch.scalars[chunk.tensor]);
    P* param = static_cast<P*>(t.param) + chunk.begin;
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* state[kMaxStateTensors];
    for (int k = 0; k < kMaxStateTensors; ++k) {
      state[k] = t.state[k] ? static_cast<S*>(t.state[k]) + chunk.begin : nullptr;
    }
    const int64_t n = chunk.end - chunk.begin;
    if (launch.amsgrad) return with_amsgrad<true>(launch, param, grad, state, n, s);
    return with_amsgrad<false>(launch, param, grad, state, n, s);
  }
};

FUSEDOPT_CPU_CLONES void adam_chunk(const AdamLaunch& launch, const Chunk& chunk) {
  dispatch_storage<AdamChunk>(launch.layout.param_type, launch.layout.state_type, launch, chunk);
}

// ----------------------------------------------------------------------------------------------------------
// RMSprop
// ----------------------------------------------------------------------------------------------------------
template <typename P, typename S>
struct RmspropChunk {
  using C = compute_t<P>;

  template <bool kWeightDecay, bool kCentered, bool kMomentum>
  static FUSEDOPT_ALWAYS_INLINE void loop(P* __restrict param, const P* __restrict grad, S* __restrict square_avg,
                                          S* __restrict grad_avg, S* __restrict momentum_buffer, int64_t n,
                                          const RmspropScalars<C>& s) {
    for (int64_t i = 0; i < n; ++i) {
      C p = load_as<C>(param[i]);
      C sq = load_as<C>(square_avg[i]);
      C g_avg = kCentered ? load_as<C>(grad_avg[i]) : C(0);
      C buf = kMomentum ? load_as<C>(momentum_buffer[i]) : C(0);
      rmsprop_update<C, kWeightDecay, kCentered, kMomentum>(p, load_as<C>(grad[i]), sq, g_avg, buf, s);
      param[i] = store_as<P>(p);
      square_avg[i] = store_as<S>(sq);
      if (kCentered) grad_avg[i] = store_as<S>(g_avg);
      if (kMomentum) momentum_buffer[i] = store_as<S>(buf);
    }
  }

  template <bool kWeightDecay, bool kCentered>
  static FUSEDOPT_ALWAYS_INLINE void with_modes(const RmspropLaunch& launch, P* param, const P* grad, S** state,
                                                int64_t n, const RmspropScalars<C>& s) {
    if (launch.momentum) return loop<kWeightDecay, kCentered, true>(param, grad, state[0], state[1], state[2], n, s);
    return loop<kWeightDecay, kCentered, false>(param, grad, state[0], state[1], state[2], n, s);
  }

  template <bool kWeightDecay>
  static FUSEDOPT_ALWAYS_INLINE void with_decay(const RmspropLaunch& launch, P* param, const P* grad, S** state,
                                                int64_t n, const RmspropScalars<C>& s) {
    if (launch.centered) return with_modes<kWeightDecay, true>(launch, param, grad, state, n, s);
    return with_modes<kWeightDecay, false>(launch, param, grad, state, n, s);
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const RmspropLaunch& launch, const Chunk& chunk) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    const RmspropScalars<C> s = cast_scalars<C>(launch.scalars);
    P* param = static_cast<P*>(t.param) + chunk.begin;
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* state[kMaxStateTensors];
    for (int k = 0; k < kMaxStateTensors; ++k) {
      state[k] = t.state[k] ? static_cast<S*>(t.state[k]) + chunk.begin : nullptr;
    }
    const int64_t n = chunk.end - chunk.begin;
    if (launch.weight_decay) return with_decay<true>(launch, param, grad, state, n, s);
    return with_decay<false>(launch, param, grad, state, n, s);
  }
};

FUSEDOPT_CPU_CLONES void rmsprop_chunk(const RmspropLaunch& launch, const Chunk& chunk) {
  dispatch_storage<RmspropChunk>(launch.layout.param_type, launch.layout.state_type, launch, chunk);
}

// ----------------------------------------------------------------------------------------------------------
// Adagrad
// ----------------------------------------------------------------------------------------------------------
template <typename P, typename S>
struct AdagradChunk {
  using C = compute_t<P>;

  template <bool kWeightDecay>
  static FUSEDOPT_ALWAYS_INLINE void loop(P* __restrict param, const P* __restrict grad, S* __restrict sum,
                                          int64_t n, const AdagradScalars<C>& s) {
    for (int64_t i = 0; i < n; ++i) {
      C p = load_as<C>(param[i]);
      C acc = load_as<C>(sum[i]);
      adagrad_update<C, kWeightDecay>(p, load_as<C>(grad[i]), acc, s);
      param[i] = store_as<P>(p);
      sum[i] = store_as<S>(acc);
    }
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const AdagradLaunch& launch, const Chunk& chunk) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    const AdagradScalars<C> s = cast_scalars<C>(launch.scalars[chunk.tensor]);
    P* param = static_cast<P*>(t.param) + chunk.begin;
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* sum = static_cast<S*>(t.state[0]) + chunk.begin;
    const int64_t n = chunk.end - chunk.begin;
    if (launch.weight_decay) return loop<true>(param, grad, sum, n, s);
    return loop<false>(param, grad, sum, n, s);
  }
};

FUSEDOPT_CPU_CLONES void adagrad_chunk(const AdagradLaunch& launch, const Chunk& chunk) {
  dispatch_storage<AdagradChunk>(launch.layout.param_type, launch.layout.state_type, launch, chunk);
}

// ----------------------------------------------------------------------------------------------------------
// Roofline: the same loads and stores, one add each
// ----------------------------------------------------------------------------------------------------------
template <typename P, typename S>
struct StreamChunk {
  using C = compute_t<P>;

  template <int kStates>
  static FUSEDOPT_ALWAYS_INLINE void loop(P* __restrict param, const P* __restrict grad, S* __restrict s0,
                                          S* __restrict s1, S* __restrict s2, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const C g = load_as<C>(grad[i]);
      param[i] = store_as<P>(load_as<C>(param[i]) + g);
      if (kStates > 0) s0[i] = store_as<S>(load_as<C>(s0[i]) + g);
      if (kStates > 1) s1[i] = store_as<S>(load_as<C>(s1[i]) + g);
      if (kStates > 2) s2[i] = store_as<S>(load_as<C>(s2[i]) + g);
    }
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const StreamLaunch& launch, const Chunk& chunk) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    P* param = static_cast<P*>(t.param) + chunk.begin;
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* state[kMaxStateTensors];
    for (int k = 0; k < kMaxStateTensors; ++k) {
      state[k] = t.state[k] ? static_cast<S*>(t.state[k]) + chunk.begin : nullptr;
    }
    const int64_t n = chunk.end - chunk.begin;
    switch (launch.num_states) {
      case 0:
        return loop<0>(param, grad, state[0], state[1], state[2], n);
      case 1:
        return loop<1>(param, grad, state[0], state[1], state[2], n);
      case 2:
        return loop<2>(param, grad, state[0], state[1], state[2], n);
      default:
        return loop<3>(param, grad, state[0], state[1], state[2], n);
    }
  }
};

FUSEDOPT_CPU_CLONES void stream_chunk(const StreamLaunch& launch, const Chunk& chunk) {
  dispatch_storage<StreamChunk>(launch.layout.param_type, launch.layout.state_type, launch, chunk);
}

}  // namespace

void check_layout(const LaunchLayout& layout) {
  if (!is_supported_pair(layout.param_type, layout.state_type)) {
    throw std::invalid_argument(std::string("fusedopt CPU kernels do not support ") +
                                storage_type_name(layout.param_type) + " parameters with " +
                                storage_type_name(layout.state_type) + " state");
  }
}

void adam_step(const AdamLaunch& launch) {
  check_layout(launch.layout);
  parallel_over_chunks(launch.layout, [&](const Chunk& chunk) { adam_chunk(launch, chunk); });
}

void rmsprop_step(const RmspropLaunch& launch) {
  check_layout(launch.layout);
  parallel_over_chunks(launch.layout, [&](const Chunk& chunk) { rmsprop_chunk(launch, chunk); });
}

void adagrad_step(const AdagradLaunch& launch) {
  check_layout(launch.layout);
  parallel_over_chunks(launch.layout, [&](const Chunk& chunk) { adagrad_chunk(launch, chunk); });
}

void stream_step(const StreamLaunch& launch) {
  check_layout(launch.layout);
  parallel_over_chunks(launch.layout, [&](const Chunk& chunk) { stream_chunk(launch, chunk); });
}

}  // namespace fusedopt::cpu
