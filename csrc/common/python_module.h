// csrc/common/python_module.h -- the Python signatures of the optimizer entry points, defined once for the CPU
// and the CUDA module: both take the same arguments under the same names (fusedopt/functional.py calls them).
//
// Hyperparameters are lists with one value per param group and group_sizes says how many of the tensors belong to
// each group (NOTE [param groups in one launch] in binding_utils.h). Each entry point also has a `_planned` twin
// taking its operands from a StepOperands kept across steps (NOTE [step plan] in step_operands.h).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <vector>

#include "binding_utils.h"
#include "step_operands.h"

namespace fusedopt::binding {

using Values = std::vector<double>;
using Flags = std::vector<bool>;
using Sizes = std::vector<int64_t>;

// The backends' entry points; the last argument says whether StepOperands checked the operands (NOTE [step plan]).
using AdamEntry = void (*)(const TensorList&, const TensorList&, const TensorList&, const TensorList&,
                           const TensorList&, const TensorList&, const AdamHyperparameters&, const Sizes&, bool,
                           double, const TensorList&, int64_t, int64_t, bool);
using RmspropEntry = void (*)(const TensorList&, const TensorList&, const TensorList&, const TensorList&,
                              const TensorList&, const TensorList&, const RmspropHyperparameters&, const Sizes&,
                              bool, bool, double, const TensorList&, int64_t, int64_t, bool);
using AdagradEntry = void (*)(const TensorList&, const TensorList&, const TensorList&, const TensorList&,
                              const AdagradHyperparameters&, const Sizes&, double, const TensorList&, int64_t,
                              int64_t, bool);

// Defines adam, rmsprop and adagrad on `module`, each forwarding to the backend's entry point.
template <AdamEntry kAdam, RmspropEntry kRmsprop, AdagradEntry kAdagrad>
void define_optimizers(pybind11::module_& module, const char* device_words) {
  namespace py = pybind11;
  const auto operands_doc = std::string(" step over ") + device_words + " (one launch for all param groups)";
  module.def(
      "adam",
      [](const TensorList& params, const TensorList& grads, const TensorList& exp_avgs, const TensorList& exp_avg_sqs,
         const TensorList& max_exp_avg_sqs, const TensorList& steps, Values lr, Values beta1, Values beta2,
         Values weight_decay, Values eps, Flags maximize, Flags decoupled, const Sizes& group_sizes, bool amsgrad,
         double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
        const AdamHyperparameters hyper{std::move(lr),  std::move(beta1),    std::move(beta2),    std::move(weight_decay),
                                        std::move(eps), std::move(maximize), std::move(decoupled)};
        kAdam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, hyper, group_sizes, amsgrad, grad_factor,
              masters, param_mode, rounding_seed, false);
      },
      ("Fused Adam/AdamW" + operands_doc).c_str(), py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
      py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"), py::arg("steps"), py::kw_only(), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
      py::arg("decoupled"), py::arg("group_sizes"), py::arg("amsgrad"), py::arg("grad_factor"), py::arg("masters"),
      py::arg("param_mode"), py::arg("rounding_seed"));
  module.def(
      "rmsprop",
      [](const TensorList& params, const TensorList& grads, const TensorList& square_avgs,
         const TensorList& grad_avgs, const TensorList& momentum_buffers, const TensorList& steps, Values lr,
         Values alpha, Values eps, Values weight_decay, Values momentum, Flags maximize, const Sizes& group_sizes,
         bool centered, bool use_momentum, double grad_factor, const TensorList& masters, int64_t param_mode,
         int64_t rounding_seed) {
        const RmspropHyperparameters hyper{std::move(lr),           std::move(alpha),    std::move(eps),
                                           std::move(weight_decay), std::move(momentum), std::move(maximize)};
        kRmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, hyper, group_sizes, centered,
                 use_momentum, grad_factor, masters, param_mode, rounding_seed, false);
      },
      ("Fused RMSprop" + operands_doc).c_str(), py::arg("params"), py::arg("grads"), py::arg("square_avgs"),
      py::arg("grad_avgs"), py::arg("momentum_buffers"), py::arg("steps"), py::kw_only(), py::arg("lr"),
      py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"), py::arg("maximize"),
      py::arg("group_sizes"), py::arg("centered"), py::arg("use_momentum"), py::arg("grad_factor"),
      py::arg("masters"), py::arg("param_mode"), py::arg("rounding_seed"));
  module.def(
      "adagrad",
      [](const TensorList& params, const TensorList& grads, const TensorList& state_sums, const TensorList& steps,
         Values lr, Values lr_decay, Values weight_decay, Values eps, Flags maximize, const Sizes& group_sizes,
         double grad_factor, const TensorList& masters, int64_t param_mode, int64_t rounding_seed) {
        const AdagradHyperparameters hyper{std::move(lr), std::move(lr_decay), std::move(weight_decay),
                                           std::move(eps), std::move(maximize)};
        kAdagrad(params, grads, state_sums, steps, hyper, group_sizes, grad_factor, masters, param_mode,
                 rounding_seed, false);
      },
      ("Fused Adagrad" + operands_doc).c_str(), py::arg("params"), py::arg("grads"), py::arg("state_sums"),
      py::arg("steps"), py::kw_only(), py::arg("lr"), py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"),
      py::arg("maximize"), py::arg("group_sizes"), py::arg("grad_factor"), py::arg("masters"), py::arg("param_mode"),
      py::arg("rounding_seed"));

  // NOTE [step plan]: the same steps over operands kept across steps; the Python class is local to each module,
  // so the CPU and the CUDA module can both be loaded.
  py::class_<StepOperands>(module, "StepOperands", py::module_local())
      .def(py::init<TensorList, std::vector<TensorList>, TensorList, TensorList, Sizes, int64_t, TensorList>(),
           py::arg("params"), py::arg("columns"), py::arg("steps"), py::arg("masters"), py::arg("group_sizes"),
           py::arg("param_mode"), py::arg("absent"))
      .def("gather_grads", &StepOperands::gather_grads,
           "Reads every parameter's grad; False when the regular step must run instead")
      .def("release_grads", &StepOperands::release_grads);
  module.def(
      "adam_planned",
      [](StepOperands& ops, Values lr, Values beta1, Values beta2, Values weight_decay, Values eps, Flags maximize,
         Flags decoupled, bool amsgrad, double grad_factor, int64_t rounding_seed) {
        const GatheredGrads gathered(ops);
        const AdamHyperparameters hyper{std::move(lr),  std::move(beta1),    std::move(beta2),    std::move(weight_decay),
                                        std::move(eps), std::move(maximize), std::move(decoupled)};
        kAdam(ops.params(), ops.grads(), ops.column(0), ops.column(1), ops.column(2), ops.steps(), hyper,
              ops.group_sizes(), amsgrad, grad_factor, ops.masters(), ops.param_mode(), rounding_seed, true);
      },
      "Fused Adam/AdamW step over planned operands", py::arg("operands"), py::kw_only(), py::arg("lr"),
      py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"),
      py::arg("decoupled"), py::arg("amsgrad"), py::arg("grad_factor"), py::arg("rounding_seed"));
  module.def(
      "rmsprop_planned",
      [](StepOperands& ops, Values lr, Values alpha, Values eps, Values weight_decay, Values momentum, Flags maximize,
         bool centered, double grad_factor, int64_t rounding_seed) {
        const GatheredGrads gathered(ops);
        const RmspropHyperparameters hyper{std::move(lr),           std::move(alpha),    std::move(eps),
                                           std::move(weight_decay), std::move(momentum), std::move(maximize)};
        kRmsprop(ops.params(), ops.grads(), ops.column(0), ops.column(1), ops.column(2), ops.steps(), hyper,
                 ops.group_sizes(), centered, !ops.column(2).empty(), grad_factor, ops.masters(), ops.param_mode(),
                 rounding_seed, true);
      },
      "Fused RMSprop step over planned operands", py::arg("operands"), py::kw_only(), py::arg("lr"), py::arg("alpha"),
      py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"), py::arg("maximize"), py::arg("centered"),
      py::arg("grad_factor"), py::arg("rounding_seed"));
  module.def(
      "adagrad_planned",
      [](StepOperands& ops, Values lr, Values lr_decay, Values weight_decay, Values eps, Flags maximize,
         double grad_factor, int64_t rounding_seed) {
        const GatheredGrads gathered(ops);
        const AdagradHyperparameters hyper{std::move(lr), std::move(lr_decay), std::move(weight_decay),
                                           std::move(eps), std::move(maximize)};
        kAdagrad(ops.params(), ops.grads(), ops.column(0), ops.steps(), hyper, ops.group_sizes(), grad_factor,
                 ops.masters(), ops.param_mode(), rounding_seed, true);
      },
      "Fused Adagrad step over planned operands", py::arg("operands"), py::kw_only(), py::arg("lr"),
      py::arg("lr_decay"), py::arg("weight_decay"), py::arg("eps"), py::arg("maximize"), py::arg("grad_factor"),
      py::arg("rounding_seed"));
}

}  // namespace fusedopt::binding
