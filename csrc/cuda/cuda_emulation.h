// Runs CUDA kernels as host C++, for tests on machines without a GPU: include this before
// regularizer_kernels.cuh. A launch walks the grid's blocks one after another; each block's threads
// are cooperative fibers (ucontext) run in turn, each until it finishes or reaches __syncthreads(),
// so that barriers and __shared__ memory behave as on the device. A barrier that some threads of a
// block reach while others have finished is reported (on a GPU it would hang or be undefined).
// Warp primitives are not emulated: the kernels use none.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#define CHY_CUDA_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // one copy per kernel function: blocks run one at a time
#define __launch_bounds__(...)

namespace chy_emu {

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};
using cudaStream_t = void*;

// The running fiber's coordinates (set by the scheduler before it resumes a fiber).
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};

struct Scheduler {
  ucontext_t main_ctx;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  int64_t barriers = 0;  // barriers passed (all threads of a block), for the tests' statistics
};

inline Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

inline void fiber_entry() {
  Scheduler& s = scheduler();
  (*s.body)();
  s.current->done = true;  // returning resumes uc_link, the scheduler
}

inline void syncthreads() {
  Scheduler& s = scheduler();
  swapcontext(&s.current->ctx, &s.main_ctx);
}

// Runs body once per thread of a grid of `grid` blocks of `block` threads.
inline void launch(unsigned int grid, unsigned int block, const std::function<void()>& body) {
  if (grid == 0 || block == 0) throw std::runtime_error("chy_emu: launch with an empty grid or block");
  Scheduler& s = scheduler();
  s.body = &body;
  gridDim = dim3{grid, 1, 1};
  blockDim = dim3{block, 1, 1};
  constexpr size_t kStack = 256 * 1024;
  std::vector<Fiber> fibers(block);
  for (auto& f : fibers) f.stack.resize(kStack);
  for (unsigned int b = 0; b < grid; ++b) {
    blockIdx = dim3{b, 1, 1};
    for (unsigned int t = 0; t < block; ++t) {
      Fiber& f = fibers[t];
      f.done = false;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &s.main_ctx;
      makecontext(&f.ctx, fiber_entry, 0);
    }
    while (true) {
      // Resume every live thread; each runs to its next barrier or to its end.
      for (unsigned int t = 0; t < block; ++t) {
        if (fibers[t].done) continue;
        threadIdx = dim3{t, 1, 1};
        s.current = &fibers[t];
        swapcontext(&s.main_ctx, &fibers[t].ctx);
      }
      unsigned int finished = 0;
      for (const auto& f : fibers) finished += f.done ? 1 : 0;
      if (finished == block) break;
      if (finished != 0)
        throw std::runtime_error("chy_emu: block " + std::to_string(b) + ": " + std::to_string(block - finished) +
                                 " threads wait at __syncthreads() after " + std::to_string(finished) +
                                 " others finished (divergent barrier)");
      ++s.barriers;
    }
  }
  s.current = nullptr;
}

}  // namespace chy_emu

using chy_emu::blockDim;
using chy_emu::blockIdx;
using chy_emu::cudaStream_t;
using chy_emu::gridDim;
using chy_emu::threadIdx;
inline void __syncthreads() { chy_emu::syncthreads(); }
