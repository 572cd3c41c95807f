// cpu_adam_loops.cpp -- fusedopt's CPU AdamW loop against DeepSpeed's, outside Python (bench/NOTES.md, "Against
// DeepSpeed's CPU Adam"): is the 1M-element gap in the loop or around it?
//
// Loops over float32 param, grad, exp_avg and exp_avg_sq, each function on its own buffers, called interleaved
// (300 rounds, median), on one thread:
//   0 fusedopt      fusedopt::adam_update (csrc/include/fusedopt/update_rules.h) in a plain loop, the target
//                   clones of csrc/cpu/parallel_chunks.h
//   1 deepspeed     DeepSpeed's Step_AVX<8> math (deepspeed/ops/csrc/includes/cpu_adam.h) in AVX-512 intrinsics,
//                   8 vectors per iteration
//   2 stream        the same loads and stores, one add per element
//   3 chunked       loop 0 called per 32K-element chunk, as csrc/cpu/fused_cpu.cpp does
//
//   g++ -O3 -fno-math-errno -I csrc/include bench/results/2026-11-29-cpu/cpu_adam_loops.cpp -o /tmp/loops
//   /tmp/loops N SELECTION     (e.g. 1048576 01: fusedopt and deepspeed interleaved)
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fusedopt/update_rules.h"

using fusedopt::AdamScalars;
using fusedopt::WeightDecayMode;
using Loop = void (*)(float*, const float*, float*, float*, long, const AdamScalars<float>&);

#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

CLONES __attribute__((noinline)) void fusedopt_loop(float* __restrict p, const float* __restrict g,
                                                    float* __restrict m, float* __restrict v, long n,
                                                    const AdamScalars<float>& s) {
  for (long i = 0; i < n; ++i) {
    float param = p[i], exp_avg = m[i], exp_avg_sq = v[i], unused = 0;
    fusedopt::adam_update<float, WeightDecayMode::kDecoupled, false>(param, g[i], exp_avg, exp_avg_sq, unused, s);
    p[i] = param;
    m[i] = exp_avg;
    v[i] = exp_avg_sq;
  }
}

__attribute__((target("avx512f"), noinline)) void deepspeed_loop(float* __restrict p, const float* __restrict g,
                                                                 float* __restrict m, float* __restrict v, long n,
                                                                 const AdamScalars<float>& s) {
  const __m512 beta1 = _mm512_set1_ps(1 - s.beta1_complement), beta1_complement = _mm512_set1_ps(s.beta1_complement);
  const __m512 beta2 = _mm512_set1_ps(s.beta2), beta2_complement = _mm512_set1_ps(s.beta2_complement);
  const __m512 eps = _mm512_set1_ps(s.eps), step_size = _mm512_set1_ps(-s.step_size);
  const __m512 decay = _mm512_set1_ps(s.decay_factor);
  constexpr int kSpan = 8;  // DeepSpeed's Step_AVX<8>
  for (long i = 0; i < n; i += 16 * kSpan) {
    __m512 grad[kSpan], exp_avg[kSpan], exp_avg_sq[kSpan], param[kSpan];
    for (int k = 0; k < kSpan; ++k) {
      grad[k] = _mm512_loadu_ps(g + i + 16 * k);
      exp_avg[k] = _mm512_loadu_ps(m + i + 16 * k);
      exp_avg_sq[k] = _mm512_loadu_ps(v + i + 16 * k);
      param[k] = _mm512_loadu_ps(p + i + 16 * k);
    }
    for (int k = 0; k < kSpan; ++k) {
      exp_avg[k] = _mm512_fmadd_ps(grad[k], beta1_complement, _mm512_mul_ps(exp_avg[k], beta1));
      exp_avg_sq[k] =
          _mm512_fmadd_ps(_mm512_mul_ps(grad[k], grad[k]), beta2_complement, _mm512_mul_ps(exp_avg_sq[k], beta2));
      const __m512 update = _mm512_div_ps(exp_avg[k], _mm512_add_ps(_mm512_sqrt_ps(exp_avg_sq[k]), eps));
      param[k] = _mm512_fmadd_ps(update, step_size, _mm512_mul_ps(param[k], decay));
    }
    for (int k = 0; k < kSpan; ++k) {
      _mm512_storeu_ps(p + i + 16 * k, param[k]);
      _mm512_storeu_ps(m + i + 16 * k, exp_avg[k]);
      _mm512_storeu_ps(v + i + 16 * k, exp_avg_sq[k]);
    }
  }
}

CLONES __attribute__((noinline)) void stream_loop(float* __restrict p, const float* __restrict g, float* __restrict m,
                                                  float* __restrict v, long n, const AdamScalars<float>&) {
  for (long i = 0; i < n; ++i) {
    const float grad = g[i];
    p[i] += grad;
    m[i] += grad;
    v[i] += grad;
  }
}

__attribute__((noinline)) void chunked_loop(float* __restrict p, const float* __restrict g, float* __restrict m,
                                            float* __restrict v, long n, const AdamScalars<float>& s) {
  constexpr long kChunk = 1L << 15;
  for (long begin = 0; begin < n; begin += kChunk) {
    const long size = std::min(n, begin + kChunk) - begin;
    fusedopt_loop(p + begin, g + begin, m + begin, v + begin, size, s);
  }
}

int main(int argc, char** argv) {
  const long n = argc > 1 ? atol(argv[1]) : 1L << 20;  // a multiple of 128 (DeepSpeed's loop has no tail here)
  const char* selection = argc > 2 ? argv[2] : "0123";
  const char* names[] = {"fusedopt", "deepspeed", "stream", "chunked"};
  const Loop loops[] = {fusedopt_loop, deepspeed_loop, stream_loop, chunked_loop};
  const int count = static_cast<int>(strlen(selection));
  std::vector<std::vector<float*>> buffers(count);
  for (int f = 0; f < count; ++f) {
    for (int k = 0; k < 4; ++k) {  // param, grad, exp_avg, exp_avg_sq
      float* buffer = static_cast<float*>(aligned_alloc(4096, n * sizeof(float)));
      for (long i = 0; i < n; ++i) {
        buffer[i] = k >= 2 ? 0.1f * ((i * 7919) % 1000) / 1000.f + 0.01f : ((i * 104729) % 2000) / 1000.f - 1.f;
      }
      buffers[f].push_back(buffer);
    }
  }
  const auto hyper = fusedopt::make_adam_hyper(1e-3, 0.9, 0.999, 1e-8, 0.01, false, 1.0);
  const auto scalars = fusedopt::cast_scalars<float>(fusedopt::scalars_at_step(hyper, 10));
  std::vector<std::vector<double>> times(count);
  for (int round = 0; round < 300; ++round) {
    for (int f = 0; f < count; ++f) {
      float** b = buffers[f].data();
      const auto start = std::chrono::steady_clock::now();
      loops[selection[f] - '0'](b[0], b[1], b[2], b[3], n, scalars);
      times[f].push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    }
  }
  for (int f = 0; f < count; ++f) {
    std::sort(times[f].begin(), times[f].end());
    printf("%-10s %8.1f us\n", names[selection[f] - '0'], times[f][150]);
  }
}
