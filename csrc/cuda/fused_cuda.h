// csrc/cuda/fused_cuda.h -- launch interface of the fused CUDA kernels; no torch headers, so nvcc alone can
// check the kernels (CI compiles fused_cuda.cu for sm_80 and sm_90 without a GPU).
//
// NOTE [cuda multi-tensor launch]: one launch updates every tensor of a device and dtype, across all param groups
// that share a state layout and parameter mode (NOTE [param groups in one launch] in csrc/common/binding_utils.h).
// The binding keeps a device table of TensorEntry (addresses, size, alignment, weight decay mode, param group) and
// ChunkEntry (which tensor and which kChunkElements-long slice each CTA updates), cached and rebuilt only when an
// operand changes address. The groups' hyperparameters, one row per group, are the only table copied each step (a
// few hundred bytes, however many tensors); each CTA finds its tensor's row through TensorEntry::group and makes
// the per-step scalars from it and the tensor's step counter in device memory (NOTE [device steps]).
//
// NOTE [device steps]: step counters (torch.optim's state["step"], one float32 element per tensor) live on the
// params' device, as with torch's fused optimizers, and the kernel does the counting, so a step never waits for
// the GPU, not even with GradScaler: every CTA reads its tensor's counter and uses count + 1 for the bias
// corrections (and the stochastic rounding key); when GradScaler's found_inf is set, no CTA writes anything; the
// CTA that finishes last (a __threadfence and an atomic ticket) adds 1 to every counter of the launch, or nothing
// when found_inf is set, and resets the ticket. Counters and updates stay one launch.
// Unlike torch's fused kernels (at most 36 tensors per launch, chunk lists rebuilt every step), any number of
// tensors share one launch and nothing is rebuilt while addresses hold.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fusedopt/param_rounding.h"
#include "fusedopt/storage_type.h"
#include "fusedopt/update_rules.h"

namespace fusedopt::cuda {

constexpr int kMaxStateTensors = 3;
// Elements one CTA updates: 256 threads x 16 elements, e.g. four 16-byte float32 vectors per thread and operand.
constexpr int kThreadsPerBlock = 256;
constexpr int64_t kChunkElements = int64_t{kThreadsPerBlock} * 16;

struct TensorEntry {
  void* param;
  const void* grad;
  void* state[kMaxStateTensors];
  void* master;  // float32 master (ParamMode::kMaster) or int16 remainder (kRemainder), else null
  float* step;   // the tensor's step counter (NOTE [device steps]); null in the roofline
  int64_t numel;
  int32_t aligned;     // every operand starts on a 16-byte boundary: the vector path may be taken
  int32_t decay_mode;  // fusedopt::WeightDecayMode for Adam; 0/1 (no/with L2 decay) for RMSprop and Adagrad
  int32_t group;       // the tensor's param group: its row of the launch's hyperparameters
};

struct ChunkEntry {
  int64_t start;   // first element of the chunk in its tensor
  int64_t tensor;  // index into the TensorEntry table
};

struct LaunchTables {
  const TensorEntry* tensors;      // device pointer
  const ChunkEntry* chunks;        // device pointer; at least one chunk (an empty tensor's), so counters advance
  unsigned int* finished_ctas;     // device pointer: NOTE [device steps]'s ticket, zero between launches
  const float* grad_factor_scale;  // device pointer: NOTE [grad factor]'s device part (1/scale x clip), or null
  const float* found_inf;          // device pointer: GradScaler's found_inf (nonzero: change nothing), or null
  uint64_t rounding_seed;          // NOTE [stochastic rounding] (ParamMode::kStochastic)
  int64_t num_tensors;
  int64_t num_chunks;
  StorageType param_type;
  StorageType state_type;
  ParamMode param_mode;
};

// Each returns the launch's cudaError_t (cudaGetLastError right after the launch). `hyper` (device memory) has
// one entry per param group; TensorEntry::group indexes it.
cudaError_t launch_adam(const LaunchTables& tables, bool amsgrad, const AdamHyper* hyper, cudaStream_t stream);
cudaError_t launch_rmsprop(const LaunchTables& tables, bool centered, bool momentum, const RmspropHyper* hyper,
                           cudaStream_t stream);
cudaError_t launch_adagrad(const LaunchTables& tables, const AdagradHyper* hyper, cudaStream_t stream);
// The roofline: the step's loads and stores with one add per element.
cudaError_t launch_stream(const LaunchTables& tables, int num_states, cudaStream_t stream);

}  // namespace fusedopt::cuda
