// fusedopt/host_storage.h -- storage types of the CPU kernels and their conversions to the compute type.
//
// Low-precision tensors are loaded into float, updated, and rounded back once per element ("load in the
// storage dtype, compute in float32, store back"). The layouts match c10::BFloat16 and c10::Half, so a
// torch tensor's data pointer can be reinterpreted without a copy, and this header needs no torch include.
#pragma once

#include <cstdint>
#include <cstring>

namespace fusedopt {

// bfloat16 as its 16 raw bits; the conversions below are plain integer code that vectorizes everywhere.
struct BFloat16Bits {
  uint16_t bits;
};

// IEEE binary16. GCC and Clang provide _Float16 on x86-64 and AArch64, with hardware conversions under
// F16C (x86-64-v3 and up) and a software routine otherwise.
using Float16 = _Float16;

// The compute type of each storage type: float64 stays double, everything else computes in float.
template <typename Storage>
struct ComputeTypeOf {
  using type = float;
};
template <>
struct ComputeTypeOf<double> {
  using type = double;
};
template <typename Storage>
using compute_t = typename ComputeTypeOf<Storage>::type;

inline float bfloat16_to_float(BFloat16Bits value) {
  const uint32_t widened = static_cast<uint32_t>(value.bits) << 16;
  float result;
  std::memcpy(&result, &widened, sizeof(result));
  return result;
}

// Round to nearest, ties to even, as c10::BFloat16 and the CUDA intrinsic __float2bfloat16_rn do.
// NaN stays a quiet NaN (the rounding add could otherwise carry it into infinity).
inline BFloat16Bits float_to_bfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint32_t lowest_kept_bit = (bits >> 16) & 1u;
  const uint32_t rounded = (bits + 0x7FFFu + lowest_kept_bit) >> 16;
  return BFloat16Bits{static_cast<uint16_t>(value != value ? 0x7FC0u : rounded)};
}

template <typename Compute>
inline Compute load_as(float value) {
  return static_cast<Compute>(value);
}
template <typename Compute>
inline Compute load_as(double value) {
  return static_cast<Compute>(value);
}
template <typename Compute>
inline Compute load_as(Float16 value) {
  return static_cast<Compute>(static_cast<float>(value));
}
template <typename Compute>
inline Compute load_as(BFloat16Bits value) {
  return static_cast<Compute>(bfloat16_to_float(value));
}

template <typename Storage>
struct StoreAs {
  template <typename Compute>
  static Storage from(Compute value) {
    return static_cast<Storage>(value);
  }
};
template <>
struct StoreAs<BFloat16Bits> {
  static BFloat16Bits from(float value) { return float_to_bfloat16(value); }
};
template <>
struct StoreAs<Float16> {
  static Float16 from(float value) { return static_cast<Float16>(value); }
};

template <typename Storage, typename Compute>
inline Storage store_as(Compute value) {
  return StoreAs<Storage>::from(value);
}

}  // namespace fusedopt
