// csrc/cpu/bindings_cpu.cpp -- Python binding of the fused CPU kernels (module fusedopt._cpu_ext).
//
// The only file of the CPU extension that includes torch. Given checked operands (csrc/common/operands.h, from
// the Python call or a step plan), it advances the step counters, computes the per-tensor scalars in double, and
// hands raw pointers to fused_cpu.cpp.
// Every check runs before the first write, so a rejected call leaves params, state and steps untouched.
// User-facing validation (messages worded like torch.optim's) happens earlier, in fusedopt/_optimizer.py;
// the checks here guard the kernel's own contract.
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../common/binding_utils.h"
#include "../common/operands.h"
#include "../common/python_module.h"
#include "../common/step_operands.h"
#include "fused_cpu.h"
#include "grad_norm.h"

namespace fusedopt::cpu {
namespace {

using binding::Operands;
static_assert(kMaxStateTensors == static_cast<int>(binding::kMaxStateColumns), "state slots of kernel and binding");
using binding::Sizes;
using binding::TensorList;

bool is_cpu(const at::Device& device) { return device.is_cpu(); }

// The kernel's view of checked operands (operands.h): addresses only, no tensor is touched here.
std::vector<TensorSlot> make_slots(const Operands& ops, LaunchLayout& layout) {
  const size_t n = ops.size();
  std::vector<TensorSlot> slots(n);
  for (size_t i = 0; i < n; ++i) {
    TensorSlot& slot = slots[i];
    slot.param = ops.params[i];
    slot.grad = ops.grads[i];
    slot.numel = ops.numels[i];
    // The CPU kernels address state by slot (RMSprop: square_avg, grad_avg, momentum_buffer), unused slots null.
    for (size_t k = 0; k < binding::kMaxStateColumns; ++k) {
      slot.state[k] = ops.states[k].empty() ? nullptr : ops.states[k][i];
    }
    slot.master = ops.masters.empty() ? nullptr : ops.masters[i];
    slot.rounding_key = 0;
    slot.decay_mode = 0;
  }
  layout.param_type = ops.param_type;
  layout.state_type = ops.state_type;
  layout.param_mode = ops.param_mode;
  check_layout(layout);
  layout.tensors = slots.data();
  layout.num_tensors = static_cast<int64_t>(n);
  layout.num_threads = at::get_num_threads();
  return slots;
}

// One optimizer step over checked operands: checks the group hyperparameters (nothing is modified before the last
// check), returns without a change when GradScaler's found_inf (CPU memory) is set, advances the step counters, fills
// the per-tensor scalars, decay modes and rounding keys (NOTE [stochastic rounding]: one key per tensor and step), and
// runs `run(layout, scalars)` without the GIL.
template <typename Hyper, typename Run>
void step(const Operands& ops, const Hyper& hyper, const Sizes& group_sizes, const binding::GradFactor& grad_factor,
          int64_t rounding_seed, const Run& run) {
  const binding::GroupIndex groups(group_sizes, ops.size(), "CPU");
  binding::check_per_group(groups, hyper);
  LaunchLayout layout{};
  auto slots = make_slots(ops, layout);
  if (grad_factor.found_inf != nullptr && *grad_factor.found_inf != 0.0f) return;
  const std::vector<double> step_values = ops.steps.advance();
  const std::vector<int32_t> decay_modes = binding::decay_modes(groups, hyper, ops.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    slots[i].decay_mode = decay_modes[i];
    if (layout.param_mode == ParamMode::kStochastic) {
      slots[i].rounding_key =
          rounding_key(static_cast<uint64_t>(rounding_seed), static_cast<uint64_t>(step_values[i]), i);
    }
  }
  // CPU memory: the device part of the grad factor is read here, once.
  const double factor = grad_factor.host * (grad_factor.device ? double{*grad_factor.device} : 1.0);
  const auto scalars =
      binding::per_tensor_scalars(groups, binding::per_group_hyper(groups, hyper, factor), step_values);
  pybind11::gil_scoped_release no_gil;
  run(layout, scalars.data());
}

void adam(const Operands& ops, const binding::AdamHyperparameters& hyper, const Sizes& group_sizes, bool amsgrad,
          const binding::GradFactor& grad_factor, int64_t rounding_seed) {
  step(ops, hyper, group_sizes, grad_factor, rounding_seed,
       [&](const LaunchLayout& layout, const AdamScalars<double>* scalars) {
         adam_step(AdamLaunch{layout, amsgrad, scalars});
       });
}

void rmsprop(const Operands& ops, const binding::RmspropHyperparameters& hyper, const Sizes& group_sizes, bool centered,
             bool momentum, const binding::GradFactor& grad_factor, int64_t rounding_seed) {
  step(ops, hyper, group_sizes, grad_factor, rounding_seed,
       [&](const LaunchLayout& layout, const RmspropScalars<double>* scalars) {
         rmsprop_step(RmspropLaunch{layout, centered, momentum, scalars});
       });
}

void adagrad(const Operands& ops, const binding::AdagradHyperparameters& hyper, const Sizes& group_sizes,
             const binding::GradFactor& grad_factor, int64_t rounding_seed) {
  step(ops, hyper, group_sizes, grad_factor, rounding_seed,
       [&](const LaunchLayout& layout, const AdagradScalars<double>* scalars) {
         adagrad_step(AdagradLaunch{layout, scalars});
       });
}

void stream(const TensorList& params, const TensorList& grads, const TensorList& states0, const TensorList& states1,
            const TensorList& states2) {
  if (params.empty()) return;
  TORCH_CHECK(!states1.empty() <= !states0.empty() && !states2.empty() <= !states1.empty(),
              "fusedopt CPU backend: fill state lists in order");
  const Operands ops = binding::check_operands("CPU", params, grads, {&states0, &states1, &states2}, {}, {}, 0, is_cpu,
                                               binding::StepPlace::kHost);
  StreamLaunch launch{};
  const auto slots = make_slots(ops, launch.layout);
  launch.num_states = static_cast<int>(ops.used_states().size());
  pybind11::gil_scoped_release no_gil;
  stream_step(launch);
}

// NOTE [step plan] for the Triton kernels (triton_kernels/_plan.py), which have no binding of their own: a plan's
// params, the params that had no grad, their element counts and the dtype and device of the launch, kept in C++
// so that a planned step converts no Python list of them.
class GradAddresses {
 public:
  GradAddresses(TensorList params, TensorList absent, std::vector<int64_t> numels, const at::Tensor& like, bool pinned)
      : params_(std::move(params)),
        absent_(std::move(absent)),
        numels_(std::move(numels)),
        dtype_(like.scalar_type()),
        device_(like.device()),
        pinned_(pinned) {
    TORCH_CHECK(numels_.size() == params_.size(), "fusedopt GradAddresses: ", params_.size(), " params but ",
                numels_.size(), " sizes");
  }

  // The addresses of the params (row 0) and their grads (row 1; 0 where a grad is None; rows of even length, the
  // last entry 0 when the count is odd) as an int64 CPU tensor, pinned when asked (for an asynchronous upload), the
  // indices of the params whose grad is None, and whether every address is a multiple of 16 bytes (the kernels'
  // vector accesses need it), when every grad (each param's .grad, or for DTensor params `local_grads`, the local
  // shards of their grads, with `local_params`) passes binding::gather_grads; nothing otherwise. Reads only tensor
  // metadata, on any device.
  std::optional<std::tuple<at::Tensor, std::vector<size_t>, bool>> gather(
      const std::optional<TensorList>& local_params,
      const std::optional<std::vector<std::optional<at::Tensor>>>& local_grads) const {
    const TensorList grads = binding::checked_local_grads(local_params, local_grads, "GradAddresses");
    const TensorList& params = local_params.has_value() ? *local_params : params_;
    const size_t n = params.size();
    std::vector<void*> param_addresses(n);
    std::vector<const void*> grad_addresses;
    std::vector<size_t> without_grad;
    if (!binding::gather_grads(params, absent_, dtype_, device_, numels_, param_addresses, grad_addresses,
                               local_grads.has_value() ? &grads : nullptr, &without_grad)) {
      return std::nullopt;
    }
    // An even row length, so that the grad row starts on a 16-byte boundary as the param row does (Triton
    // specializes pointer arguments on it: multi_tensor.even_columns in triton_kernels/_launch.py).
    const size_t row_length = n + n % 2;
    at::Tensor rows =
        at::zeros({2, static_cast<int64_t>(row_length)}, at::TensorOptions().dtype(at::kLong).pinned_memory(pinned_));
    int64_t* out = rows.data_ptr<int64_t>();
    int64_t address_bits = 0;
    for (size_t i = 0; i < n; ++i) {
      out[i] = reinterpret_cast<int64_t>(param_addresses[i]);
      out[row_length + i] = reinterpret_cast<int64_t>(grad_addresses[i]);
      address_bits |= out[i] | out[row_length + i];
    }
    return std::make_tuple(std::move(rows), std::move(without_grad), address_bits % 16 == 0);
  }

  // NOTE [planned zero_grad]
  void clear_grads() const { binding::clear_grads(params_, absent_); }

  // The grads of the plan's params that have one, in order (binding::present_grads).
  TensorList grads() const { return binding::present_grads(params_); }

 private:
  TensorList params_;
  TensorList absent_;
  std::vector<int64_t> numels_;
  at::ScalarType dtype_;
  at::Device device_;
  bool pinned_;
};

// The norms of CPU tensors of one dtype (float64, one per tensor): the 2-norm, or the largest magnitude when
// `norm_type` is infinite, in one pass over all of them (fusedopt/clip.py). Nothing when a tensor is not a plain,
// dense, contiguous CPU tensor of the first one's dtype: the caller then asks torch.
std::optional<at::Tensor> norms_of(const TensorList& tensors, double norm_type) {
  TORCH_CHECK(norm_type == 2.0 || norm_type == std::numeric_limits<double>::infinity(),
              "fusedopt tensor_norms: norm_type must be 2 or inf, got ", norm_type);
  const size_t n = tensors.size();
  at::Tensor norms = at::empty({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kDouble));
  if (n == 0) return norms;
  const at::ScalarType dtype = tensors[0].scalar_type();
  std::vector<const void*> data(n);
  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    if (binding::dispatches_to_python(t) || !t.has_storage() || t.layout() != at::kStrided || !t.device().is_cpu() ||
        t.scalar_type() != dtype || !t.is_contiguous()) {
      return std::nullopt;
    }
    data[i] = t.data_ptr();
    numels[i] = t.numel();
  }
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kBFloat16 && dtype != at::kHalf) return std::nullopt;
  const NormLaunch launch{binding::storage_type_of(tensors[0], "CPU", "tensor"),
                          data.data(),
                          numels.data(),
                          static_cast<int64_t>(n),
                          norm_type != 2.0,
                          at::get_num_threads()};
  pybind11::gil_scoped_release no_gil;
  tensor_norms(launch, norms.data_ptr<double>());
  return norms;
}

}  // namespace
}  // namespace fusedopt::cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fusedopt fused CPU optimizer kernels (OpenMP + SIMD)";
  fusedopt::binding::define_optimizers<&fusedopt::cpu::adam, &fusedopt::cpu::rmsprop, &fusedopt::cpu::adagrad,
                                       &fusedopt::cpu::is_cpu, fusedopt::binding::StepPlace::kHost>(m, "CPU");
  m.def("stream", &fusedopt::cpu::stream,
        "Roofline for the benchmark: an optimizer step's loads and stores with one add per element", py::arg("params"),
        py::arg("grads"), py::arg("states0"), py::arg("states1"), py::arg("states2"));
  py::class_<fusedopt::cpu::GradAddresses>(m, "GradAddresses",
                                           "NOTE [step plan] for the Triton kernels: a plan's params, kept in C++")
      .def(py::init<fusedopt::binding::TensorList, fusedopt::binding::TensorList, std::vector<int64_t>,
                    const at::Tensor&, bool>(),
           py::arg("params"), py::arg("absent"), py::arg("numels"), py::arg("like"), py::arg("pinned"))
      .def("gather", &fusedopt::cpu::GradAddresses::gather,
           "The params' and grads' addresses, which params have no grad and whether all addresses are 16-byte "
           "aligned, when every grad fits the plan; None otherwise",
           py::arg("local_params") = py::none(), py::arg("local_grads") = py::none())
      .def("clear_grads", &fusedopt::cpu::GradAddresses::clear_grads,
           "Sets the grad of every planned and absent param to None (NOTE [planned zero_grad])")
      .def("grads", &fusedopt::cpu::GradAddresses::grads, "The grads of the plan's params that have one, in order");
  m.def("tensor_norms", &fusedopt::cpu::norms_of,
        "Each tensor's 2-norm or infinity norm (float64), in one pass over CPU tensors of one dtype; None when a "
        "tensor is not a dense, contiguous CPU tensor of that dtype",
        py::arg("tensors"), py::arg("norm_type"));
}
