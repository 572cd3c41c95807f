// csrc/common/binding_utils.h -- what the CPU and CUDA bindings share: dtype mapping and the per-tensor scalars of
// a launch that spans several param groups. Includes torch; kernel translation units never include this file.
//
// NOTE [param groups in one launch]: one launch updates the tensors of every param group that shares a launch
// signature (device, dtypes, state layout, parameter mode), not one launch per group as torch.optim's fused
// kernels do. Tensors come group after group, group_sizes[g] of them for group g, and every hyperparameter comes
// as one value per group. Each tensor gets its own scalars, made from its group's values and its own step, and its
// own weight decay mode, so the usual "no weight decay for biases and norms" group shares the launch of the
// decayed weights.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "fusedopt/storage_type.h"
#include "fusedopt/update_rules.h"

namespace fusedopt::binding {

using TensorList = std::vector<at::Tensor>;

// A tensor subclass that dispatches to Python (a DTensor) may wrap no memory of its own, so the kernels never read
// one: they take plain tensors (a DTensor's local shard).
inline bool dispatches_to_python(const at::Tensor& tensor) { return tensor.key_set().has(c10::DispatchKey::Python); }

inline StorageType storage_type_of(const at::Tensor& tensor, const char* backend, const char* role) {
  switch (tensor.scalar_type()) {
    case at::kFloat:
      return StorageType::kFloat32;
    case at::kDouble:
      return StorageType::kFloat64;
    case at::kBFloat16:
      return StorageType::kBFloat16;
    case at::kHalf:
      return StorageType::kFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fusedopt ", backend, " backend: ", role, " has dtype ", tensor.scalar_type(),
                       "; supported are float32, float64, bfloat16 and float16");
  }
}

// Which param group each tensor of a launch belongs to (NOTE [param groups in one launch]).
class GroupIndex {
 public:
  GroupIndex(const std::vector<int64_t>& group_sizes, size_t num_tensors, const char* backend)
      : num_groups_(group_sizes.size()), backend_(backend) {
    group_of_.reserve(num_tensors);
    for (size_t g = 0; g < group_sizes.size(); ++g) {
      TORCH_CHECK(group_sizes[g] >= 0, "fusedopt ", backend, " backend: group_sizes[", g, "] is negative");
      group_of_.insert(group_of_.end(), static_cast<size_t>(group_sizes[g]), static_cast<int32_t>(g));
      TORCH_CHECK(group_of_.size() <= num_tensors, "fusedopt ", backend, " backend: group_sizes add up to more than ",
                  "the ", num_tensors, " params");
    }
    TORCH_CHECK(group_of_.size() == num_tensors, "fusedopt ", backend, " backend: group_sizes add up to ",
                group_of_.size(), " but there are ", num_tensors, " params");
  }

  int32_t operator[](size_t tensor) const { return group_of_[tensor]; }
  const std::vector<int32_t>& of_tensors() const { return group_of_; }
  size_t num_groups() const { return num_groups_; }

  // Checks that a hyperparameter has one value per group.
  template <typename T>
  void check(const std::vector<T>& values, const char* name) const {
    TORCH_CHECK(values.size() == num_groups_, "fusedopt ", backend_, " backend: ", name, " has ", values.size(),
                " values for ", num_groups_, " param groups");
  }

 private:
  std::vector<int32_t> group_of_;
  size_t num_groups_;
  const char* backend_;
};

struct AdamHyperparameters {
  std::vector<double> lr, beta1, beta2, weight_decay, eps;
  std::vector<bool> maximize, decoupled;
};

struct RmspropHyperparameters {
  std::vector<double> lr, alpha, eps, weight_decay, momentum;
  std::vector<bool> maximize;
};

struct AdagradHyperparameters {
  std::vector<double> lr, lr_decay, weight_decay, eps;
  std::vector<bool> maximize;
};

// Checks that every hyperparameter has one value per group; call before advancing any step counter.
inline void check_per_group(const GroupIndex& groups, const AdamHyperparameters& h) {
  groups.check(h.lr, "lr");
  groups.check(h.beta1, "beta1");
  groups.check(h.beta2, "beta2");
  groups.check(h.weight_decay, "weight_decay");
  groups.check(h.eps, "eps");
  groups.check(h.maximize, "maximize");
  groups.check(h.decoupled, "decoupled");
}

inline void check_per_group(const GroupIndex& groups, const RmspropHyperparameters& h) {
  groups.check(h.lr, "lr");
  groups.check(h.alpha, "alpha");
  groups.check(h.eps, "eps");
  groups.check(h.weight_decay, "weight_decay");
  groups.check(h.momentum, "momentum");
  groups.check(h.maximize, "maximize");
}

inline void check_per_group(const GroupIndex& groups, const AdagradHyperparameters& h) {
  groups.check(h.lr, "lr");
  groups.check(h.lr_decay, "lr_decay");
  groups.check(h.weight_decay, "weight_decay");
  groups.check(h.eps, "eps");
  groups.check(h.maximize, "maximize");
}

// Each tensor's weight decay mode: fusedopt::WeightDecayMode for Adam, 0 or 1 (without or with L2 decay) for
// RMSprop and Adagrad. It depends on the hyperparameters only, so it is known before any step counter moves.
inline std::vector<int32_t> decay_modes(const GroupIndex& groups, const AdamHyperparameters& h, size_t n) {
  std::vector<int32_t> modes(n);
  for (size_t i = 0; i < n; ++i) {
    const int32_t g = groups[i];
    const WeightDecayMode mode = h.weight_decay[g] == 0.0
                                     ? WeightDecayMode::kNone
                                     : (h.decoupled[g] ? WeightDecayMode::kDecoupled : WeightDecayMode::kL2);
    modes[i] = static_cast<int32_t>(mode);
  }
  return modes;
}

template <typename Hyper>
std::vector<int32_t> decay_modes(const GroupIndex& groups, const Hyper& h, size_t n) {
  std::vector<int32_t> modes(n);
  for (size_t i = 0; i < n; ++i) modes[i] = h.weight_decay[groups[i]] != 0.0;
  return modes;
}

// A group's hyperparameters (with the launch's host grad factor folded in) as the kernels take them
// (fusedopt/update_rules.h).
inline AdamHyper group_hyper(const AdamHyperparameters& h, int32_t g, double grad_factor) {
  return make_adam_hyper(h.lr[g], h.beta1[g], h.beta2[g], h.eps[g], h.weight_decay[g], h.maximize[g], grad_factor);
}

inline RmspropHyper group_hyper(const RmspropHyperparameters& h, int32_t g, double grad_factor) {
  return make_rmsprop_hyper(h.lr[g], h.alpha[g], h.eps[g], h.weight_decay[g], h.momentum[g], h.maximize[g],
                            grad_factor);
}

inline AdagradHyper group_hyper(const AdagradHyperparameters& h, int32_t g, double grad_factor) {
  return make_adagrad_hyper(h.lr[g], h.lr_decay[g], h.eps[g], h.weight_decay[g], h.maximize[g], grad_factor);
}

// Each param group's hyperparameters, as the kernels take them (the CUDA kernels find their tensor's row through
// the group index of the cached table).
template <typename Hyperparameters>
auto per_group_hyper(const GroupIndex& groups, const Hyperparameters& h, double grad_factor) {
  std::vector<decltype(group_hyper(h, 0, grad_factor))> per_group;
  per_group.reserve(groups.num_groups());
  for (size_t g = 0; g < groups.num_groups(); ++g) {
    per_group.push_back(group_hyper(h, static_cast<int32_t>(g), grad_factor));
  }
  return per_group;
}

// Each tensor's scalars at its new step count (host-side step counters: the CPU backend), from its group's
// hyperparameters, computed once per run of tensors with the same group and step (normally once per group).
template <typename Hyper>
auto per_tensor_scalars(const GroupIndex& groups, const std::vector<Hyper>& group_hyper,
                        const std::vector<double>& steps) {
  std::vector<decltype(scalars_at_step(group_hyper[0], 0.0))> scalars(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const bool same_as_previous = i > 0 && groups[i - 1] == groups[i] && steps[i - 1] == steps[i];
    scalars[i] = same_as_previous ? scalars[i - 1] : scalars_at_step(group_hyper[groups[i]], steps[i]);
  }
  return scalars;
}

}  // namespace fusedopt::binding
