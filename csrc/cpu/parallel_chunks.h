// csrc/cpu/parallel_chunks.h -- how the CPU kernels share the work of one call among OpenMP threads, and the
// target clones of their inner loops; no torch headers.
//
// The tensors of a call are cut into fixed-size chunks, and the chunks of all tensors are shared among the
// threads, so 1 tensor of 64M elements and 200 tensors of 320K elements keep every core equally busy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

// The chunk functions are compiled three times (AVX-512, AVX2+FMA+F16C, baseline x86-64) by GCC's target_clones and
// the best one is picked when the library loads, the way ATen's CPU_CAPABILITY dispatch does it, so one binary is
// fast on new machines and still runs on old ones.
// FUSEDOPT_CPU_ISA (3: AVX2, 1: baseline) builds one of the clones alone, so that a machine that would pick
// AVX-512 can run the others too: tests/test_cpu_clones.py checks that every clone gives the same bits.
#if defined(FUSEDOPT_CPU_ISA) && defined(__GNUC__) && defined(__x86_64__)
#if FUSEDOPT_CPU_ISA == 3
#define FUSEDOPT_CPU_CLONES __attribute__((target("arch=x86-64-v3")))
#else
#define FUSEDOPT_CPU_CLONES
#endif
#elif defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define FUSEDOPT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSEDOPT_CPU_CLONES
#endif

// The loop bodies must be inlined into each target clone: a call out of the clone would run baseline code.
#if defined(__GNUC__)
#define FUSEDOPT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FUSEDOPT_ALWAYS_INLINE inline
#endif

namespace fusedopt::cpu {

// 32K elements: 128 KiB per float32 stream, so the four to six streams of an optimizer's chunk stay within L2
// while a 64M-element tensor still splits into 2,048 chunks, plenty to balance any thread count.
constexpr int64_t kChunkElements = int64_t{1} << 15;
// Below this many elements per thread, waking another thread costs more than it saves.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 16;

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

// The chunks of tensors 0 .. num_tensors-1 (numel_of(t) elements each), tensor after tensor; an empty tensor has none.
template <typename NumelOf>
std::vector<Chunk> chunks_of(int64_t num_tensors, const NumelOf& numel_of) {
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < num_tensors; ++t) {
    const int64_t numel = numel_of(t);
    for (int64_t begin = 0; begin < numel; begin += kChunkElements) {
      chunks.push_back({t, begin, std::min(begin + kChunkElements, numel)});
    }
  }
  return chunks;
}

// Calls run_chunk(i) for every index i of `chunks`, on at most `max_threads` threads (fewer for small calls);
// exceptions must not escape run_chunk.
template <typename ChunkFn>
void parallel_for_chunks(const std::vector<Chunk>& chunks, int max_threads, const ChunkFn& run_chunk) {
  int64_t total_elements = 0;
  for (const Chunk& chunk : chunks) total_elements += chunk.end - chunk.begin;
  const int64_t useful_threads = std::max<int64_t>(1, total_elements / kMinElementsPerThread);
  const int threads = static_cast<int>(std::min<int64_t>(std::max(max_threads, 1), useful_threads));
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < num_chunks; ++i) {
    run_chunk(i);
  }
}

}  // namespace fusedopt::cpu
