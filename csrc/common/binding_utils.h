// csrc/common/binding_utils.h -- what the CPU and CUDA bindings share: dtype mapping and step counters.
// Includes torch; kernel translation units never include this file.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "fusedopt/storage_type.h"

namespace fusedopt::binding {

using TensorList = std::vector<at::Tensor>;

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

inline void check_steps(const TensorList& steps, size_t n, const char* backend) {
  TORCH_CHECK(steps.size() == n, "fusedopt ", backend, " backend: got ", n, " params but ", steps.size(),
              " step counters");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& step = steps[i];
    TORCH_CHECK(step.device().is_cpu() && step.numel() == 1 &&
                    (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble),
                "fusedopt ", backend, " backend: steps[", i, "] must be a one-element float32 or float64 CPU tensor");
  }
}

// Adds one to every step counter (as torch.optim does before using it) and returns the new values.
inline std::vector<double> advance_steps(const TensorList& steps) {
  std::vector<double> values(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const at::Tensor& step = steps[i];
    if (step.scalar_type() == at::kDouble) {
      values[i] = (*step.data_ptr<double>() += 1.0);
    } else {
      values[i] = (*step.data_ptr<float>() += 1.0f);
    }
  }
  return values;
}

}  // namespace fusedopt::binding
