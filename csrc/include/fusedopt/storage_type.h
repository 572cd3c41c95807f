// fusedopt/storage_type.h -- the storage dtypes the kernels are built for, shared by the CPU and CUDA launch
// interfaces (no torch, no CUDA headers).
#pragma once

#include <cstdint>

namespace fusedopt {

enum class StorageType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

inline const char* storage_type_name(StorageType type) {
  switch (type) {
    case StorageType::kFloat32:
      return "float32";
    case StorageType::kFloat64:
      return "float64";
    case StorageType::kBFloat16:
      return "bfloat16";
    case StorageType::kFloat16:
      return "float16";
  }
  return "unknown";
}

// The (param, state) pairs the kernels are built for: state in the parameter's own type (torch.optim's rule),
// float32 state for bfloat16/float16 parameters, or bfloat16 state for float32 parameters (state_dtype=).
inline bool is_supported_pair(StorageType param, StorageType state) {
  return param == state ||
         (state == StorageType::kFloat32 && (param == StorageType::kBFloat16 || param == StorageType::kFloat16)) ||
         (param == StorageType::kFloat32 && state == StorageType::kBFloat16);
}

}  // namespace fusedopt
