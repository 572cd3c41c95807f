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
// order; an empty list marks a slot the mode does not use.
std::vector<TensorSlot> make_slots(const TensorList& params, const TensorList& grads,
                                   const std::vector<const TensorList*>& states, const TensorList& masters,
                                   int64_t param_mode, LaunchLayout& layout) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n, "fusedopt CPU backend: got ", n, " params but ", grads.size(), " grads");
  for (const TensorList* state : states) {
    TORCH_CHECK(state->empty() || state->size() == n, "fusedopt CPU backend: got ", n, " params but ",
                state->size(), " tensors of one state");
  }
  layout.param_type = StorageType::kFloat32;
  layout.state_type = StorageType::kFloat32;
  TORCH_CHECK(param_mode >= 0 && param_mode <= static_cast<int64_t>(ParamMode::kRemainder),
              "fusedopt CPU backend: invalid param_mode ", param_mode);
  layout.param_mode = static_cast<ParamMode>(param_mode);
  const bool needs_masters = layout.param_mode == ParamMode::kMaster || layout.param_mode == ParamMode::kRemainder;
  TORCH_CHECK(masters.size() == (needs_masters ? n : 0), "fusedopt CPU backend: parameter mode ", param_mode,
              " needs ", needs_masters ? n : 0, " master tensors, got ", masters.size());
  std::vector<TensorSlot> slots(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& param = params[i];
    const StorageType param_type = storage_type_of(param, "param");
    TORCH_CHECK(grads[i].scalar_type() == param.scalar_type(), "fusedopt CPU backend: grads[", i, "] has dtype ",
                grads[i].scalar_type(), " but its parameter has ", param.scalar_type());
    check_operand(param, param, "params", i);
    check_operand(grads[i], param, "grads", i);
    TensorSlot& slot = slots[i];
    slot.param = param.data_ptr();
    slot.grad = grads[i].data_ptr();
    slot.numel = param.numel();
    for (int k = 0; k < kMaxStateTensors; ++k) slot.state[k] = nullptr;
    slot.master = nullptr;
    slot.rounding_key = 0;
    if (!masters.empty()) {
      const at::Tensor& master = masters[i];
      check_operand(master, param, "masters", i);
      const auto expected = layout.param_mode == ParamMode::kRemainder ? at::kShort : at::kFloat;
      TORCH_CHECK_TYPE(master.scalar_type() == expected, "fusedopt CPU backend: masters[", i, "] has dtype ",
                       master.scalar_type(), ", expected ", expected);
      slot.master = master.data_ptr();
    }
    for (size_t k = 0; k < states.size(); ++k) {
      if (states[k]->empty()) continue;
      const at::Tensor& state = (*states[k])[i];
      check_operand(state, param, "state", i);
      const StorageType state_type = storage_type_of(state, "state");
      if (i == 0 && k == 0) layout.state_type = state_type;
      TORCH_CHECK_TYPE(state_type == layout.state_type, "fusedopt CPU backend: all state of one call must share a dtype");
      slot.state[k] = state.data_ptr();
    }
    if (i == 0) layout.param_type = param_type;
    TORCH_CHECK_TYPE(param_type == layout.param_type, "fusedopt CPU backend: all params of one call must share a dtype");
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

void adam(const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
          const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& steps, double lr,
          double beta1, double beta2, double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled,
          double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
  TORCH_CHECK(!exp_avgs.empty() || params.empty(), "fusedopt CPU backend: exp_avgs missing");
  TORCH_CHECK(!amsgrad || max_exp_avg_sqs.size() == params.size(),
              "fusedopt CPU backend: amsgrad needs one max_exp_avg_sq per param");
  AdamLaunch launch{};
  const TensorList none;
  auto slots = make_slots(params, grads, {&exp_avgs, &exp_avg_sqs, amsgrad ? &max_exp_avg_sqs : &none}, masters,
                          param_mode, launch.layout);
  check_steps(steps, params.size(), "CPU");
  const std::vector<double> step_values = advance_steps(steps);
  set_rounding_keys(slots, step_values, rounding_seed);
  std::vector<AdamScalars<double>> scalars(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    scalars[i] = make_adam_scalars(lr, beta1, beta2, eps, weight_decay, maximize, step_values[i], grad_factor);
  }
  launch.decay = weight_decay == 0.0 ? WeightDecayMode::kNone
                                     : (decoupled ? WeightDecayMode::kDecoupled : WeightDecayMode::kL2);
  launch.amsgrad = amsgrad;
  launch.scalars = scalars.data();
  pybind11::gil_scoped_release no_gil;
  adam_step(launch);
}

void rmsprop(const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
             const TensorList& grad_avgs, const TensorList& momentum_buffers, const TensorList& steps, double lr,
             double alpha, double eps, double weight_decay, double momentum, bool centered, bool maximize,
             double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
  TORCH_CHECK(!centered || grad_avgs.size() == params.size(), "fusedopt CPU backend: centered needs grad_avgs");
  TORCH_CHECK(momentum <= 0.0 || momentum_buffers.size() == params.size(),
              "fusedopt CPU backend: momentum needs momentum_buffers");
  RmspropLaunch launch{};
  const TensorList none;
  auto slots = make_slots(params, grads,
                          {&square_avgs, centered ? &grad_avgs : &none, momentum > 0.0 ? &momentum_buffers : &none},
                          masters, param_mode, launch.layout);
  check_steps(steps, params.size(), "CPU");
  set_rounding_keys(slots, advance_steps(steps), rounding_seed);
  launch.weight_decay = weight_decay != 0.0;
  launch.centered = centered;
  launch.momentum = momentum > 0.0;
  launch.scalars = make_rmsprop_scalars(lr, alpha, eps, weight_decay, momentum, maximize, grad_factor);
  pybind11::gil_scoped_release no_gil;
  rmsprop_step(launch);
}

void adagrad(const TensorList& params, const TensorList& grads, const TensorList& state_sums,
             const TensorList& steps, double lr, double lr_decay, double weight_decay, double eps, bool maximize,
             double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
  AdagradLaunch launch{};
  auto slots = make_slots(params, grads, {&state_sums}, masters, param_mode, launch.layout);
  check_steps(steps, params.size(), "CPU");
  const std::vector<double> step_values = advance_steps(steps);
  set_rounding_keys(slots, step_values, rounding_seed);
  std::vector<AdagradScalars<double>> scalars(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    scalars[i] = make_adagrad_scalars(lr, lr_decay, eps, weight_decay, maximize, step_values[i], grad_factor);
  }
  launch.weight_decay = weight_decay != 0.0;
  launch.scalars = scalars.data();
  pybind11::gil_scoped_release no_gil;
  adagrad_step(launch);
}

void stream(const TensorList& params, const TensorList& grads, const TensorList& states0, const TensorList& states1,
            const TensorList& states2) {
  StreamLaunch launch{};
  const auto slots = make_slots(params, grads, {&states0, &states1, &states2}, {}, 0, launch.layout);
  launch.num_states = static_cast<int>(!states0.empty()) + !states1.empty() + !states2.empty();
  TORCH_CHECK(launch.num_states == 0 || !states0.empty(), "fusedopt CPU backend: fill state lists in order");
  pybind11::gil_scoped_release no_gil;
  stream_step(launch);
}

}  // namespace
}  // namespace fusedopt::cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using TensorListDefault = std::vector<at::Tensor>;
  m.doc() = "fusedopt fused CPU optimizer kernels (OpenMP + SIMD)";
  m.def("adam", &fusedopt::cpu::adam, "Fused Adam/AdamW step over a bucket of tensors", py::arg("params"),
        py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"),
        py::arg("steps"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"),
        py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"), py::arg("decoupled"),
        py::arg("grad_factor") = 1.0, py::arg("masters") = TensorListDefault(), py::arg("param_mode") = 0,
        py::arg("rounding_seed") = 0);
  m.def("rmsprop", &fusedopt::cpu::rmsprop, "Fused RMSprop step over a bucket of tensors", py::arg("params"),
        py::arg("grads"), py::arg("square_avgs"), py::arg("grad_avgs"), py::arg("momentum_buffers"),
        py::arg("steps"), py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("momentum"), py::arg("centered"), py::arg("maximize"), py::arg("grad_factor") = 1.0,
        py::arg("masters") = TensorListDefault(), py::arg("param_mode") = 0, py::arg("rounding_seed") = 0);
  m.def("adagrad", &fusedopt::cpu::adagrad, "Fused Adagrad step over a bucket of tensors", py::arg("params"),
        py::arg("grads"), py::arg("state_sums"), py::arg("steps"), py::arg("lr"), py::arg("lr_decay"),
        py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"), py::arg("grad_factor") = 1.0,
        py::arg("masters") = TensorListDefault(), py::arg("param_mode") = 0, py::arg("rounding_seed") = 0);
  m.def("stream", &fusedopt::cpu::stream,
        "Roofline for the benchmark: an optimizer step's loads and stores with one add per element",
        py::arg("params"), py::arg("grads"), py::arg("states0"), py::arg("states1"), py::arg("states2"));
}
