// csrc/cpu/fused_cpu.cpp -- the fused CPU update loops: one pass, OpenMP across chunks, SIMD within a chunk.
//
// Each element of param, grad and every state is loaded once, updated by the shared math of
// fusedopt/update_rules.h, and stored once. Chunks and target clones: parallel_chunks.h.
// Build note: -fno-math-errno is required, or GCC keeps a scalar libm call for every sqrt and does not vectorize.
#include "fused_cpu.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fusedopt/host_storage.h"
#include "fusedopt/param_rounding.h"
#include "parallel_chunks.h"

namespace fusedopt::cpu {

namespace {

// Calls `run_chunk` once for every chunk of every tensor of the launch; exceptions must not escape `run_chunk`.
template <typename ChunkFn>
void parallel_over_chunks(const LaunchLayout& layout, const ChunkFn& run_chunk) {
  const std::vector<Chunk> chunks = chunks_of(layout.num_tensors, [&](int64_t t) { return layout.tensors[t].numel; });
  parallel_for_chunks(chunks, layout.num_threads, [&](int64_t i) { run_chunk(chunks[i]); });
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
// Parameter access: how the value being updated is read and the result stored (fusedopt/param_rounding.h)
// ----------------------------------------------------------------------------------------------------------
template <typename P>
struct PlainParam {  // ParamMode::kPlain: the parameter itself, rounded to nearest even when stored
  P* __restrict param;
  FUSEDOPT_ALWAYS_INLINE compute_t<P> load(int64_t i) const { return load_as<compute_t<P>>(param[i]); }
  FUSEDOPT_ALWAYS_INLINE void store(int64_t i, compute_t<P> value) const { param[i] = store_as<P>(value); }
};

// A chunk never straddles a multiple of 2^32 elements, so all its elements share one rounding_block_key.
static_assert((int64_t{1} << 32) % kChunkElements == 0, "chunks must tile the blocks of rounding_block_key");

struct StochasticParam {  // ParamMode::kStochastic: NOTE [stochastic rounding]
  BFloat16Bits* __restrict param;
  uint32_t block_key;  // rounding_block_key of the tensor's key and the chunk's elements
  int64_t first;       // index of element 0 of the chunk in its tensor
  FUSEDOPT_ALWAYS_INLINE float load(int64_t i) const { return bfloat16_to_float(param[i]); }
  FUSEDOPT_ALWAYS_INLINE void store(int64_t i, float value) const {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    param[i] = BFloat16Bits{stochastic_round_to_bfloat16(bits, rounding_bits_in_block(block_key, first + i))};
  }
};

template <typename P>
struct MasterParam {  // ParamMode::kMaster: the float32 master is updated; the parameter gets it rounded
  P* __restrict param;
  float* __restrict master;
  FUSEDOPT_ALWAYS_INLINE float load(int64_t i) const { return master[i]; }
  FUSEDOPT_ALWAYS_INLINE void store(int64_t i, float value) const {
    master[i] = value;
    param[i] = store_as<P>(value);
  }
};

struct RemainderParam {  // ParamMode::kRemainder: NOTE [master remainder]
  BFloat16Bits* __restrict param;
  int16_t* __restrict remainder;
  FUSEDOPT_ALWAYS_INLINE float load(int64_t i) const {
    const uint32_t bits = join_master(param[i].bits, remainder[i]);
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
  }
  FUSEDOPT_ALWAYS_INLINE void store(int64_t i, float value) const {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof(bits));
    split_master(bits, param[i].bits, remainder[i]);
  }
};

template <typename P>
constexpr bool kIsLowPrecision = std::is_same_v<P, BFloat16Bits> || std::is_same_v<P, Float16>;

// Calls Body::run_with(launch, chunk, access) with the access of the launch's parameter mode; check_layout has
// vetted the mode against the parameter type.
template <typename P, typename Body, typename Launch>
FUSEDOPT_ALWAYS_INLINE void with_param_access(const Launch& launch, const Chunk& chunk) {
  const TensorSlot& t = launch.layout.tensors[chunk.tensor];
  P* param = static_cast<P*>(t.param) + chunk.begin;
  switch (launch.layout.param_mode) {
    case ParamMode::kPlain:
      return Body::run_with(launch, chunk, PlainParam<P>{param});
    case ParamMode::kMaster:
      if constexpr (kIsLowPrecision<P>) {
        return Body::run_with(launch, chunk, MasterParam<P>{param, static_cast<float*>(t.master) + chunk.begin});
      }
      break;
    case ParamMode::kStochastic:
      if constexpr (std::is_same_v<P, BFloat16Bits>) {
        const uint32_t block_key = rounding_block_key(t.rounding_key, chunk.begin);
        return Body::run_with(launch, chunk, StochasticParam{param, block_key, chunk.begin});
      }
      break;
    case ParamMode::kRemainder:
      if constexpr (std::is_same_v<P, BFloat16Bits>) {
        return Body::run_with(launch, chunk, RemainderParam{param, static_cast<int16_t*>(t.master) + chunk.begin});
      }
      break;
  }
}

// ----------------------------------------------------------------------------------------------------------
// Adam / AdamW
// ----------------------------------------------------------------------------------------------------------
template <typename P, typename S>
struct AdamChunk {
  using C = compute_t<P>;

  template <WeightDecayMode kDecay, bool kAmsgrad, typename Access>
  static FUSEDOPT_ALWAYS_INLINE void loop(const Access& param, const P* __restrict grad, S* __restrict exp_avg,
                                          S* __restrict exp_avg_sq, S* __restrict max_exp_avg_sq, int64_t n,
                                          const AdamScalars<C>& s) {
    for (int64_t i = 0; i < n; ++i) {
      C p = param.load(i);
      C m = load_as<C>(exp_avg[i]);
      C v = load_as<C>(exp_avg_sq[i]);
      C v_max = kAmsgrad ? load_as<C>(max_exp_avg_sq[i]) : C(0);
      adam_update<C, kDecay, kAmsgrad>(p, load_as<C>(grad[i]), m, v, v_max, s);
      param.store(i, p);
      exp_avg[i] = store_as<S>(m);
      exp_avg_sq[i] = store_as<S>(v);
      if (kAmsgrad) max_exp_avg_sq[i] = store_as<S>(v_max);
    }
  }

  template <bool kAmsgrad, typename Access>
  static FUSEDOPT_ALWAYS_INLINE void with_amsgrad(WeightDecayMode decay, const Access& param, const P* grad, S** state,
                                                  int64_t n, const AdamScalars<C>& s) {
    switch (decay) {
      case WeightDecayMode::kNone:
        return loop<WeightDecayMode::kNone, kAmsgrad, Access>(param, grad, state[0], state[1], state[2], n, s);
      case WeightDecayMode::kL2:
        return loop<WeightDecayMode::kL2, kAmsgrad, Access>(param, grad, state[0], state[1], state[2], n, s);
      case WeightDecayMode::kDecoupled:
        return loop<WeightDecayMode::kDecoupled, kAmsgrad, Access>(param, grad, state[0], state[1], state[2], n, s);
    }
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const AdamLaunch& launch, const Chunk& chunk) {
    with_param_access<P, AdamChunk>(launch, chunk);
  }

  template <typename Access>
  static FUSEDOPT_ALWAYS_INLINE void run_with(const AdamLaunch& launch, const Chunk& chunk, const Access& param) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    const AdamScalars<C> s = cast_scalars<C>(launch.scalars[chunk.tensor]);
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* state[kMaxStateTensors];
    for (int k = 0; k < kMaxStateTensors; ++k) {
      state[k] = t.state[k] ? static_cast<S*>(t.state[k]) + chunk.begin : nullptr;
    }
    const int64_t n = chunk.end - chunk.begin;
    const auto decay = static_cast<WeightDecayMode>(t.decay_mode);
    if (launch.amsgrad) return with_amsgrad<true, Access>(decay, param, grad, state, n, s);
    return with_amsgrad<false, Access>(decay, param, grad, state, n, s);
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

  template <bool kWeightDecay, bool kCentered, bool kMomentum, typename Access>
  static FUSEDOPT_ALWAYS_INLINE void loop(const Access& param, const P* __restrict grad, S* __restrict square_avg,
                                          S* __restrict grad_avg, S* __restrict momentum_buffer, int64_t n,
                                          const RmspropScalars<C>& s) {
    for (int64_t i = 0; i < n; ++i) {
      C p = param.load(i);
      C sq = load_as<C>(square_avg[i]);
      C g_avg = kCentered ? load_as<C>(grad_avg[i]) : C(0);
      C buf = kMomentum ? load_as<C>(momentum_buffer[i]) : C(0);
      rmsprop_update<C, kWeightDecay, kCentered, kMomentum>(p, load_as<C>(grad[i]), sq, g_avg, buf, s);
      param.store(i, p);
      square_avg[i] = store_as<S>(sq);
      if (kCentered) grad_avg[i] = store_as<S>(g_avg);
      if (kMomentum) momentum_buffer[i] = store_as<S>(buf);
    }
  }

  template <bool kWeightDecay, bool kCentered, typename Access>
  static FUSEDOPT_ALWAYS_INLINE void with_modes(const RmspropLaunch& launch, const Access& param, const P* grad,
                                                S** state, int64_t n, const RmspropScalars<C>& s) {
    if (launch.momentum) {
      return loop<kWeightDecay, kCentered, true, Access>(param, grad, state[0], state[1], state[2], n, s);
    }
    return loop<kWeightDecay, kCentered, false, Access>(param, grad, state[0], state[1], state[2], n, s);
  }

  template <bool kWeightDecay, typename Access>
  static FUSEDOPT_ALWAYS_INLINE void with_decay(const RmspropLaunch& launch, const Access& param, const P* grad,
                                                S** state, int64_t n, const RmspropScalars<C>& s) {
    if (launch.centered) return with_modes<kWeightDecay, true, Access>(launch, param, grad, state, n, s);
    return with_modes<kWeightDecay, false, Access>(launch, param, grad, state, n, s);
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const RmspropLaunch& launch, const Chunk& chunk) {
    with_param_access<P, RmspropChunk>(launch, chunk);
  }

  template <typename Access>
  static FUSEDOPT_ALWAYS_INLINE void run_with(const RmspropLaunch& launch, const Chunk& chunk, const Access& param) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    const RmspropScalars<C> s = cast_scalars<C>(launch.scalars[chunk.tensor]);
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* state[kMaxStateTensors];
    for (int k = 0; k < kMaxStateTensors; ++k) {
      state[k] = t.state[k] ? static_cast<S*>(t.state[k]) + chunk.begin : nullptr;
    }
    const int64_t n = chunk.end - chunk.begin;
    if (t.decay_mode != 0) return with_decay<true, Access>(launch, param, grad, state, n, s);
    return with_decay<false, Access>(launch, param, grad, state, n, s);
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

  template <bool kWeightDecay, typename Access>
  static FUSEDOPT_ALWAYS_INLINE void loop(const Access& param, const P* __restrict grad, S* __restrict sum, int64_t n,
                                          const AdagradScalars<C>& s) {
    for (int64_t i = 0; i < n; ++i) {
      C p = param.load(i);
      C acc = load_as<C>(sum[i]);
      adagrad_update<C, kWeightDecay>(p, load_as<C>(grad[i]), acc, s);
      param.store(i, p);
      sum[i] = store_as<S>(acc);
    }
  }

  static FUSEDOPT_ALWAYS_INLINE void run(const AdagradLaunch& launch, const Chunk& chunk) {
    with_param_access<P, AdagradChunk>(launch, chunk);
  }

  template <typename Access>
  static FUSEDOPT_ALWAYS_INLINE void run_with(const AdagradLaunch& launch, const Chunk& chunk, const Access& param) {
    const TensorSlot& t = launch.layout.tensors[chunk.tensor];
    const AdagradScalars<C> s = cast_scalars<C>(launch.scalars[chunk.tensor]);
    const P* grad = static_cast<const P*>(t.grad) + chunk.begin;
    S* sum = static_cast<S*>(t.state[0]) + chunk.begin;
    const int64_t n = chunk.end - chunk.begin;
    if (t.decay_mode != 0) return loop<true, Access>(param, grad, sum, n, s);
    return loop<false, Access>(param, grad, sum, n, s);
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
  const bool bfloat16 = layout.param_type == StorageType::kBFloat16;
  const bool low_precision = bfloat16 || layout.param_type == StorageType::kFloat16;
  const bool mode_ok =
      layout.param_mode == ParamMode::kPlain || (layout.param_mode == ParamMode::kMaster && low_precision) ||
      ((layout.param_mode == ParamMode::kStochastic || layout.param_mode == ParamMode::kRemainder) && bfloat16);
  if (!mode_ok) {
    throw std::invalid_argument(std::string("fusedopt CPU kernels: parameter mode ") +
                                std::to_string(static_cast<int>(layout.param_mode)) + " does not apply to " +
                                storage_type_name(layout.param_type) + " parameters");
  }
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
