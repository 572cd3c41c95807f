// csrc/cuda/bindings_cuda.cpp -- Python binding of the fused CUDA kernels (module fusedopt._cuda_ext).
//
// The only file of the CUDA extension that includes torch. Per call it takes checked operands
// (csrc/common/operands.h, from the Python call or a step plan), finds (or builds once) the call's device tables
// (NOTE [cuda multi-tensor launch] in fused_cuda.h), uploads the param groups' hyperparameters and launches one kernel
// on the current stream, which also advances the step counters on the device (NOTE [device steps]). Every check runs
// before the first write; every launch is checked.
#include <torch/extension.h>

#include <cstring>
#include <unordered_map>
#include <vector>

#include "../common/binding_utils.h"
#include "../common/operands.h"
#include "../common/python_module.h"
#include "device_api.h"
#include "fused_cuda.h"

namespace fusedopt::cuda {
namespace {

using binding::Operands;
static_assert(kMaxStateTensors == static_cast<int>(binding::kMaxStateColumns), "state slots of kernel and binding");
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

// NOTE [tables on other streams]: the caching allocator gives a tensor's memory back to the stream it was allocated
// on, for that stream's next allocation, the moment the tensor is freed: safe for work queued on that stream, not for
// work on another. Cached tables are allocated on the stream current when they were built, and a later step may run
// on another (a user's side stream); if they are then freed (the cache is full, or a plan is rebuilt) while that
// step's kernel is still queued, their memory could be overwritten under it. A launch on a stream other than the
// one the tables were built on therefore records that stream with the allocator (Tensor.record_stream), as
// torch's own collectives do for their buffers; on the build stream, the usual case, nothing is recorded.
struct CachedTables {
  at::Tensor device_bytes;  // TensorEntry[num_tensors], ChunkEntry[num_chunks], then the finished-CTA ticket
  LaunchTables tables;
  cudaStream_t built_on = nullptr;  // the stream current when device_bytes was allocated
};

// The current stream, for a launch with `cached`'s tables: recorded with the allocator when the tables were built on
// another (NOTE [tables on other streams]).
cudaStream_t stream_for_launch(const CachedTables& cached) {
  const cudaStream_t stream = device_api::current_stream();
  if (stream != cached.built_on) device_api::record_current_stream(cached.device_bytes);
  return stream;
}

std::unordered_map<std::vector<int64_t>, CachedTables, KeyHash>& table_cache() {
  static std::unordered_map<std::vector<int64_t>, CachedTables, KeyHash> cache;
  return cache;
}

// NOTE [planned tables]: the key of table_cache() holds about seven values per tensor, and building, hashing and
// comparing it at every step was about a third of a planned step's host time. Planned operands with one layout key
// (operands.h) differ only in the params' and grads' addresses, so their tables are also kept under the layout key
// with those two lists and the tensors' weight decay modes, which a step compares instead: the binding's host work
// for 1,000 tensors went from 46 to 34 us (warm caches, measured through the host emulation,
// bench/results/2026-11-29-cpu/cuda_binding_host_time.txt). The entry holds its own reference to the device tables,
// so they stay valid when table_cache() is cleared.
struct PlannedTables {
  std::vector<void*> params;
  std::vector<const void*> grads;
  std::vector<int32_t> decay_modes;
  CachedTables cached;
};

std::unordered_map<uint64_t, PlannedTables>& planned_tables() {
  static std::unordered_map<uint64_t, PlannedTables> planned;
  return planned;
}

using device_api::upload;

// The bucket's launch tables for checked operands (operands.h), from the cache when no operand has moved.
// `decay_modes` and `groups` have each tensor's weight decay mode and param group (empty: none, and group 0), part
// of the cached table.
const CachedTables& cached_tables_for(const Operands& ops, const std::vector<int32_t>& decay_modes,
                                      const std::vector<int32_t>& groups) {
  const size_t n = ops.size();
  TORCH_CHECK(decay_modes.empty() || decay_modes.size() == n, "fusedopt CUDA backend: ", decay_modes.size(),
              " weight decay modes for ", n, " params");
  TORCH_CHECK(groups.empty() || groups.size() == n, "fusedopt CUDA backend: ", groups.size(), " group indices for ", n,
              " params");
  const auto states = ops.used_states();
  const bool has_masters = !ops.masters.empty();
  const bool has_steps = !ops.steps.values.empty();
  TORCH_CHECK(!has_steps || ops.steps.place == binding::StepPlace::kDevice,
              "fusedopt CUDA backend: step counters must live on the device");
  std::vector<int64_t> key = {ops.device.index(), static_cast<int64_t>(ops.param_type),
                              static_cast<int64_t>(ops.state_type), static_cast<int64_t>(ops.param_mode), has_steps};
  key.reserve(5 + n * (6 + states.size()));
  for (size_t i = 0; i < n; ++i) {
    key.push_back(ops.numels[i]);
    const int64_t group = groups.empty() ? 0 : groups[i];
    key.push_back(group << 32 | (decay_modes.empty() ? 0 : decay_modes[i]));
    key.push_back(reinterpret_cast<int64_t>(ops.params[i]));
    key.push_back(reinterpret_cast<int64_t>(ops.grads[i]));
    for (const auto* column : states) key.push_back(reinterpret_cast<int64_t>((*column)[i]));
    if (has_masters) key.push_back(reinterpret_cast<int64_t>(ops.masters[i]));
    if (has_steps) key.push_back(reinterpret_cast<int64_t>(ops.steps.values[i]));
  }
  auto& cache = table_cache();
  auto found = cache.find(key);
  if (found != cache.end()) return found->second;

  auto aligned = [](const void* address) { return reinterpret_cast<uintptr_t>(address) % kVectorAlignment == 0; };
  std::vector<TensorEntry> entries(n);
  std::vector<ChunkEntry> chunks;
  for (size_t i = 0; i < n; ++i) {
    TensorEntry& entry = entries[i];
    entry.param = ops.params[i];
    entry.grad = ops.grads[i];
    bool all_aligned = aligned(entry.param) && aligned(entry.grad);
    for (int k = 0; k < kMaxStateTensors; ++k) {
      entry.state[k] = k < static_cast<int>(states.size()) ? (*states[k])[i] : nullptr;
      if (entry.state[k]) all_aligned = all_aligned && aligned(entry.state[k]);
    }
    entry.master = has_masters ? ops.masters[i] : nullptr;
    if (entry.master) all_aligned = all_aligned && aligned(entry.master);
    entry.step = has_steps ? static_cast<float*>(ops.steps.values[i]) : nullptr;
    entry.numel = ops.numels[i];
    entry.aligned = all_aligned;
    entry.decay_mode = decay_modes.empty() ? 0 : decay_modes[i];
    entry.group = groups.empty() ? 0 : groups[i];
    for (int64_t start = 0; start < entry.numel; start += kChunkElements) {
      chunks.push_back({start, static_cast<int64_t>(i)});
    }
  }
  // A launch of empty tensors still runs one CTA (over nothing), which advances their step counters.
  if (chunks.empty()) chunks.push_back({0, 0});
  TORCH_CHECK(chunks.size() < (size_t{1} << 31), "fusedopt CUDA backend: too many chunks for one launch");
  const size_t ticket_offset = entries.size() * sizeof(TensorEntry) + chunks.size() * sizeof(ChunkEntry);
  std::vector<uint8_t> bytes(ticket_offset + sizeof(unsigned int), 0);  // the ticket starts at zero
  std::memcpy(bytes.data(), entries.data(), entries.size() * sizeof(TensorEntry));
  std::memcpy(bytes.data() + entries.size() * sizeof(TensorEntry), chunks.data(), chunks.size() * sizeof(ChunkEntry));
  CachedTables cached;
  cached.device_bytes = upload(bytes, ops.device);
  cached.built_on = device_api::current_stream();
  const auto* base = static_cast<const uint8_t*>(cached.device_bytes.data_ptr());
  cached.tables.tensors = reinterpret_cast<const TensorEntry*>(base);
  cached.tables.chunks = reinterpret_cast<const ChunkEntry*>(base + entries.size() * sizeof(TensorEntry));
  cached.tables.finished_ctas =
      reinterpret_cast<unsigned int*>(static_cast<uint8_t*>(cached.device_bytes.data_ptr()) + ticket_offset);
  cached.tables.num_tensors = static_cast<int64_t>(n);
  cached.tables.num_chunks = static_cast<int64_t>(chunks.size());
  cached.tables.param_type = ops.param_type;
  cached.tables.state_type = ops.state_type;
  cached.tables.param_mode = ops.param_mode;
  cached.tables.grad_factor_scale = nullptr;
  cached.tables.found_inf = nullptr;
  cached.tables.rounding_seed = 0;
  if (cache.size() >= kMaxCachedTables) cache.clear();
  return cache.emplace(std::move(key), std::move(cached)).first->second;
}

// The launch tables of checked operands: for planned operands from NOTE [planned tables]'s entry when their
// addresses and decay modes are those it was made for, else from the table cache (built there once).
const CachedTables& tables_for(const Operands& ops, const std::vector<int32_t>& decay_modes,
                               const std::vector<int32_t>& groups) {
  if (ops.layout_key == 0) return cached_tables_for(ops, decay_modes, groups);
  auto& planned = planned_tables();
  const auto found = planned.find(ops.layout_key);
  if (found != planned.end() && found->second.params == ops.params && found->second.grads == ops.grads &&
      found->second.decay_modes == decay_modes) {
    return found->second.cached;
  }
  const CachedTables& cached = cached_tables_for(ops, decay_modes, groups);
  if (found == planned.end() && planned.size() >= kMaxCachedTables) planned.clear();
  planned[ops.layout_key] = PlannedTables{ops.params, ops.grads, decay_modes, cached};
  return cached;
}

// One optimizer step over checked operands: checks the group hyperparameters (nothing is modified before the last
// check), uploads one row of hyperparameters per param group and launches `launch(tables, hyper)` on the current
// stream. The kernel reads the step counters, GradScaler's found_inf and the device grad factor on the device, and
// advances the counters (NOTE [device steps]): nothing here waits for the GPU.
template <typename Hyper, typename Launch>
void step(const Operands& ops, const Hyper& hyper, const Sizes& group_sizes, const binding::GradFactor& grad_factor,
          int64_t rounding_seed, const Launch& launch) {
  const device_api::DeviceGuard guard(ops.device);
  const binding::GroupIndex groups(group_sizes, ops.size(), "CUDA");
  binding::check_per_group(groups, hyper);
  TORCH_CHECK(ops.steps.values.size() == ops.size(), "fusedopt CUDA backend: every param needs a step counter");
  const CachedTables& cached = tables_for(ops, binding::decay_modes(groups, hyper, ops.size()), groups.of_tensors());
  LaunchTables tables = cached.tables;
  tables.grad_factor_scale = grad_factor.device;
  tables.found_inf = grad_factor.found_inf;
  tables.rounding_seed = static_cast<uint64_t>(rounding_seed);
  const at::Tensor per_group = upload(binding::per_group_hyper(groups, hyper, grad_factor.host), ops.device);
  device_api::check_launch(launch(tables, per_group.data_ptr(), stream_for_launch(cached)));
}

void adam(const Operands& ops, const binding::AdamHyperparameters& hyper, const Sizes& group_sizes, bool amsgrad,
          const binding::GradFactor& grad_factor, int64_t rounding_seed) {
  step(ops, hyper, group_sizes, grad_factor, rounding_seed,
       [&](const LaunchTables& tables, const void* hyper, cudaStream_t stream) {
         return launch_adam(tables, amsgrad, static_cast<const AdamHyper*>(hyper), stream);
       });
}

void rmsprop(const Operands& ops, const binding::RmspropHyperparameters& hyper, const Sizes& group_sizes, bool centered,
             bool momentum, const binding::GradFactor& grad_factor, int64_t rounding_seed) {
  step(ops, hyper, group_sizes, grad_factor, rounding_seed,
       [&](const LaunchTables& tables, const void* hyper, cudaStream_t stream) {
         return launch_rmsprop(tables, centered, momentum, static_cast<const RmspropHyper*>(hyper), stream);
       });
}

void adagrad(const Operands& ops, const binding::AdagradHyperparameters& hyper, const Sizes& group_sizes,
             const binding::GradFactor& grad_factor, int64_t rounding_seed) {
  step(ops, hyper, group_sizes, grad_factor, rounding_seed,
       [&](const LaunchTables& tables, const void* hyper, cudaStream_t stream) {
         return launch_adagrad(tables, static_cast<const AdagradHyper*>(hyper), stream);
       });
}

void stream(const TensorList& params, const TensorList& grads, const std::vector<TensorList>& states) {
  if (params.empty()) return;
  TORCH_CHECK(states.size() <= kMaxStateTensors, "fusedopt CUDA backend: at most 3 state lists");
  std::vector<const TensorList*> columns;
  for (const TensorList& column : states) columns.push_back(&column);
  const Operands ops = binding::check_operands("CUDA", params, grads, columns, {}, {}, 0, device_api::takes_device,
                                               binding::StepPlace::kDevice);
  const device_api::DeviceGuard guard(ops.device);
  const CachedTables& cached = tables_for(ops, {}, {});
  device_api::check_launch(
      launch_stream(cached.tables, static_cast<int>(ops.used_states().size()), stream_for_launch(cached)));
}

}  // namespace
}  // namespace fusedopt::cuda

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fusedopt fused CUDA optimizer kernels (one launch per device, dtype and state layout)";
  fusedopt::binding::define_optimizers<&fusedopt::cuda::adam, &fusedopt::cuda::rmsprop, &fusedopt::cuda::adagrad,
                                       &fusedopt::cuda::device_api::takes_device,
                                       fusedopt::binding::StepPlace::kDevice>(m, "CUDA");
  m.def("stream", &fusedopt::cuda::stream, "Roofline: a step's loads and stores with one add per element",
        py::arg("params"), py::arg("grads"), py::arg("states"));
}
