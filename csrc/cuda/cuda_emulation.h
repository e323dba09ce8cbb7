// Runs CUDA kernels as host C++, for tests on machines without a GPU: include this before
// regularizer_kernels.cuh. A launch walks the grid's blocks one after another; each block's threads
// are cooperative fibers (ucontext) run in turn, each until it finishes or reaches a barrier, so
// that __syncthreads(), __shared__ memory and the warp shuffles (__shfl_sync, __shfl_xor_sync over
// all 32 lanes, on doubles) behave as on the device. A barrier that some threads reach while others
// of the same block (or warp) have finished or wait elsewhere is reported: on a GPU it would hang
// or be undefined.
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

constexpr unsigned int kWarpSize = 32;

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
  int wait = 0;  // 0 running, 1 at __syncthreads(), 2 at a warp barrier (inside a shuffle)
};

struct Scheduler {
  ucontext_t main_ctx;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  int64_t barriers = 0;       // block barriers passed, for the tests' statistics
  int64_t warp_barriers = 0;  // warp barriers passed (two per shuffle)
  double exchange[1024];      // a shuffle's values, one per thread of the block
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

inline void wait_at(int kind) {
  Scheduler& s = scheduler();
  s.current->wait = kind;
  swapcontext(&s.current->ctx, &s.main_ctx);
}

inline void syncthreads() { wait_at(1); }

// The value of lane src of this thread's warp: every lane writes, waits, reads, waits.
inline double shfl(double value, unsigned int src) {
  Scheduler& s = scheduler();
  const unsigned int tid = threadIdx.x, base = tid - tid % kWarpSize;
  s.exchange[tid] = value;
  wait_at(2);
  const double out = s.exchange[base + (src % kWarpSize)];
  wait_at(2);
  return out;
}

// Runs body once per thread of a grid of `grid` blocks of `block` threads.
inline void launch(unsigned int grid, unsigned int block, const std::function<void()>& body) {
  if (grid == 0 || block == 0 || block > 1024)
    throw std::runtime_error("chy_emu: launch with an empty grid or block, or a block over 1024 threads");
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
      f.wait = 0;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.data();
      f.ctx.uc_stack.ss_size = f.stack.size();
      f.ctx.uc_link = &s.main_ctx;
      makecontext(&f.ctx, fiber_entry, 0);
    }
    while (true) {
      // Resume every running thread; each runs to its next barrier or to its end.
      for (unsigned int t = 0; t < block; ++t) {
        if (fibers[t].done || fibers[t].wait != 0) continue;
        threadIdx = dim3{t, 1, 1};
        s.current = &fibers[t];
        swapcontext(&s.main_ctx, &fibers[t].ctx);
      }
      unsigned int finished = 0, at_block = 0;
      for (const auto& f : fibers) {
        finished += f.done ? 1 : 0;
        at_block += (!f.done && f.wait == 1) ? 1 : 0;
      }
      if (finished == block) break;
      bool released = false;
      // A warp whose 32 lanes all wait at a warp barrier goes on.
      for (unsigned int w0 = 0; w0 < block; w0 += kWarpSize) {
        const unsigned int w1 = w0 + kWarpSize < block ? w0 + kWarpSize : block;
        unsigned int waiting = 0;
        for (unsigned int t = w0; t < w1; ++t) waiting += (!fibers[t].done && fibers[t].wait == 2) ? 1 : 0;
        if (waiting == 0) continue;
        if (waiting != kWarpSize)
          throw std::runtime_error("chy_emu: block " + std::to_string(b) + ", warp " + std::to_string(w0 / kWarpSize) +
                                   ": " + std::to_string(waiting) + " of 32 lanes wait in a shuffle while the others "
                                   "have finished or wait elsewhere (divergent shuffle)");
        for (unsigned int t = w0; t < w1; ++t) fibers[t].wait = 0;
        ++s.warp_barriers;
        released = true;
      }
      if (released) continue;
      if (finished != 0 || at_block != block)
        throw std::runtime_error("chy_emu: block " + std::to_string(b) + ": " + std::to_string(at_block) +
                                 " threads wait at __syncthreads() while " + std::to_string(finished) +
                                 " others finished (divergent barrier)");
      for (auto& f : fibers) f.wait = 0;
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
inline double __shfl_sync(unsigned int /*mask: all lanes*/, double v, int src) { return chy_emu::shfl(v, src); }
inline double __shfl_xor_sync(unsigned int /*mask: all lanes*/, double v, int lane_mask) {
  return chy_emu::shfl(v, (chy_emu::threadIdx.x % chy_emu::kWarpSize) ^ static_cast<unsigned int>(lane_mask));
}
