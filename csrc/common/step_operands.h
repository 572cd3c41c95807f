// csrc/common/step_operands.h -- the operands of one fused call, kept across steps (NOTE [step plan]).
//
// NOTE [step plan]: torch.optim walks its param groups in Python at every step, and so would fusedopt: for 1,000
// tensors that costs about 2 ms of host time, longer than the kernels of a large model take on a GPU. After a
// regular step, fusedopt/_step_plan.py keeps each fused call's operands in a StepOperands: the params as C++
// tensors, and the addresses of their state, masters and step counters, which live in fusedopt's own buffers and
// do not move (operands.h). A later step then only reads every parameter and its .grad here, in C++, checks that
// each grad is dense, contiguous and like its parameter, and that the parameters that had no grad still have none,
// and calls the same entry point as the regular path. A planned parameter whose grad is None this time is left out
// of this step's call, as torch.optim skips it (its state and step counter stay as they are): models whose
// parameters do not all get a grad at every step (mixture-of-experts layers whose experts get no tokens, task
// heads used in turns) keep their plan. Anything else (a grad appeared for a parameter that had none, a dtype
// changed) makes gather_grads() return false, and the step takes the regular path, which validates with
// torch.optim's messages and builds a new plan. Only the grads' addresses are kept, for the one step, so
// zero_grad(set_to_none=True) frees them as usual (on a GPU, stream order protects the launched kernel).
//
// FSDP2's parameters are DTensors, whose memory is their local shard (a Python attribute): for them Python hands
// each step's local params and local grads in (`params` and `grads` below), and the same checks run on those.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "operands.h"

namespace fusedopt::binding {

// NOTE [step plan]'s check of one step's grads: every `absent` parameter still has no grad, every param still has
// `dtype`, its planned element count and address (`param_addresses`; a `param.data = other` moves it), is
// contiguous on `device`, and has a grad that is dense, contiguous and like it: its .grad, or `grads[i]` when
// `grads` is given (DTensor shards; an undefined tensor where the grad is None). With `without_grad`, a param whose
// grad is None is listed there (ascending) instead of failing the check. Fills `grad_addresses` (null for a param
// without a grad) and returns true when all hold; reads nothing but tensor metadata.
inline bool gather_grads(const TensorList& params, const TensorList& absent, at::ScalarType dtype,
                         const at::Device& device, const std::vector<int64_t>& numels,
                         std::vector<void*>& param_addresses, std::vector<const void*>& grad_addresses,
                         const TensorList* grads = nullptr, std::vector<size_t>* without_grad = nullptr) {
  if (params.size() != numels.size() || (grads != nullptr && grads->size() != params.size())) return false;
  for (const at::Tensor& param : absent) {
    if (param.grad().defined()) return false;
  }
  if (without_grad != nullptr) without_grad->clear();
  grad_addresses.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    if (param.scalar_type() != dtype || param.numel() != numels[i] || !param.is_contiguous() ||
        param.device() != device) {
      return false;
    }
    param_addresses[i] = param.data_ptr();
    const at::Tensor& grad = grads != nullptr ? (*grads)[i] : param.grad();  // both lvalues: no copy
    if (!grad.defined() && without_grad != nullptr) {
      without_grad->push_back(i);
      grad_addresses[i] = nullptr;
      continue;
    }
    if (!grad.defined() || grad.layout() != at::kStrided || grad.scalar_type() != dtype || grad.device() != device ||
        !grad.is_contiguous() || !grad.sizes().equals(param.sizes()) || dispatches_to_python(grad)) {
      return false;
    }
    grad_addresses[i] = grad.const_data_ptr();
  }
  return true;
}

// NOTE [planned zero_grad]: optimizer.zero_grad() with set_to_none over a plan's params, planned and absent. For a
// plain tensor, Python's `p.grad = None` drops the grad reference and does nothing else (THPVariable_set_grad);
// this does it in one C++ loop over the tensors a plan holds, instead of a Python loop over param groups. Callers
// keep DTensor plans (which hold local shards) and tensor subclasses (whose grad setter may dispatch to Python) to
// torch.optim's zero_grad (fusedopt/_step_plan.py).
inline void clear_grads(const TensorList& params, const TensorList& absent) {
  for (const at::Tensor& param : params) param.mutable_grad().reset();
  for (const at::Tensor& param : absent) param.mutable_grad().reset();
}

// The grads of `params` that are not None, in order: a planned step's grads for max_grad_norm's norm, read in one C++
// loop (a Python loop over 1,000 params' .grad took 109 us on this CPU, more than the rest of the planned step).
inline TensorList present_grads(const TensorList& params) {
  TensorList grads;
  grads.reserve(params.size());
  for (const at::Tensor& param : params) {
    const at::Tensor& grad = param.grad();
    if (grad.defined()) grads.push_back(grad);
  }
  return grads;
}

// A planned step's local grads of DTensor params, handed in from Python with None where a parameter has no grad, as
// the list gather_grads reads (undefined tensors for "no grad"; empty when none are given), after checking that
// local params and local grads come together (`who` names the caller in the message).
inline TensorList checked_local_grads(const std::optional<TensorList>& local_params,
                                      const std::optional<std::vector<std::optional<at::Tensor>>>& local_grads,
                                      const char* who) {
  TORCH_CHECK(local_params.has_value() == local_grads.has_value(), "fusedopt ", who,
              ": local params and local grads come together");
  TensorList out;
  if (!local_grads.has_value()) return out;
  out.reserve(local_grads->size());
  for (const auto& grad : *local_grads) out.push_back(grad.value_or(at::Tensor()));
  return out;
}

class StepOperands {
 public:
  // `columns` are the state lists in the entry point's slot order, an empty list for a slot the call does not use;
  // `absent` are the optimizer's parameters that had no grad when the plan was made. Every param must have a grad
  // now (its .grad, or `local_grads[i]` for DTensor shards): the plan is made right after a regular step over
  // exactly these tensors, and checked once more here.
  StepOperands(const char* backend, TensorList params, const std::vector<TensorList>& columns, const TensorList& steps,
               const TensorList& masters, std::vector<int64_t> group_sizes, int64_t param_mode, TensorList absent,
               const std::optional<TensorList>& local_grads, bool (*device_ok)(const at::Device&), StepPlace step_place)
      : params_(std::move(params)), group_sizes_(std::move(group_sizes)), absent_(std::move(absent)) {
    TORCH_CHECK(!local_grads.has_value() || local_grads->size() == params_.size(),
                "fusedopt StepOperands: ", params_.size(), " params but ",
                local_grads.has_value() ? local_grads->size() : 0, " grads");
    TensorList grads;
    for (size_t i = 0; i < params_.size(); ++i) {
      grads.push_back(local_grads.has_value() ? (*local_grads)[i] : params_[i].grad());
      TORCH_CHECK(grads.back().defined(), "fusedopt StepOperands: params[", i, "] has no grad");
    }
    std::vector<const TensorList*> states;
    for (const TensorList& column : columns) states.push_back(&column);
    TORCH_CHECK(!steps.empty(), "fusedopt StepOperands: no step counters");
    operands_ = check_operands(backend, params_, grads, states, steps, masters, param_mode, device_ok, step_place);
    operands_.layout_key = new_layout_key();
    dtype_ = params_[0].scalar_type();
  }

  // Reads every parameter and its grad, or, for DTensor shards, checks this step's `local_params` and
  // `local_grads` (None where a grad is None); true when the planned call can run on them (see NOTE [step plan]).
  bool gather_grads(const std::optional<TensorList>& local_params,
                    const std::optional<std::vector<std::optional<at::Tensor>>>& local_grads) {
    // The params' addresses are refreshed too: `param.data = other` may have given one other storage (FSDP-style
    // flat params do), and the kernels address it directly.
    const TensorList grads = checked_local_grads(local_params, local_grads, "StepOperands");
    // A reference, not value_or's copy: copying the list would bump and drop every param's refcount at each step.
    const TensorList& params = local_params.has_value() ? *local_params : params_;
    gathered_ = binding::gather_grads(params, absent_, dtype_, operands_.device, operands_.numels, operands_.params,
                                      operands_.grads, local_grads.has_value() ? &grads : nullptr, &without_grad_);
    return gathered_;
  }

  // The operands of this step's call, once per successful gather_grads(): the planned ones, less the params whose
  // grad is None this time (possibly all of them).
  const Operands& take() {
    TORCH_CHECK(gathered_, "fusedopt: a planned step needs gather_grads() to have returned true first");
    gathered_ = false;
    if (without_grad_.empty()) return operands_;
    this_step_ = without(operands_, without_grad_);
    this_step_group_sizes_ = without(group_sizes_, without_grad_);
    if (without_grad_ != subset_without_grad_) {  // another subset of the planned params: another layout
      subset_without_grad_ = without_grad_;
      subset_layout_key_ = new_layout_key();
    }
    this_step_.layout_key = subset_layout_key_;
    return this_step_;
  }

  // NOTE [planned zero_grad]
  void clear_grads() const { binding::clear_grads(params_, absent_); }

  // This step's grads of the planned params (present_grads); plain tensors only (a DTensor plan holds local shards).
  TensorList grads() const { return present_grads(params_); }

  // The group sizes of the operands take() returned last.
  const std::vector<int64_t>& group_sizes() const {
    return without_grad_.empty() ? group_sizes_ : this_step_group_sizes_;
  }

 private:
  TensorList params_;
  std::vector<int64_t> group_sizes_;
  TensorList absent_;
  Operands operands_;
  at::ScalarType dtype_;
  bool gathered_ = false;
  std::vector<size_t> without_grad_;  // the params whose grad is None at this step
  Operands this_step_;                // operands_ without them
  std::vector<int64_t> this_step_group_sizes_;
  std::vector<size_t> subset_without_grad_;  // the params left out by the subset that has subset_layout_key_
  uint64_t subset_layout_key_ = 0;

  // Operands::layout_key: unique in the process (per extension module), never 0.
  static uint64_t new_layout_key() {
    static std::atomic<uint64_t> next{1};
    return next++;
  }
};

}  // namespace fusedopt::binding
