// The CUDA kernels and their launch, free of ATen so that they also compile as host C++ under
// cuda_emulation.h (the test build that runs them on the CPU; see tests/test_cuda_emulation.py).
//
// One thread per datapoint running the shared per-datapoint math, in a grid-stride loop over the
// batch: the grid is at most what the device keeps resident (regularizer_cuda.cu asks the
// occupancy API), so the per-thread scratch is sized to the threads, not to the batch. Each block
// first computes the call's scalars (RegParams) from nu in device memory, its threads sharing the
// 2d special-function terms, so that no kernel argument depends on nu's value: nothing waits for
// the host, and a captured CUDA graph reads the current nu at every replay.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../regularizer_math.h"

// A launch: <<<>>> under nvcc, the emulator's loops over blocks and threads otherwise. `kernel` is
// a variable holding the instantiation (a template-id's commas would split the macro's arguments).
#ifdef CHY_CUDA_EMULATION
#define CHY_LAUNCH(kernel, grid, stream, ...) ::chy_emu::launch((grid), kThreads, [&] { kernel(__VA_ARGS__); })
#else
#define CHY_LAUNCH(kernel, grid, stream, ...) kernel<<<(grid), kThreads, 0, (stream)>>>(__VA_ARGS__)
#endif

namespace chyvae_ext {
namespace cuda_kernels {

constexpr int kThreads = 128;  // a power of two (the block reduction halves it)

// nu: in device memory, float32 or float64 (one pointer set), or already turned into the call's
// scalars on the host (host_params, when nu was a CPU tensor: a fixed value, as torch treats a 0-d
// CPU tensor given with CUDA tensors).
struct NuPtr {
  const float* f;
  const double* d;
  bool on_host;
  RegParams host_params;
  CHY_HD double read() const { return d != nullptr ? *d : static_cast<double>(*f); }
};

// The call's scalars. From the host's when nu was on the CPU (the same branch for the whole grid,
// so no barrier is skipped by part of a block). Otherwise computed by the whole block from nu in
// device memory: thread t computes the constant's terms t, t + 128, ...; thread 0 adds them and
// finishes. Every thread must call it.
__device__ inline RegParams block_params(const RegConfig& c, const NuPtr& nu, bool backward) {
  if (nu.on_host) return nu.host_params;
  __shared__ double partial[kThreads];
  __shared__ RegParams shared_params;
  const double nu_v = nu.read();
  double t = 0.0;
  if (c.constants)
    for (int i = static_cast<int>(threadIdx.x); i < c.d; i += kThreads) t += reg_const_term(nu_v, c.K, i, backward);
  partial[threadIdx.x] = t;
  __syncthreads();
  if (threadIdx.x == 0) {  // d <= 128 in practice: at most one term a thread, a short serial sum
    double sum = 0.0;
    const int used = c.d < kThreads ? c.d : kThreads;
    for (int i = 0; i < used; ++i) sum += partial[i];
    shared_params = reg_params_finish(c, nu_v, sum, backward);
  }
  __syncthreads();
  return shared_params;
}

// Doubles of scratch per thread: the K = 1 isotropic fast path needs d + 6 only when it has no
// `saved` buffer to work in (forward without saving, backward recomputing); the general path needs
// reg_workspace_size.
inline int64_t workspace_per_thread(const RegConfig& c, bool iso1, bool has_saved) {
  if (iso1) return has_saved ? 0 : reg_iso1_saved_size(c.d);
  return reg_workspace_size(c.d, c.K);
}

// saved: reg_iso1_saved_size(d) doubles per datapoint on the fast path (written), or nullptr.
// DS: d at compile time on the fast path (see the CPU backend), 0 otherwise.
template <int DS, typename T>
__global__ void __launch_bounds__(kThreads)
    regularizer_forward_kernel(RegConfig cfg, NuPtr nu, int64_t n, const T* __restrict__ mu,
                               const T* __restrict__ L, const T* __restrict__ z, const double* __restrict__ prec,
                               double* __restrict__ ws, int64_t ws_size, double* __restrict__ saved,
                               T* __restrict__ out) {
  const RegParams p = block_params(cfg, nu, false);
  const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double* w = ws + tid * ws_size;
  for (int64_t i = tid; i < n; i += step) {
    if (prec == nullptr && p.K == 1) {
      double* si = saved != nullptr ? saved + i * reg_iso1_saved_size(p.d) : w;
      out[i] = static_cast<T>(reg_forward_point_iso1<DS>(p, mu + i * d, L + i * d * d, z + i * d, si));
    } else {
      out[i] = static_cast<T>(reg_forward_point(p, mu + i * d, L + i * d * d, z + i * kd, prec, w));
    }
  }
}

template <int DS, typename T>
__global__ void __launch_bounds__(kThreads)
    regularizer_backward_kernel(RegConfig cfg, NuPtr nu, int64_t n, const T* __restrict__ grad, int64_t grad_stride,
                                const T* __restrict__ mu, const T* __restrict__ L, const T* __restrict__ z,
                                const double* __restrict__ prec, const double* __restrict__ saved,
                                double* __restrict__ ws, int64_t ws_size, T* __restrict__ g_mu,
                                T* __restrict__ g_l, T* __restrict__ g_z, double* __restrict__ g_nu) {
  const RegParams p = block_params(cfg, nu, true);
  const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double* w = ws + tid * ws_size;
  for (int64_t i = tid; i < n; i += step) {
    const double g = static_cast<double>(grad[i * grad_stride]);
    if (prec == nullptr && p.K == 1) {
      const double* si = saved != nullptr ? saved + i * reg_iso1_saved_size(p.d) : nullptr;
      g_nu[i] = reg_backward_point_iso1<DS>(p, g, mu + i * d, L + i * d * d, z + i * d, si, w, g_mu + i * d,
                                            g_l + i * d * d, g_z + i * d);
    } else {
      g_nu[i] = reg_backward_point(p, g, mu + i * d, L + i * d * d, z + i * kd, prec, w, g_mu + i * d,
                                   g_l + i * d * d, g_z + i * kd);
    }
  }
}

// Blocks for n datapoints, at most max_blocks (what stays resident) and at least 1.
inline unsigned int grid_for(int64_t n, int64_t max_blocks) {
  const int64_t want = (n + kThreads - 1) / kThreads;
  const int64_t cap = max_blocks > 0 ? max_blocks : 1;
  return static_cast<unsigned int>(want < cap ? (want > 0 ? want : 1) : cap);
}

// Calls fn with d as a compile-time constant where the fast path specialises it, else 0.
template <typename Fn>
void with_static_d(bool iso1, int d, Fn&& fn) {
  if (iso1 && d == 10) return fn(std::integral_constant<int, 10>());
  fn(std::integral_constant<int, 0>());
}

}  // namespace cuda_kernels
}  // namespace chyvae_ext
