// csrc/common/step_operands.h -- the operands of one fused call, kept across steps (NOTE [step plan]).
//
// NOTE [step plan]: torch.optim walks its param groups in Python at every step, and so would fusedopt: for 1,000
// tensors that costs about 2 ms of host time, longer than the kernels of a large model take on a GPU. After a
// regular step, fusedopt/_step_plan.py keeps each fused call's operands in a StepOperands: params, state, step
// counters, masters and group sizes, as C++ tensors. A later step then only reads every parameter's .grad here,
// in C++, checks that each is present, dense, contiguous and like its parameter, and that the parameters that had
// no grad still have none, and calls the same entry point as the regular path. Anything else (a grad appeared or
// vanished, a dtype changed) makes gather_grads() return false, and the step takes the regular path, which
// validates with torch.optim's messages and builds a new plan. Grads are held only from gather_grads() to the end
// of the step, so zero_grad(set_to_none=True) frees them as usual.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "binding_utils.h"

namespace fusedopt::binding {

class StepOperands {
 public:
  // `columns` are the state lists in the entry point's order, an empty list for a slot the call does not use;
  // `absent` are the parameters of the optimizer that had no grad when the plan was made.
  StepOperands(TensorList params, std::vector<TensorList> columns, TensorList steps, TensorList masters,
               std::vector<int64_t> group_sizes, int64_t param_mode, TensorList absent)
      : params_(std::move(params)),
        columns_(std::move(columns)),
        steps_(std::move(steps)),
        masters_(std::move(masters)),
        group_sizes_(std::move(group_sizes)),
        param_mode_(param_mode),
        absent_(std::move(absent)) {
    const size_t n = params_.size();
    TORCH_CHECK(n > 0, "fusedopt StepOperands: no params");
    TORCH_CHECK(steps_.size() == n, "fusedopt StepOperands: ", n, " params but ", steps_.size(), " step counters");
    TORCH_CHECK(masters_.empty() || masters_.size() == n, "fusedopt StepOperands: ", n, " params but ",
                masters_.size(), " masters");
    dtype_ = params_[0].scalar_type();
    device_ = params_[0].device();
    numels_.reserve(n);
    for (const at::Tensor& param : params_) numels_.push_back(param.numel());
    // What the regular path checked before this plan was made, checked once more: later steps check only the
    // params and grads (gather_grads), so the state must be right from the start.
    for (const TensorList& column : columns_) {
      TORCH_CHECK(column.empty() || column.size() == n, "fusedopt StepOperands: ", n, " params but a state list of ",
                  column.size());
      if (!column.empty()) check_like_params(column, columns_[0][0].scalar_type(), "state");
    }
    if (!masters_.empty()) check_like_params(masters_, masters_[0].scalar_type(), "master");
    for (size_t i = 0; i < n; ++i) {
      const at::Tensor& step = steps_[i];
      TORCH_CHECK(step.device().is_cpu() && step.numel() == 1 &&
                      (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble),
                  "fusedopt StepOperands: step counter ", i, " must be a one-element float CPU tensor");
    }
    grads_.reserve(n);
  }

  // Reads every parameter's grad; true when the planned call can run on them (see NOTE [step plan]).
  bool gather_grads() {
    grads_.clear();
    for (const at::Tensor& param : absent_) {
      if (param.grad().defined()) return false;
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& param = params_[i];
      const at::Tensor& grad = param.grad();
      // The param too: `param.data = other` may have given it other storage (FSDP-style flat params do).
      if (param.scalar_type() != dtype_ || param.numel() != numels_[i] || !param.is_contiguous() ||
          param.device() != device_ || !grad.defined() || grad.layout() != at::kStrided ||
          grad.scalar_type() != dtype_ || grad.device() != device_ || !grad.is_contiguous() ||
          !grad.sizes().equals(param.sizes())) {
        grads_.clear();
        return false;
      }
      grads_.push_back(grad);
    }
    return true;
  }

  void release_grads() { grads_.clear(); }

  const TensorList& params() const { return params_; }
  const TensorList& grads() const { return grads_; }
  const TensorList& steps() const { return steps_; }
  const TensorList& masters() const { return masters_; }
  const std::vector<int64_t>& group_sizes() const { return group_sizes_; }
  int64_t param_mode() const { return param_mode_; }
  // State list `slot`, empty when the call does not use it.
  const TensorList& column(size_t slot) const { return slot < columns_.size() ? columns_[slot] : empty_; }
  size_t size() const { return params_.size(); }

 private:
  void check_like_params(const TensorList& tensors, at::ScalarType dtype, const char* role) const {
    for (size_t i = 0; i < tensors.size(); ++i) {
      const at::Tensor& t = tensors[i];
      TORCH_CHECK(t.scalar_type() == dtype && t.device() == device_ && t.is_contiguous() &&
                      t.layout() == at::kStrided && t.numel() == numels_[i],
                  "fusedopt StepOperands: ", role, " ", i, " must be a contiguous ", dtype, " tensor on ", device_,
                  " with its parameter's ", numels_[i], " elements");
    }
  }

  TensorList params_;
  std::vector<TensorList> columns_;
  TensorList steps_;
  TensorList masters_;
  std::vector<int64_t> group_sizes_;
  int64_t param_mode_;
  TensorList absent_;
  TensorList grads_;
  TensorList empty_;
  at::ScalarType dtype_;
  at::Device device_ = at::kCPU;
  std::vector<int64_t> numels_;
};

// Releases the grads a planned call gathered, however the call ends.
class GatheredGrads {
 public:
  explicit GatheredGrads(StepOperands& operands) : operands_(operands) {
    TORCH_CHECK(operands.grads().size() == operands.size(),
                "fusedopt: a planned step needs gather_grads() to have returned true first");
  }
  ~GatheredGrads() { operands_.release_grads(); }
  GatheredGrads(const GatheredGrads&) = delete;
  GatheredGrads& operator=(const GatheredGrads&) = delete;

 private:
  StepOperands& operands_;
};

}  // namespace fusedopt::binding
