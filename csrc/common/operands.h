// csrc/common/operands.h -- one fused call's operands as raw addresses, checked once (shared by the CPU and CUDA
// bindings; includes torch, kernel translation units never include it).
//
// The regular path checks torch tensors and converts them here at every call. The step plan (NOTE [step plan] in
// step_operands.h) converts once and keeps the addresses of everything that cannot move: the state and master
// tensors are views of fusedopt's own flat buffers and the step counters are its own tensors, so a planned
// step reads only the params and their grads, not a single state tensor object. With 1,000 parameters that is
// thousands of fewer cache misses on tensor metadata per step, which after a forward and backward pass is what
// host time mostly consists of.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

#include "binding_utils.h"
#include "fusedopt/param_rounding.h"
#include "fusedopt/storage_type.h"

namespace fusedopt::binding {

constexpr size_t kMaxStateColumns = 3;

// NOTE [grad factor] of a call: a host value (maximize's sign is applied later, per group) times, when `device` is
// set, a float32 value in the params' memory (CPU, or GPU memory the kernels read). `found_inf`, when set, is
// GradScaler's float32 flag in the same memory: nonzero means the call changes nothing, step counters included.
struct GradFactor {
  double host = 1.0;
  const float* device = nullptr;
  const float* found_inf = nullptr;
};

// Where a backend keeps the step counters (torch.optim's state["step"]) it takes.
enum class StepPlace {
  kHost,    // one-element float32 or float64 CPU tensors, advanced by the binding (the CPU backend)
  kDevice,  // one-element float32 tensors beside the params, read and advanced by the kernel (NOTE [device steps])
};

// The step counters of a call.
struct StepCounters {
  std::vector<void*> values;
  std::vector<bool> is_double;
  StepPlace place = StepPlace::kHost;

  // Adds one to every host counter (as torch.optim does before using it) and returns the new values.
  std::vector<double> advance() const {
    TORCH_CHECK(place == StepPlace::kHost, "fusedopt: device step counters are advanced by the kernel");
    std::vector<double> steps(values.size());
    for (size_t i = 0; i < values.size(); ++i) {
      steps[i] = is_double[i] ? (*static_cast<double*>(values[i]) += 1.0)
                              : static_cast<double>(*static_cast<float*>(values[i]) += 1.0f);
    }
    return steps;
  }
};

struct Operands {
  std::vector<void*> params;
  std::vector<const void*> grads;
  std::vector<int64_t> numels;
  std::array<std::vector<void*>, kMaxStateColumns> states;  // in the entry point's slot order; empty: unused
  std::vector<void*> masters;  // float32 masters or int16 remainders (ParamMode kMaster, kRemainder), else empty
  StepCounters steps;
  StorageType param_type = StorageType::kFloat32;
  StorageType state_type = StorageType::kFloat32;
  ParamMode param_mode = ParamMode::kPlain;
  at::Device device = at::kCPU;
  // Nonzero for the operands of a planned call (NOTE [step plan]): operands with the same layout key differ at most
  // in the params' and grads' addresses (same tensors in the same order and groups, same sizes, state, masters and
  // step counters), so what a backend derives from them (the CUDA launch tables) may be kept under this key and
  // checked against those two lists alone.
  uint64_t layout_key = 0;

  size_t size() const { return params.size(); }
  // The states in slot order, unused slots left out (how the kernels number them).
  std::vector<const std::vector<void*>*> used_states() const {
    std::vector<const std::vector<void*>*> used;
    for (const auto& column : states) {
      if (!column.empty()) used.push_back(&column);
    }
    return used;
  }
};

// Checks a call's tensors and returns their addresses; nothing is modified. Every tensor must be contiguous, on the
// params' device (which `device_ok` must accept), and have its parameter's element count; grads have the params'
// dtype, all state one dtype that the kernels pair with it, masters float32 (kMaster) or int16 (kRemainder).
// `states` may hold null for an unused slot; `steps` may be empty when the call has no counters (the roofline), and
// must be where `step_place` says.
inline Operands check_operands(const char* backend, const TensorList& params, const TensorList& grads,
                               const std::vector<const TensorList*>& states, const TensorList& steps,
                               const TensorList& masters, int64_t param_mode, bool (*device_ok)(const at::Device&),
                               StepPlace step_place) {
  const size_t n = params.size();
  Operands out;
  out.steps.place = step_place;
  TORCH_CHECK(n > 0, "fusedopt ", backend, " backend: no params");
  TORCH_CHECK(grads.size() == n, "fusedopt ", backend, " backend: got ", n, " params but ", grads.size(), " grads");
  TORCH_CHECK(states.size() <= kMaxStateColumns, "fusedopt ", backend, " backend: too many state lists");
  out.device = params[0].device();
  TORCH_CHECK(device_ok(out.device), "fusedopt ", backend, " backend: params are on ", out.device,
              ", which this backend does not update");
  out.param_type = storage_type_of(params[0], backend, "param");
  const TensorList* first_state = nullptr;
  for (const TensorList* column : states) {
    if (column == nullptr || column->empty()) continue;
    TORCH_CHECK(column->size() == n, "fusedopt ", backend, " backend: got ", n, " params but ", column->size(),
                " tensors of one state");
    if (first_state == nullptr) first_state = column;
  }
  out.state_type = first_state ? storage_type_of((*first_state)[0], backend, "state") : out.param_type;
  TORCH_CHECK_TYPE(is_supported_pair(out.param_type, out.state_type), "fusedopt ", backend,
                   " backend: ", storage_type_name(out.param_type), " parameters with ",
                   storage_type_name(out.state_type), " state are not supported");
  TORCH_CHECK(param_mode >= 0 && param_mode <= static_cast<int64_t>(ParamMode::kRemainder), "fusedopt ", backend,
              " backend: invalid param_mode ", param_mode);
  out.param_mode = static_cast<ParamMode>(param_mode);
  const bool bfloat16 = out.param_type == StorageType::kBFloat16;
  const bool low_precision = bfloat16 || out.param_type == StorageType::kFloat16;
  TORCH_CHECK(out.param_mode == ParamMode::kPlain || (out.param_mode == ParamMode::kMaster && low_precision) ||
                  ((out.param_mode == ParamMode::kStochastic || out.param_mode == ParamMode::kRemainder) && bfloat16),
              "fusedopt ", backend, " backend: parameter mode ", param_mode, " does not apply to ",
              storage_type_name(out.param_type), " parameters");
  const bool needs_masters = out.param_mode == ParamMode::kMaster || out.param_mode == ParamMode::kRemainder;
  TORCH_CHECK(masters.size() == (needs_masters ? n : 0), "fusedopt ", backend, " backend: parameter mode ", param_mode,
              " needs ", needs_masters ? n : 0, " master tensors, got ", masters.size());
  TORCH_CHECK(steps.empty() || steps.size() == n, "fusedopt ", backend, " backend: got ", n, " params but ",
              steps.size(), " step counters");

  const at::ScalarType param_dtype = params[0].scalar_type();
  const at::ScalarType state_dtype = first_state ? (*first_state)[0].scalar_type() : param_dtype;
  const at::ScalarType master_dtype = out.param_mode == ParamMode::kRemainder ? at::kShort : at::kFloat;
  auto address = [&](const at::Tensor& t, const at::Tensor& param, at::ScalarType dtype, const char* role, size_t i) {
    TORCH_CHECK(t.device() == out.device, "fusedopt ", backend, " backend: ", role, "[", i, "] is on ", t.device(),
                ", expected ", out.device);
    TORCH_CHECK(t.layout() == at::kStrided && t.is_contiguous(), "fusedopt ", backend, " backend: ", role, "[", i,
                "] must be dense and contiguous");
    TORCH_CHECK_TYPE(!dispatches_to_python(t), "fusedopt ", backend, " backend: ", role, "[", i,
                     "] is a tensor subclass that dispatches to Python; pass its local tensor");
    TORCH_CHECK(t.numel() == param.numel(), "fusedopt ", backend, " backend: ", role, "[", i, "] has ", t.numel(),
                " elements but its parameter has ", param.numel());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype, "fusedopt ", backend, " backend: ", role, "[", i, "] has dtype ",
                     t.scalar_type(), ", expected ", dtype);
    return t.data_ptr();
  };
  out.params.reserve(n);
  out.grads.reserve(n);
  out.numels.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& param = params[i];
    out.params.push_back(address(param, param, param_dtype, "params", i));
    out.grads.push_back(address(grads[i], param, param_dtype, "grads", i));
    out.numels.push_back(param.numel());
    for (size_t k = 0; k < states.size(); ++k) {
      if (states[k] != nullptr && !states[k]->empty()) {
        out.states[k].push_back(address((*states[k])[i], param, state_dtype, "state", i));
      }
    }
    if (needs_masters) out.masters.push_back(address(masters[i], param, master_dtype, "masters", i));
    if (!steps.empty()) {
      const at::Tensor& step = steps[i];
      if (step_place == StepPlace::kHost) {
        TORCH_CHECK(step.device().is_cpu() && step.numel() == 1 &&
                        (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble),
                    "fusedopt ", backend, " backend: steps[", i,
                    "] must be a one-element float32 or float64 CPU tensor");
      } else {
        TORCH_CHECK(step.device() == out.device && step.numel() == 1 && step.scalar_type() == at::kFloat, "fusedopt ",
                    backend, " backend: steps[", i, "] must be a one-element float32 tensor on ", out.device,
                    " (NOTE [device steps]), got ", step.scalar_type(), " on ", step.device());
      }
      out.steps.values.push_back(step.data_ptr());
      out.steps.is_double.push_back(step.scalar_type() == at::kDouble);
    }
  }
  return out;
}

// The operands without the tensors at `dropped` (ascending indices), the rest in the same order: a planned step
// over the parameters that have a grad this time (NOTE [step plan]). The layout key is left 0, for the caller.
inline Operands without(const Operands& ops, const std::vector<size_t>& dropped) {
  Operands out;
  out.param_type = ops.param_type;
  out.state_type = ops.state_type;
  out.param_mode = ops.param_mode;
  out.device = ops.device;
  out.steps.place = ops.steps.place;
  size_t next_dropped = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (next_dropped < dropped.size() && dropped[next_dropped] == i) {
      ++next_dropped;
      continue;
    }
    out.params.push_back(ops.params[i]);
    out.grads.push_back(ops.grads[i]);
    out.numels.push_back(ops.numels[i]);
    for (size_t k = 0; k < kMaxStateColumns; ++k) {
      if (!ops.states[k].empty()) out.states[k].push_back(ops.states[k][i]);
    }
    if (!ops.masters.empty()) out.masters.push_back(ops.masters[i]);
    if (!ops.steps.values.empty()) {
      out.steps.values.push_back(ops.steps.values[i]);
      out.steps.is_double.push_back(ops.steps.is_double[i]);
    }
  }
  return out;
}

// Per-group tensor counts (tensors come group after group) without the tensors at `dropped` (ascending indices).
inline std::vector<int64_t> without(const std::vector<int64_t>& group_sizes, const std::vector<size_t>& dropped) {
  std::vector<int64_t> out(group_sizes);
  size_t group = 0;
  size_t group_end = group_sizes.empty() ? 0 : static_cast<size_t>(group_sizes[0]);
  for (size_t index : dropped) {
    while (index >= group_end) group_end += static_cast<size_t>(group_sizes[++group]);
    --out[group];
  }
  return out;
}

}  // namespace fusedopt::binding
