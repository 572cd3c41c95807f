// csrc/cpu/bindings_cpu.cpp -- Python binding of the fused CPU kernels (module fusedopt._cpu_ext).
//
// The only file of the CPU extension that includes torch. It checks the tensors a step is given, advances
// the step counters, computes the per-tensor scalars in double, and hands raw pointers to fused_cpu.cpp.
// Every check runs before the first write, so a rejected call leaves params, state and steps untouched.
// User-facing validation (messages worded like torch.optim's) happens earlier, in fusedopt/_optimizer.py;
// the checks here guard the kernel's own contract.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "../common/binding_utils.h"
#include "../common/python_module.h"
#include "fused_cpu.h"

namespace fusedopt::cpu {
namespace {

using binding::advance_steps;
using binding::check_steps;
using binding::TensorList;

StorageType storage_type_of(const at::Tensor& tensor, const char* role) {
  return binding::storage_type_of(tensor, "CPU", role);
}

void check_operand(const at::Tensor& tensor, const at::Tensor& param, const char* role, size_t index) {
  TORCH_CHECK(tensor.device().is_cpu(), "fusedopt CPU backend: ", role, "[", index, "] is on ", tensor.device(),
              ", expected cpu");
  TORCH_CHECK(tensor.is_contiguous(), "fusedopt CPU backend: ", role, "[", index, "] must be contiguous");
  TORCH_CHECK(tensor.numel() == param.numel(), "fusedopt CPU backend: ", role, "[", index, "] has ",
              tensor.numel(), " elements but its parameter has ", param.numel());
}

// Checks every operand and returns the kernel's view of them. `states` lists the state tensor lists in slot
// order; an empty list marks a slot the mode does not use. With `planned`, the per-tensor checks are skipped:
// StepOperands checked the operands when the plan was made and params and grads at this step (NOTE [step plan]).
std::vector<TensorSlot> make_slots(const TensorList& params, const TensorList& grads,
                                   const std::vector<const TensorList*>& states, const TensorList& masters,
                                   int64_t param_mode, bool planned, LaunchLayout& layout) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "fusedopt CPU backend: got ", n, " params but ", grads.size(), " grads");
  for (const TensorList* state : states) {
    TORCH_CHECK(state->empty() || state->size() == n, "fusedopt CPU backend: got ", n, " params but ",
                state->size(), " tensors of one state");
  }
  TORCH_CHECK(param_mode >= 0 && param_mode <= static_cast<int64_t>(ParamMode::kRemainder),
              "fusedopt CPU backend: invalid param_mode ", param_mode);
  layout.param_mode = static_cast<ParamMode>(param_mode);
  const bool needs_masters = layout.param_mode == ParamMode::kMaster || layout.param_mode == ParamMode::kRemainder;
  TORCH_CHECK(masters.size() == (needs_masters ? n : 0), "fusedopt CPU backend: parameter mode ", param_mode,
              " needs ", needs_masters ? n : 0, " master tensors, got ", masters.size());
  layout.param_type = n > 0 ? storage_type_of(params[0], "param") : StorageType::kFloat32;
  const bool has_state = !states.empty() && !states[0]->empty();
  layout.state_type = n > 0 && has_state ? storage_type_of((*states[0])[0], "state") : layout.param_type;
  const auto master_dtype = layout.param_mode == ParamMode::kRemainder ? at::kShort : at::kFloat;
  std::vector<TensorSlot> slots(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& param = params[i];
    if (!planned) {
      TORCH_CHECK_TYPE(storage_type_of(param, "param") == layout.param_type,
                       "fusedopt CPU backend: all params of one call must share a dtype");
      TORCH_CHECK(grads[i].scalar_type() == param.scalar_type(), "fusedopt CPU backend: grads[", i, "] has dtype ",
                  grads[i].scalar_type(), " but its parameter has ", param.scalar_type());
      check_operand(param, param, "params", i);
      check_operand(grads[i], param, "grads", i);
    }
    TensorSlot& slot = slots[i];
    slot.param = param.data_ptr();
    slot.grad = grads[i].data_ptr();
    slot.numel = param.numel();
    for (int k = 0; k < kMaxStateTensors; ++k) slot.state[k] = nullptr;
    slot.master = nullptr;
    slot.rounding_key = 0;
    slot.decay_mode = 0;
    if (!masters.empty()) {
      const at::Tensor& master = masters[i];
      if (!planned) {
        check_operand(master, param, "masters", i);
        TORCH_CHECK_TYPE(master.scalar_type() == master_dtype, "fusedopt CPU backend: masters[", i, "] has dtype ",
                         master.scalar_type(), ", expected ", master_dtype);
      }
      slot.master = master.data_ptr();
    }
    for (size_t k = 0; k < states.size(); ++k) {
      if (states[k]->empty()) continue;
      const at::Tensor& state = (*states[k])[i];
      if (!planned) {
        check_operand(state, param, "state", i);
        TORCH_CHECK_TYPE(storage_type_of(state, "state") == layout.state_type,
                         "fusedopt CPU backend: all state of one call must share a dtype");
      }
      slot.state[k] = state.data_ptr();
    }
  }
  check_layout(layout);
  layout.tensors = slots.data();
  layout.num_tensors = static_cast<int64_t>(n);
  layout.num_threads = at::get_num_threads();
  return slots;
}

// NOTE [stochastic rounding]: one key per tensor and step.
void set_rounding_keys(std::vector<TensorSlot>& slots, const std::vector<double>& steps, int64_t seed) {
  for (size_t i = 0; i < slots.size(); ++i) {
    slots[i].rounding_key = rounding_key(static_cast<uint64_t>(seed), static_cast<uint64_t>(steps[i]), i);
  }
}

// One optimizer step: checks everything (nothing is modified before the last check), advances the step
// counters, fills the per-tensor scalars, decay modes and rounding keys, and runs `run(layout, scalars)`
// without the GIL. `states` lists the state columns in slot order; an empty column marks an unused slot.
template <typename Hyper, typename Run>
void step(const TensorList& params, const TensorList& grads, const std::vector<const TensorList*>& states,
          const TensorList& steps, const Hyper& hyper, const std::vector<int64_t>& group_sizes, double grad_factor,
          const TensorList& masters, int64_t param_mode, int64_t rounding_seed, bool planned, const Run& run) {
  LaunchLayout layout{};
  auto slots = make_slots(params, grads, states, masters, param_mode, planned, layout);
  const binding::GroupIndex groups(group_sizes, params.size(), "CPU");
  binding::check_per_group(groups, hyper);
  if (!planned) check_steps(steps, params.size(), "CPU");
  const std::vector<double> step_values = advance_steps(steps);
  if (layout.param_mode == ParamMode::kStochastic) set_rounding_keys(slots, step_values, rounding_seed);
  const std::vector<int32_t> decay_modes = binding::decay_modes(groups, hyper, params.size());
  for (size_t i = 0; i < slots.size(); ++i) slots[i].decay_mode = decay_modes[i];
  const auto scalars = binding::per_tensor_scalars(groups, hyper, step_values, grad_factor);
  pybind11::gil_scoped_release no_gil;
  run(layout, scalars.data());
}

void adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
          const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& steps,
          const binding::AdamHyperparameters& hyper, const std::vector<int64_t>& group_sizes, bool amsgrad,
          double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed, bool planned) {
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(),
              "fusedopt CPU backend: Adam needs one exp_avg and one exp_avg_sq per param");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == params.size(),
              "fusedopt CPU backend: amsgrad needs one max_exp_avg_sq per param");
  const TensorList none;
  step(params, grads, {&exp_avgs, &exp_avg_sqs, amsgrad ? &max_exp_avg_sqs : &none}, steps, hyper, group_sizes,
       grad_factor, masters, param_mode, rounding_seed, planned,
       [&](const LaunchLayout& layout, const AdamScalars<double>* scalars) {
         adam_step(AdamLaunch{layout, amsgrad, scalars});
       });
}

void rmsprop(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
             const TensorList& grad_avgs, const TensorList& momentum_buffers, const TensorList& steps,
             const binding::RmspropHyperparameters& hyper, const std::vector<int64_t>& group_sizes, bool centered,
             bool momentum, double grad_factor, const TensorList& masters, int64_t param_mode,
             int64_t rounding_seed, bool planned) {
  TORCH_CHECK(square_avgs.size() == params.size(), "fusedopt CPU backend: RMSprop needs one square_avg per param");
  TORCH_CHECK(!centered || grad_avgs.size() == params.size(), "fusedopt CPU backend: centered needs grad_avgs");
  TORCH_CHECK(!momentum || momentum_buffers.size() == params.size(),
              "fusedopt CPU backend: momentum needs momentum_buffers");
  const TensorList none;
  step(params, grads, {&square_avgs, centered ? &grad_avgs : &none, momentum ? &momentum_buffers : &none}, steps,
       hyper, group_sizes, grad_factor, masters, param_mode, rounding_seed, planned,
       [&](const LaunchLayout& layout, const RmspropScalars<double>* scalars) {
         rmsprop_step(RmspropLaunch{layout, centered, momentum, scalars});
       });
}

void adagrad(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
             const TensorList& steps, const binding::AdagradHyperparameters& hyper,
             const std::vector<int64_t>& group_sizes, double grad_factor, const TensorList& masters,
             int64_t param_mode, int64_t rounding_seed, bool planned) {
  TORCH_CHECK(state_sums.size() == params.size(), "fusedopt CPU backend: Adagrad needs one state_sum per param");
  step(params, grads, {&state_sums}, steps, hyper, group_sizes, grad_factor, masters, param_mode, rounding_seed, planned,
       [&](const LaunchLayout& layout, const AdagradScalars<double>* scalars) {
         adagrad_step(AdagradLaunch{layout, scalars});
       });
}

void stream(const TensorList& params, const TensorList& grads, const TensorList& states0, const TensorList& states1,
            const TensorList& states2) {
  StreamLaunch launch{};
  const auto slots = make_slots(params, grads, {&states0, &states1, &states2}, {}, 0, false, launch.layout);
  launch.num_states = static_cast<int>(!states0.empty()) + !states1.empty() + !states2.empty();
  TORCH_CHECK(launch.num_states == 0 || !states0.empty(), "fusedopt CPU backend: fill state lists in order");
  pybind11::gil_scoped_release no_gil;
  stream_step(launch);
}

}  // namespace
}  // namespace fusedopt::cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fusedopt fused CPU optimizer kernels (OpenMP + SIMD)";
  fusedopt::binding::define_optimizers<&fusedopt::cpu::adam, &fusedopt::cpu::rmsprop, &fusedopt::cpu::adagrad>(
      m, "CPU tensors");
  m.def("stream", &fusedopt::cpu::stream,
        "Roofline for the benchmark: an optimizer step's loads and stores with one add per element",
        py::arg("params"), py::arg("grads"), py::arg("states0"), py::arg("states1"), py::arg("states2"));
}
