// tests/cuda_emulation/fused_cuda_emulated.cpp -- the fused CUDA kernels of csrc/cuda/fused_cuda_kernels.cuh,
// compiled by a host compiler and run on the CPU, for the tests of machines without a GPU.
//
// NOTE [cuda host emulation]: CI has no GPU, yet the CUDA kernels and their binding should not meet their first
// input on a lent GPU's few minutes. The tests build a CPU extension from the very sources of the CUDA extension
// (this file instead of fused_cuda.cu, csrc/cuda/bindings_cuda.cpp with FUSEDOPT_CUDA_HOST_EMULATION, see
// csrc/cuda/device_api.h) and run it on CPU tensors as backend "cuda" (fixture cuda_on_cpu in tests/conftest.py),
// against the reference and torch.optim. What it checks: the table walk (chunks, tensors, group rows), the vector path
// and the scalar tails, alignment, every dtype, option and parameter mode, the device step counters, found_inf, the
// grad factor, the table cache, the step plans, and which launches record their tables on another stream (stand-in
// streams). What it cannot check: the GPU's memory model (CTAs run one after another here, threads of a CTA one at a
// time), the allocator's stream semantics, speed, and the device compiler's own code (the math is the same header,
// compiled by g++).
//
// A CTA's threads run as fibers on the calling thread: each runs until it finishes or reaches __syncthreads, and
// when every thread of the CTA has, the waiting ones continue. A barrier that some threads of a CTA reach while
// others finish is a deadlock or undefined behaviour on a GPU; here it is an error.
#include "cuda_host_shim.h"
// (the shim first: the kernels below use the names it defines)
#include <ucontext.h>

#include <atomic>
#include <climits>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "fused_cuda.h"

namespace fusedopt::emulation {
namespace {

constexpr size_t kFiberStackBytes = size_t{128} << 10;

struct Fiber {
  ucontext_t context;
  std::vector<char> stack = std::vector<char>(kFiberStackBytes);
  bool finished = false;
};

std::atomic<int64_t> launches{0};
ucontext_t scheduler;
Fiber* running = nullptr;
const std::function<void()>* thread_body = nullptr;

void fiber_main() {
  (*thread_body)();
  running->finished = true;  // then back to the scheduler (uc_link)
}

// Runs `body` once per thread of one CTA (the fibers' count), barrier by barrier.
void run_cta(std::vector<Fiber>& fibers, const std::function<void()>& body) {
  thread_body = &body;
  for (Fiber& fiber : fibers) {
    getcontext(&fiber.context);
    fiber.context.uc_stack.ss_sp = fiber.stack.data();
    fiber.context.uc_stack.ss_size = fiber.stack.size();
    fiber.context.uc_link = &scheduler;
    makecontext(&fiber.context, fiber_main, 0);
    fiber.finished = false;
  }
  for (;;) {
    size_t waiting = 0, finished = 0;
    for (size_t t = 0; t < fibers.size(); ++t) {
      if (fibers[t].finished) continue;
      thread_index = uint3{static_cast<unsigned int>(t), 0, 0};
      running = &fibers[t];
      swapcontext(&scheduler, &fibers[t].context);
      ++(fibers[t].finished ? finished : waiting);
    }
    if (waiting == 0) return;
    if (finished != 0) {
      throw std::logic_error("CUDA host emulation: __syncthreads was reached by some threads of a CTA only");
    }
  }
}

}  // namespace

void sync_threads() { swapcontext(&running->context, &scheduler); }

// Runs a launch of `num_ctas` CTAs of `threads_per_cta` threads, one CTA after another.
cudaError_t launch(int64_t num_ctas, unsigned int threads_per_cta, const std::function<void()>& body) {
  if (num_ctas < 1 || num_ctas > INT_MAX || threads_per_cta < 1 || threads_per_cta > 1024) {
    return cudaErrorInvalidConfiguration;  // what the GPU says to such a launch
  }
  ++launches;
  // For bench/host_overhead.py --cuda-emulation: the host work of a step without the kernel's.
  if (const char* skip = std::getenv("FUSEDOPT_EMULATION_SKIP_KERNELS"); skip != nullptr && skip[0] == '1') {
    return cudaSuccess;
  }
  static std::mutex one_launch_at_a_time;
  const std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  static std::vector<Fiber> fibers;
  if (fibers.size() != threads_per_cta) fibers = std::vector<Fiber>(threads_per_cta);
  grid_dim = dim3(static_cast<unsigned int>(num_ctas));
  block_dim = dim3(threads_per_cta);
  for (int64_t cta = 0; cta < num_ctas; ++cta) {
    block_index = uint3{static_cast<unsigned int>(cta), 0, 0};
    run_cta(fibers, body);
  }
  return cudaSuccess;
}

}  // namespace fusedopt::emulation

// Kernel launches so far (those with a valid configuration), for tests that count launches per step; read with
// ctypes, as the module's Python functions are those of csrc/cuda/bindings_cuda.cpp.
extern "C" int64_t fusedopt_emulated_launches() { return fusedopt::emulation::launches.load(); }

// A user's streams, for the tests of NOTE [tables on other streams] (csrc/cuda/bindings_cuda.cpp): the binding's
// current stream is the handle a test sets (0 at first), and each stream record it makes is counted per stream.
namespace fusedopt::emulation {
namespace {
std::atomic<intptr_t> current_stream_handle{0};
std::mutex records_mutex;
std::map<intptr_t, int64_t> records_per_stream;
}  // namespace

cudaStream_t current_stream() { return reinterpret_cast<cudaStream_t>(current_stream_handle.load()); }

void record_stream(cudaStream_t stream) {
  const std::lock_guard<std::mutex> lock(records_mutex);
  ++records_per_stream[reinterpret_cast<intptr_t>(stream)];
}
}  // namespace fusedopt::emulation

extern "C" void fusedopt_emulated_set_stream(intptr_t handle) { fusedopt::emulation::current_stream_handle = handle; }

extern "C" int64_t fusedopt_emulated_stream_records(intptr_t handle) {
  const std::lock_guard<std::mutex> lock(fusedopt::emulation::records_mutex);
  const auto found = fusedopt::emulation::records_per_stream.find(handle);
  return found == fusedopt::emulation::records_per_stream.end() ? 0 : found->second;
}

namespace fusedopt::cuda {
namespace {

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(LaunchTables, Params...), const LaunchTables& tables, cudaStream_t,
                          const Args&... args) {
  return emulation::launch(tables.num_chunks, kThreadsPerBlock, [&] { kernel(tables, args...); });
}

}  // namespace
}  // namespace fusedopt::cuda

#include "fused_cuda_kernels.cuh"
