// fusedopt/device_storage.cuh -- CUDA storage types, their conversions to the compute type, and 16-byte
// vector access. The device counterpart of host_storage.h: load in the storage dtype, compute in float
// (double for float64), round to nearest even once when storing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace fusedopt {

template <typename Storage>
struct DeviceComputeType {
  using type = float;
};
template <>
struct DeviceComputeType<double> {
  using type = double;
};
template <typename Storage>
using device_compute_t = typename DeviceComputeType<Storage>::type;

__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }

template <typename Storage>
struct DeviceStore;
template <>
struct DeviceStore<float> {
  __device__ __forceinline__ static float from(float x) { return x; }
};
template <>
struct DeviceStore<double> {
  __device__ __forceinline__ static double from(double x) { return x; }
};
template <>
struct DeviceStore<__nv_bfloat16> {
  __device__ __forceinline__ static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};
template <>
struct DeviceStore<__half> {
  __device__ __forceinline__ static __half from(float x) { return __float2half_rn(x); }
};

template <typename Storage, typename Compute>
__device__ __forceinline__ Storage from_compute(Compute x) {
  return DeviceStore<Storage>::from(x);
}

// NOTE [global operands]: the kernels read their operands' addresses from the launch table in device memory, so
// nvcc cannot tell which state space they point into and emits generic loads and stores (LD/ST in SASS) where it
// would emit global ones (LDG/STG) for a kernel's pointer argument. Every operand is a CUDA tensor, in global
// memory; saying so makes the accesses global (scripts/ptx_checks.py checks each kernel's PTX for it).
template <typename T>
__device__ __forceinline__ T* assume_global(T* pointer) {
#ifdef __CUDA_ARCH__
  __builtin_assume(__isGlobal(pointer));
#endif
  return pointer;
}

// kN consecutive elements moved as one access of kN * sizeof(T) bytes (16 bytes for the widest operand).
template <typename T, int kN>
struct alignas(sizeof(T) * kN) VectorOf {
  T value[kN];
};

// A GPU faults on a vector access off its size's boundary; the host emulation (NOTE [cuda host emulation]) traps
// on one too, where g++ may quietly emit an unaligned access, so a wrong `aligned` flag fails the CPU tests.
template <typename Vector>
__device__ __forceinline__ void check_vector_alignment([[maybe_unused]] const void* pointer) {
#ifdef FUSEDOPT_CUDA_HOST_EMULATION
  if (reinterpret_cast<uintptr_t>(pointer) % alignof(Vector) != 0) __builtin_trap();
#endif
}

// kN elements of T at `pointer` as stored (no conversion), in one access.
template <int kN, typename T>
__device__ __forceinline__ VectorOf<T, kN> load_raw_vector(const T* pointer) {
  check_vector_alignment<VectorOf<T, kN>>(pointer);
  return *reinterpret_cast<const VectorOf<T, kN>*>(pointer);
}

template <typename T, int kN>
__device__ __forceinline__ void store_raw_vector(T* pointer, const VectorOf<T, kN>& vector) {
  check_vector_alignment<VectorOf<T, kN>>(pointer);
  *reinterpret_cast<VectorOf<T, kN>*>(pointer) = vector;
}

template <typename Compute, typename T, int kN>
__device__ __forceinline__ void load_vector(Compute (&out)[kN], const T* pointer) {
  const VectorOf<T, kN> loaded = load_raw_vector<kN>(pointer);
#pragma unroll
  for (int i = 0; i < kN; ++i) out[i] = to_compute(loaded.value[i]);
}

template <typename T, typename Compute, int kN>
__device__ __forceinline__ void store_vector(T* pointer, const Compute (&in)[kN]) {
  VectorOf<T, kN> stored;
#pragma unroll
  for (int i = 0; i < kN; ++i) stored.value[i] = from_compute<T>(in[i]);
  store_raw_vector(pointer, stored);
}

}  // namespace fusedopt
