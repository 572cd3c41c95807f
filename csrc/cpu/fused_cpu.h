// csrc/cpu/fused_cpu.h -- launch descriptors of the fused CPU kernels; no torch headers.
//
// One call updates every tensor of a bucket: the work is cut into fixed-size chunks across all tensors and
// the chunks are shared among OpenMP threads, so 1 tensor of 64M elements and 200 tensors of 320K elements
// keep both cores equally busy. The binding (bindings_cpu.cpp) validates torch tensors and fills these.
#pragma once

#include <cstdint>

#include "fusedopt/param_rounding.h"
#include "fusedopt/storage_type.h"
#include "fusedopt/update_rules.h"

namespace fusedopt::cpu {

// The most state tensors any optimizer keeps per parameter (Adam with amsgrad, RMSprop centered with momentum).
constexpr int kMaxStateTensors = 3;

// One parameter: its data, its gradient and its state, all contiguous and of `numel` elements.
// Unused state slots are null; which slots are used is fixed by the launch's mode flags.
struct TensorSlot {
  void* param;
  const void* grad;
  void* state[kMaxStateTensors];
  void* master;           // float32 master (ParamMode::kMaster) or int16 remainder (kRemainder), else null
  uint32_t rounding_key;  // NOTE [stochastic rounding] (kStochastic)
  int32_t decay_mode;     // fusedopt::WeightDecayMode for Adam; 0/1 (without/with L2 decay) for RMSprop, Adagrad
  int64_t numel;
};

// Types shared by every launch: how the tensors are stored, and how many threads may run.
struct LaunchLayout {
  StorageType param_type;  // the gradient has the same type as the parameter
  StorageType state_type;
  ParamMode param_mode;
  const TensorSlot* tensors;
  int64_t num_tensors;
  int num_threads;
};

// Every launch has one scalars entry per tensor: the tensors may come from several param groups (NOTE [param
// groups in one launch] in csrc/common/binding_utils.h), and bias corrections and decayed learning rates follow
// each tensor's own step count.

// Adam/AdamW. state = {exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad only)}.
struct AdamLaunch {
  LaunchLayout layout;
  bool amsgrad;
  const AdamScalars<double>* scalars;
};

// RMSprop. state = {square_avg, grad_avg (centered only), momentum_buffer (momentum > 0 only)}.
struct RmspropLaunch {
  LaunchLayout layout;
  bool centered;
  bool momentum;
  const RmspropScalars<double>* scalars;
};

// Adagrad. state = {sum}.
struct AdagradLaunch {
  LaunchLayout layout;
  const AdagradScalars<double>* scalars;
};

// The roofline of the benchmark: the memory traffic of an optimizer step with almost no arithmetic. Reads
// param, grad and the first `num_states` state tensors, adds the grad to each, and writes them back.
struct StreamLaunch {
  LaunchLayout layout;
  int num_states;
};

// Throws std::invalid_argument when the kernels are not built for the layout's storage pair. The step
// functions check too; bindings call this before advancing any step counter.
void check_layout(const LaunchLayout& layout);

void adam_step(const AdamLaunch& launch);
void rmsprop_step(const RmspropLaunch& launch);
void adagrad_step(const AdagradLaunch& launch);
void stream_step(const StreamLaunch& launch);

}  // namespace fusedopt::cpu
