// csrc/cuda/bindings_cuda.cpp -- Python binding of the fused CUDA kernels (module fusedopt._cuda_ext).
//
// The only file of the CUDA extension that includes torch. Per call it checks the operands, finds (or builds
// once) the bucket's device tables (NOTE [cuda multi-tensor launch] in fused_cuda.h), advances the CPU step
// counters, uploads the per-tensor scalars and launches one kernel on the current stream. Every check runs
// before the first write; every launch is checked.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstring>
#include <unordered_map>
#include <vector>

#include "../common/binding_utils.h"
#include "../common/python_module.h"
#include "fused_cuda.h"

namespace fusedopt::cuda {
namespace {

using binding::advance_steps;
using binding::check_steps;
using binding::Sizes;
using binding::TensorList;

constexpr size_t kMaxCachedTables = 64;
constexpr uintptr_t kVectorAlignment = 16;

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& key) const {
    size_t hash = key.size();
    for (int64_t value : key) hash ^= std::hash<int64_t>{}(value) + 0x9e3779b97f4a7c15ULL + (hash << 6) + (hash >> 2);
    return hash;
  }
};

struct CachedTables {
  at::Tensor device_bytes;  // TensorEntry[num_tensors] followed by ChunkEntry[num_chunks]
  LaunchTables tables;
};

std::unordered_map<std::vector<int64_t>, CachedTables, KeyHash>& table_cache() {
  static std::unordered_map<std::vector<int64_t>, CachedTables, KeyHash> cache;
  return cache;
}

template <typename T>
at::Tensor upload(const std::vector<T>& values, const at::Device& device) {
  at::Tensor host = at::empty({static_cast<int64_t>(values.size() * sizeof(T))},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(T));
  return host.to(device, /*non_blocking=*/true);
}

// Before a device guard is made: CUDAGuard itself rejects other devices, with a less helpful message.
void check_on_cuda(const at::Tensor& param) {
  TORCH_CHECK(param.device().is_cuda(), "fusedopt CUDA backend: params are on ", param.device(),
              ", expected a CUDA device");
}

// Checks every operand (nothing is modified here) and returns the bucket's launch tables, from the cache when
// no operand has moved. `states` lists the state columns in slot order; `decay_modes` has each tensor's weight
// decay mode (empty: none), part of the cached table.
LaunchTables tables_for(const TensorList& params, const TensorList& grads,
                        const std::vector<const TensorList*>& states, const std::vector<int32_t>& decay_modes,
                        const TensorList& masters, int64_t param_mode, bool planned) {
  const size_t n = params.size();
  TORCH_CHECK(n > 0, "fusedopt CUDA backend: no params");
  TORCH_CHECK(grads.size() == n, "fusedopt CUDA backend: got ", n, " params but ", grads.size(), " grads");
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "fusedopt CUDA backend: params are on ", device, ", expected a CUDA device");
  const StorageType param_type = binding::storage_type_of(params[0], "CUDA", "param");
  const StorageType state_type =
      states.empty() ? param_type : binding::storage_type_of((*states[0])[0], "CUDA", "state");
  TORCH_CHECK_TYPE(is_supported_pair(param_type, state_type), "fusedopt CUDA backend: ",
                   storage_type_name(param_type), " parameters with ", storage_type_name(state_type),
                   " state are not supported");
  TORCH_CHECK(param_mode >= 0 && param_mode <= static_cast<int64_t>(ParamMode::kRemainder),
              "fusedopt CUDA backend: invalid param_mode ", param_mode);
  const auto mode = static_cast<ParamMode>(param_mode);
  const bool bfloat16 = param_type == StorageType::kBFloat16;
  const bool low_precision = bfloat16 || param_type == StorageType::kFloat16;
  TORCH_CHECK(mode == ParamMode::kPlain || (mode == ParamMode::kMaster && low_precision) ||
                  ((mode == ParamMode::kStochastic || mode == ParamMode::kRemainder) && bfloat16),
              "fusedopt CUDA backend: parameter mode ", param_mode, " does not apply to ",
              storage_type_name(param_type), " parameters");
  const bool needs_masters = mode == ParamMode::kMaster || mode == ParamMode::kRemainder;
  TORCH_CHECK(masters.size() == (needs_masters ? n : 0), "fusedopt CUDA backend: parameter mode ", param_mode,
              " needs ", needs_masters ? n : 0, " master tensors, got ", masters.size());
  TORCH_CHECK(decay_modes.empty() || decay_modes.size() == n, "fusedopt CUDA backend: ", decay_modes.size(),
              " weight decay modes for ", n, " params");
  std::vector<int64_t> key = {device.index(), static_cast<int64_t>(param_type), static_cast<int64_t>(state_type),
                              param_mode};
  key.reserve(4 + n * (4 + states.size()));
  // With `planned`, StepOperands has checked the operands (NOTE [step plan]); only the cache key is built.
  auto check = [&](const at::Tensor& t, const at::Tensor& param, at::ScalarType dtype, const char* role, size_t i) {
    if (planned) {
      key.push_back(reinterpret_cast<int64_t>(t.data_ptr()));
      return;
    }
    TORCH_CHECK(t.device() == device, "fusedopt CUDA backend: ", role, "[", i, "] is on ", t.device(), ", expected ",
                device);
    TORCH_CHECK(t.is_contiguous(), "fusedopt CUDA backend: ", role, "[", i, "] must be contiguous");
    TORCH_CHECK(t.numel() == param.numel(), "fusedopt CUDA backend: ", role, "[", i, "] has ", t.numel(),
                " elements but its parameter has ", param.numel());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, "fusedopt CUDA backend: ", role, "[", i, "] has dtype ",
                     t.scalar_type(), ", expected ", dtype);
    key.push_back(reinterpret_cast<int64_t>(t.data_ptr()));
  };
  const at::ScalarType param_dtype = params[0].scalar_type();
  const at::ScalarType state_dtype = states.empty() ? param_dtype : (*states[0])[0].scalar_type();
  for (const TensorList* column : states) {
    TORCH_CHECK(column->size() == n, "fusedopt CUDA backend: got ", n, " params but ", column->size(),
                " tensors of one state");
  }
  for (size_t i = 0; i < n; ++i) {
    key.push_back(params[i].numel());
    key.push_back(decay_modes.empty() ? 0 : decay_modes[i]);
    check(params[i], params[i], param_dtype, "params", i);
    check(grads[i], params[i], param_dtype, "grads", i);
    for (const TensorList* column : states) check((*column)[i], params[i], state_dtype, "state", i);
    if (needs_masters) {
      check(masters[i], params[i], mode == ParamMode::kMaster ? at::kFloat : at::kShort, "masters", i);
    }
  }

  auto& cache = table_cache();
  auto found = cache.find(key);
  if (found != cache.end()) return found->second.tables;

  std::vector<TensorEntry> entries(n);
  std::vector<ChunkEntry> chunks;
  for (size_t i = 0; i < n; ++i) {
    TensorEntry& entry = entries[i];
    entry.param = params[i].data_ptr();
    entry.grad = grads[i].data_ptr();
    bool aligned = reinterpret_cast<uintptr_t>(entry.param) % kVectorAlignment == 0 &&
                   reinterpret_cast<uintptr_t>(entry.grad) % kVectorAlignment == 0;
    for (int k = 0; k < kMaxStateTensors; ++k) {
      entry.state[k] = k < static_cast<int>(states.size()) ? (*states[k])[i].data_ptr() : nullptr;
      if (entry.state[k]) aligned = aligned && reinterpret_cast<uintptr_t>(entry.state[k]) % kVectorAlignment == 0;
    }
    entry.master = needs_masters ? masters[i].data_ptr() : nullptr;
    if (entry.master) aligned = aligned && reinterpret_cast<uintptr_t>(entry.master) % kVectorAlignment == 0;
    entry.numel = params[i].numel();
    entry.aligned = aligned;
    entry.decay_mode = decay_modes.empty() ? 0 : decay_modes[i];
    for (int64_t start = 0; start < entry.numel; start += kChunkElements) {
      chunks.push_back({start, static_cast<int64_t>(i)});
    }
  }
  TORCH_CHECK(chunks.size() < (size_t{1} << 31), "fusedopt CUDA backend: too many chunks for one launch");
  std::vector<uint8_t> bytes(entries.size() * sizeof(TensorEntry) + chunks.size() * sizeof(ChunkEntry));
  std::memcpy(bytes.data(), entries.data(), entries.size() * sizeof(TensorEntry));
  std::memcpy(bytes.data() + entries.size() * sizeof(TensorEntry), chunks.data(), chunks.size() * sizeof(ChunkEntry));
  CachedTables cached;
  cached.device_bytes = upload(bytes, device);
  const auto* base = static_cast<const uint8_t*>(cached.device_bytes.data_ptr());
  cached.tables.tensors = reinterpret_cast<const TensorEntry*>(base);
  cached.tables.chunks = reinterpret_cast<const ChunkEntry*>(base + entries.size() * sizeof(TensorEntry));
  cached.tables.num_chunks = static_cast<int64_t>(chunks.size());
  cached.tables.param_type = param_type;
  cached.tables.state_type = state_type;
  cached.tables.param_mode = mode;
  cached.tables.rounding_keys = nullptr;
  if (cache.size() >= kMaxCachedTables) cache.clear();
  return cache.emplace(std::move(key), std::move(cached)).first->second.tables;
}

// NOTE [stochastic rounding]: uploads one key per tensor for this step; returns the buffer to keep alive.
at::Tensor attach_rounding_keys(LaunchTables& tables, const std::vector<double>& steps, int64_t seed,
                                const at::Device& device) {
  if (tables.param_mode != ParamMode::kStochastic) return at::Tensor();
  std::vector<uint32_t> keys(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    keys[i] = rounding_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(steps[i]), i);
  }
  at::Tensor device_keys = upload(keys, device);
  tables.rounding_keys = static_cast<const uint32_t*>(device_keys.data_ptr());
  return device_keys;
}

// One optimizer step: checks everything (nothing is modified before the last check), advances the step
// counters, uploads the per-tensor scalars and launches `launch(tables, scalars)` on the current stream.
template <typename Hyper, typename Launch>
void step(const TensorList& params, const TensorList& grads, const std::vector<const TensorList*>& states,
          const TensorList& steps, const Hyper& hyper, const Sizes& group_sizes, double grad_factor,
          const TensorList& masters, int64_t param_mode, int64_t rounding_seed, bool planned, const Launch& launch) {
  if (params.empty()) return;
  check_on_cuda(params[0]);
  const c10::cuda::CUDAGuard guard(params[0].device());
  const binding::GroupIndex groups(group_sizes, params.size(), "CUDA");
  binding::check_per_group(groups, hyper);
  if (!planned) check_steps(steps, params.size(), "CUDA");
  LaunchTables tables = tables_for(params, grads, states, binding::decay_modes(groups, hyper, params.size()), masters,
                                   param_mode, planned);
  const std::vector<double> step_values = advance_steps(steps);
  const at::Tensor keys = attach_rounding_keys(tables, step_values, rounding_seed, params[0].device());
  const at::Tensor scalars =
      upload(binding::per_tensor_scalars(groups, hyper, step_values, grad_factor), params[0].device());
  C10_CUDA_CHECK(launch(tables, scalars.data_ptr(), at::cuda::getCurrentCUDAStream()));
}

void adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
          const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& steps,
          const binding::AdamHyperparameters& hyper, const Sizes& group_sizes, bool amsgrad, double grad_factor,
          const TensorList& masters, int64_t param_mode, int64_t rounding_seed, bool planned) {
  std::vector<const TensorList*> states = {&exp_avgs, &exp_avg_sqs};
  if (amsgrad) states.push_back(&max_exp_avg_sqs);
  step(params, grads, states, steps, hyper, group_sizes, grad_factor, masters, param_mode, rounding_seed, planned,
       [&](const LaunchTables& tables, const void* scalars, cudaStream_t stream) {
         return launch_adam(tables, amsgrad, static_cast<const AdamScalars<double>*>(scalars), stream);
       });
}

void rmsprop(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
             const TensorList& grad_avgs, const TensorList& momentum_buffers, const TensorList& steps,
             const binding::RmspropHyperparameters& hyper, const Sizes& group_sizes, bool centered, bool momentum,
             double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed,
             bool planned) {
  std::vector<const TensorList*> states = {&square_avgs};
  if (centered) states.push_back(&grad_avgs);
  if (momentum) states.push_back(&momentum_buffers);
  step(params, grads, states, steps, hyper, group_sizes, grad_factor, masters, param_mode, rounding_seed, planned,
       [&](const LaunchTables& tables, const void* scalars, cudaStream_t stream) {
         return launch_rmsprop(tables, centered, momentum, static_cast<const RmspropScalars<double>*>(scalars),
                               stream);
       });
}

void adagrad(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
             const TensorList& steps, const binding::AdagradHyperparameters& hyper, const Sizes& group_sizes,
             double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed,
             bool planned) {
  step(params, grads, {&state_sums}, steps, hyper, group_sizes, grad_factor, masters, param_mode, rounding_seed, planned,
       [&](const LaunchTables& tables, const void* scalars, cudaStream_t stream) {
         return launch_adagrad(tables, static_cast<const AdagradScalars<double>*>(scalars), stream);
       });
}

void stream(const TensorList& params, const TensorList& grads, const std::vector<TensorList>& states) {
  if (params.empty()) return;
  TORCH_CHECK(states.size() <= kMaxStateTensors, "fusedopt CUDA backend: at most 3 state lists");
  check_on_cuda(params[0]);
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<const TensorList*> columns;
  for (const TensorList& column : states) columns.push_back(&column);
  const LaunchTables tables = tables_for(params, grads, columns, {}, {}, 0, false);
  C10_CUDA_CHECK(launch_stream(tables, static_cast<int>(states.size()), at::cuda::getCurrentCUDAStream()));
}

}  // namespace
}  // namespace fusedopt::cuda

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fusedopt fused CUDA optimizer kernels (one launch per device, dtype and state layout)";
  fusedopt::binding::define_optimizers<&fusedopt::cuda::adam, &fusedopt::cuda::rmsprop, &fusedopt::cuda::adagrad>(
      m, "CUDA tensors");
  m.def("stream", &fusedopt::cuda::stream, "Roofline: a step's loads and stores with one add per element",
        py::arg("params"), py::arg("grads"), py::arg("states"));
}
