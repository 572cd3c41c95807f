// fusedopt/param_rounding.h -- how an updated float32 value becomes the stored parameter, in bits.
//
// Shared by the CPU and CUDA kernels (the Triton kernels and fusedopt/_rounding.py mirror it), so every backend
// produces the same bits. Three ways beyond plain round-to-nearest-even:
//
// NOTE [stochastic rounding]: float32 -> bfloat16 rounds up with probability equal to the dropped fraction, so
// the expected stored value is the float32 value and small updates are not lost. The random 16 bits come from a
// counter-based hash of (seed, step, tensor, element): no state, reproducible, the same on every backend.
//
// NOTE [master remainder]: a float32 master weight kept as the bfloat16 parameter (its upper 16 bits, rounded)
// plus an int16 remainder (the lower 16 bits, signed): bits = (param << 16) + remainder exactly, modulo 2^32.
// The parameter is rounded to nearest by adding the carry of the dropped half (ties away from zero in magnitude),
// and the remainder absorbs the carry, so the master costs 2 bytes per parameter instead of 4. A NaN master
// gives the parameter the quiet NaN 0x7FC0, as round-to-nearest does: the carry would turn the GPU's canonical
// NaN 0x7FFFFFFF into -0.0, a zero the model would go on training with. Joined again, it is still a NaN.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDOPT_ROUNDING_INLINE __host__ __device__ __forceinline__
#else
#define FUSEDOPT_ROUNDING_INLINE inline
#endif

namespace fusedopt {

// How the kernel reads and writes the parameter.
enum class ParamMode : int32_t {
  kPlain = 0,       // load the parameter, store it rounded to nearest even
  kStochastic = 1,  // bfloat16 parameter stored with stochastic rounding
  kMaster = 2,      // a float32 master copy is read and written; the parameter gets it rounded to nearest even
  kRemainder = 3,   // the master is the bfloat16 parameter plus an int16 remainder (NOTE [master remainder])
};

// A 32-bit integer hash with good avalanche ("lowbias32", C. Wellons); plain wrapping uint32 arithmetic.
FUSEDOPT_ROUNDING_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The key of one tensor for one step; computed once per tensor and step (on the GPU once per CTA, from the step
// counter in device memory).
FUSEDOPT_ROUNDING_INLINE uint32_t rounding_key(uint64_t seed, uint64_t step, uint64_t tensor_index) {
  const uint32_t low = static_cast<uint32_t>(seed), high = static_cast<uint32_t>(seed >> 32);
  return mix32(low ^ mix32(high + mix32(static_cast<uint32_t>(step) ^ mix32(static_cast<uint32_t>(tensor_index)))));
}

// The random bits of element `index` of the tensor with `key` are
//   rounding_bits_in_block(rounding_block_key(key, index), index),
// in two parts: the hash of the index's upper 32 bits is the same for every element of an aligned block of up to
// 2^32 elements, so a loop over such a block (a CPU chunk, a CUDA CTA's chunk, a Triton program's block) computes
// it once and hashes once per element instead of twice.
FUSEDOPT_ROUNDING_INLINE uint32_t rounding_block_key(uint32_t key, int64_t index) {
  return mix32(key + static_cast<uint32_t>(static_cast<uint64_t>(index) >> 32));
}

FUSEDOPT_ROUNDING_INLINE uint32_t rounding_bits_in_block(uint32_t block_key, int64_t index) {
  return mix32(static_cast<uint32_t>(static_cast<uint64_t>(index)) ^ block_key);
}

// Any float32 NaN, whatever its sign and payload.
FUSEDOPT_ROUNDING_INLINE bool is_nan_bits(uint32_t bits) { return (bits & 0x7FFFFFFFU) > 0x7F800000U; }

// float32 bits -> bfloat16 bits, rounding up with probability (dropped bits) / 2^16. NaN stays a quiet NaN (the
// added bits could carry it into infinity or the sign).
FUSEDOPT_ROUNDING_INLINE uint16_t stochastic_round_to_bfloat16(uint32_t bits, uint32_t random) {
  return is_nan_bits(bits) ? uint16_t{0x7FC0} : static_cast<uint16_t>((bits + (random & 0xFFFFU)) >> 16);
}

// NOTE [master remainder]: split float32 bits into the rounded bfloat16 parameter and the signed remainder.
FUSEDOPT_ROUNDING_INLINE void split_master(uint32_t bits, uint16_t& param_bits, int16_t& remainder) {
  const uint32_t carry = (bits >> 15) & 1U;
  param_bits = is_nan_bits(bits) ? uint16_t{0x7FC0} : static_cast<uint16_t>((bits >> 16) + carry);
  remainder = static_cast<int16_t>(static_cast<uint16_t>(bits & 0xFFFFU));
}

FUSEDOPT_ROUNDING_INLINE uint32_t join_master(uint16_t param_bits, int16_t remainder) {
  return (static_cast<uint32_t>(param_bits) << 16) + static_cast<uint32_t>(static_cast<int32_t>(remainder));
}

}  // namespace fusedopt
