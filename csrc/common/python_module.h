// csrc/common/python_module.h -- the Python signatures of the optimizer entry points, defined once for the CPU
// and the CUDA module: both take the same arguments under the same names (fusedopt/functional.py calls them).
//
// Hyperparameters are lists with one value per param group and group_sizes says how many of the tensors belong to
// each group (NOTE [param groups in one launch] in binding_utils.h). Each entry point also has a `_planned` twin
// taking its operands from a StepOperands kept across steps (NOTE [step plan] in step_operands.h). Either way the
// backend's entry point receives checked Operands (operands.h).
#pragma once

#include <torch/extension.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "binding_utils.h"
#include "operands.h"
#include "step_operands.h"

namespace fusedopt::binding {

using Values = std::vector<double>;
using Flags = std::vector<bool>;
using Sizes = std::vector<int64_t>;

using AdamEntry = void (*)(const Operands&, const AdamHyperparameters&, const Sizes&, bool amsgrad,
                           const GradFactor& grad_factor, int64_t rounding_seed);
using RmspropEntry = void (*)(const Operands&, const RmspropHyperparameters&, const Sizes&, bool centered,
                              bool momentum, const GradFactor& grad_factor, int64_t rounding_seed);
using AdagradEntry = void (*)(const Operands&, const AdagradHyperparameters&, const Sizes&,
                              const GradFactor& grad_factor, int64_t rounding_seed);
using DevicePredicate = bool (*)(const at::Device&);

// NOTE [grad factor] with a device part: GradScaler's 1/scale and the clip coefficient of max_grad_norm stay on the
// params' device as a one-element float32 tensor, which the kernels read (no host synchronisation on a GPU).
// GradScaler's found_inf comes the same way: the kernels (or, for CPU memory, the binding) read it.
inline GradFactor grad_factor_of(double host, const std::optional<at::Tensor>& device,
                                 const std::optional<at::Tensor>& found_inf, const Operands& ops, const char* backend) {
  auto address = [&](const std::optional<at::Tensor>& value, const char* name) -> const float* {
    if (!value.has_value() || !value->defined()) return nullptr;
    TORCH_CHECK(value->numel() == 1 && value->scalar_type() == at::kFloat && value->device() == ops.device, "fusedopt ",
                backend, " backend: ", name, " must be a one-element float32 tensor on ", ops.device);
    return value->data_ptr<float>();
  };
  return {host, address(device, "device_grad_factor"), address(found_inf, "found_inf")};
}

// Checks that exactly the state slots an update reads are filled.
inline void require_states(const Operands& ops, const char* backend, const std::array<bool, kMaxStateColumns>& used) {
  for (size_t k = 0; k < kMaxStateColumns; ++k) {
    TORCH_CHECK(ops.states[k].empty() != used[k], "fusedopt ", backend, " backend: state list ", k, " is ",
                used[k] ? "missing" : "given but not used by these options");
  }
}

// Defines adam, rmsprop and adagrad (and their _planned twins, and StepOperands) on `module`, each forwarding to
// the backend's entry point. `backend` names the backend in messages; `kDeviceOk` accepts its devices; `kStepPlace`
// says where its step counters live.
template <AdamEntry kAdam, RmspropEntry kRmsprop, AdagradEntry kAdagrad, DevicePredicate kDeviceOk,
          StepPlace kStepPlace>
void define_optimizers(pybind11::module_& module, const char* backend) {
  namespace py = pybind11;
  const std::string doc = std::string(" step over ") + backend + " tensors (one launch for all param groups)";
  module.def(
      "adam",
      [backend](const TensorList& params, const TensorList& grads, const TensorList& exp_avgs,
                const TensorList& exp_avg_sqs, const TensorList& max_exp_avg_sqs, const TensorList& steps, Values lr,
                Values beta1, Values beta2, Values weight_decay, Values eps, Flags maximize, Flags decoupled,
                const Sizes& group_sizes, bool amsgrad, double grad_factor,
                const std::optional<at::Tensor>& device_grad_factor, const std::optional<at::Tensor>& found_inf,
                const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
        if (params.empty()) return;
        const Operands ops = check_operands(backend, params, grads, {&exp_avgs, &exp_avg_sqs, &max_exp_avg_sqs}, steps,
                                            masters, param_mode, kDeviceOk, kStepPlace);
        require_states(ops, backend, {true, true, amsgrad});
        const AdamHyperparameters hyper{std::move(lr),           std::move(beta1), std::move(beta2),
                                        std::move(weight_decay), std::move(eps),   std::move(maximize),
                                        std::move(decoupled)};
        kAdam(ops, hyper, group_sizes, amsgrad,
              grad_factor_of(grad_factor, device_grad_factor, found_inf, ops, backend), rounding_seed);
      },
      ("Fused Adam/AdamW" + doc).c_str(), py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
      py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("steps"), py::kw_only(), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
      py::arg("decoupled"), py::arg("group_sizes"), py::arg("amsgrad"), py::arg("grad_factor"),
      py::arg("device_grad_factor"), py::arg("found_inf"), py::arg("masters"), py::arg("param_mode"),
      py::arg("rounding_seed"));
  module.def(
      "rmsprop",
      [backend](const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
                const TensorList& grad_avgs, const TensorList& momentum_buffers, const TensorList& steps, Values lr,
                Values alpha, Values eps, Values weight_decay, Values momentum, Flags maximize,
                const Sizes& group_sizes, bool centered, bool use_momentum, double grad_factor,
                const std::optional<at::Tensor>& device_grad_factor, const std::optional<at::Tensor>& found_inf,
                const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
        if (params.empty()) return;
        const Operands ops = check_operands(backend, params, grads, {&square_avgs, &grad_avgs, &momentum_buffers},
                                            steps, masters, param_mode, kDeviceOk, kStepPlace);
        require_states(ops, backend, {true, centered, use_momentum});
        const RmspropHyperparameters hyper{std::move(lr),           std::move(alpha),    std::move(eps),
                                           std::move(weight_decay), std::move(momentum), std::move(maximize)};
        kRmsprop(ops, hyper, group_sizes, centered, use_momentum,
                 grad_factor_of(grad_factor, device_grad_factor, found_inf, ops, backend), rounding_seed);
      },
      ("Fused RMSprop" + doc).c_str(), py::arg("params"), py::arg("grads"), py::arg("square_avgs"),
      py::arg("grad_avgs"), py::arg("momentum_buffers"), py::arg("steps"), py::kw_only(), py::arg("lr"),
      py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"), py::arg("maximize"),
      py::arg("group_sizes"), py::arg("centered"), py::arg("use_momentum"), py::arg("grad_factor"),
      py::arg("device_grad_factor"), py::arg("found_inf"), py::arg("masters"), py::arg("param_mode"),
      py::arg("rounding_seed"));
  module.def(
      "adagrad",
      [backend](const TensorList& params, const TensorList& grads, const TensorList& state_sums,
                const TensorList& steps, Values lr, Values lr_decay, Values weight_decay, Values eps, Flags maximize,
                const Sizes& group_sizes, double grad_factor, const std::optional<at::Tensor>& device_grad_factor,
                const std::optional<at::Tensor>& found_inf, const TensorList& masters, int64_t param_mode,
                int64_t rounding_seed) {
        if (params.empty()) return;
        const Operands ops =
            check_operands(backend, params, grads, {&state_sums}, steps, masters, param_mode, kDeviceOk, kStepPlace);
        require_states(ops, backend, {true, false, false});
        const AdagradHyperparameters hyper{std::move(lr), std::move(lr_decay), std::move(weight_decay), std::move(eps),
                                           std::move(maximize)};
        kAdagrad(ops, hyper, group_sizes, grad_factor_of(grad_factor, device_grad_factor, found_inf, ops, backend),
                 rounding_seed);
      },
      ("Fused Adagrad" + doc).c_str(), py::arg("params"), py::arg("grads"), py::arg("state_sums"), py::arg("steps"),
      py::kw_only(), py::arg("lr"), py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
      py::arg("group_sizes"), py::arg("grad_factor"), py::arg("device_grad_factor"), py::arg("found_inf"),
      py::arg("masters"), py::arg("param_mode"), py::arg("rounding_seed"));

  // NOTE [step plan]: the same steps over operands kept across steps; the Python class is local to each module,
  // so the CPU and the CUDA module can both be loaded.
  py::class_<StepOperands>(module, "StepOperands", py::module_local())
      .def(py::init([backend](TensorList params, const std::vector<TensorList>& columns, const TensorList& steps,
                              const TensorList& masters, Sizes group_sizes, int64_t param_mode, TensorList absent,
                              const std::optional<TensorList>& local_grads) {
             return new StepOperands(backend, std::move(params), columns, steps, masters, std::move(group_sizes),
                                     param_mode, std::move(absent), local_grads, kDeviceOk, kStepPlace);
           }),
           py::arg("params"), py::arg("columns"), py::arg("steps"), py::arg("masters"), py::arg("group_sizes"),
           py::arg("param_mode"), py::arg("absent"), py::arg("local_grads") = py::none())
      .def("gather_grads", &StepOperands::gather_grads,
           "Reads every parameter and its grad (or checks the given local shards of DTensor params and grads, None "
           "for a grad that is None); False when the regular step must run instead",
           py::arg("local_params") = py::none(), py::arg("local_grads") = py::none())
      .def("clear_grads", &StepOperands::clear_grads,
           "Sets the grad of every planned and absent param to None (NOTE [planned zero_grad])")
      .def("grads", &StepOperands::grads, "The grads of the planned params that have one, in order");
  module.def(
      "adam_planned",
      [backend](StepOperands& planned, Values lr, Values beta1, Values beta2, Values weight_decay, Values eps,
                Flags maximize, Flags decoupled, bool amsgrad, double grad_factor,
                const std::optional<at::Tensor>& device_grad_factor, const std::optional<at::Tensor>& found_inf,
                int64_t rounding_seed) {
        const Operands& ops = planned.take();
        if (ops.size() == 0) return;  // no planned parameter has a grad this time
        require_states(ops, backend, {true, true, amsgrad});
        const AdamHyperparameters hyper{std::move(lr),           std::move(beta1), std::move(beta2),
                                        std::move(weight_decay), std::move(eps),   std::move(maximize),
                                        std::move(decoupled)};
        kAdam(ops, hyper, planned.group_sizes(), amsgrad,
              grad_factor_of(grad_factor, device_grad_factor, found_inf, ops, backend), rounding_seed);
      },
      "Fused Adam/AdamW step over planned operands", py::arg("operands"), py::kw_only(), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
      py::arg("decoupled"), py::arg("amsgrad"), py::arg("grad_factor"), py::arg("device_grad_factor"),
      py::arg("found_inf"), py::arg("rounding_seed"));
  module.def(
      "rmsprop_planned",
      [backend](StepOperands& planned, Values lr, Values alpha, Values eps, Values weight_decay, Values momentum,
                Flags maximize, bool centered, double grad_factor, const std::optional<at::Tensor>& device_grad_factor,
                const std::optional<at::Tensor>& found_inf, int64_t rounding_seed) {
        const Operands& ops = planned.take();
        if (ops.size() == 0) return;  // no planned parameter has a grad this time
        const bool use_momentum = !ops.states[2].empty();
        require_states(ops, backend, {true, centered, use_momentum});
        const RmspropHyperparameters hyper{std::move(lr),           std::move(alpha),    std::move(eps),
                                           std::move(weight_decay), std::move(momentum), std::move(maximize)};
        kRmsprop(ops, hyper, planned.group_sizes(), centered, use_momentum,
                 grad_factor_of(grad_factor, device_grad_factor, found_inf, ops, backend), rounding_seed);
      },
      "Fused RMSprop step over planned operands", py::arg("operands"), py::kw_only(), py::arg("lr"), py::arg("alpha"),
      py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"), py::arg("maximize"), py::arg("centered"),
      py::arg("grad_factor"), py::arg("device_grad_factor"), py::arg("found_inf"), py::arg("rounding_seed"));
  module.def(
      "adagrad_planned",
      [backend](StepOperands& planned, Values lr, Values lr_decay, Values weight_decay, Values eps, Flags maximize,
                double grad_factor, const std::optional<at::Tensor>& device_grad_factor,
                const std::optional<at::Tensor>& found_inf, int64_t rounding_seed) {
        const Operands& ops = planned.take();
        if (ops.size() == 0) return;  // no planned parameter has a grad this time
        require_states(ops, backend, {true, false, false});
        const AdagradHyperparameters hyper{std::move(lr), std::move(lr_decay), std::move(weight_decay), std::move(eps),
                                           std::move(maximize)};
        kAdagrad(ops, hyper, planned.group_sizes(),
                 grad_factor_of(grad_factor, device_grad_factor, found_inf, ops, backend), rounding_seed);
      },
      "Fused Adagrad step over planned operands", py::arg("operands"), py::kw_only(), py::arg("lr"),
      py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"), py::arg("grad_factor"),
      py::arg("device_grad_factor"), py::arg("found_inf"), py::arg("rounding_seed"));
}

}  // namespace fusedopt::binding
