// The CUDA kernels and their launch, free of ATen so that they also compile as host C++ under
// cuda_emulation.h (the test build that runs them on the CPU; see tests/test_cuda_emulation.py).
//
// Two layouts of the shared per-datapoint math, each in a grid-stride loop over the batch: a thread
// per datapoint (every path), and for the K = 1 isotropic fast path at d <= 32 a warp per datapoint
// (a lane per column of L; "unrolled" keeps every row in registers). The grid is at most what the
// device keeps resident (regularizer_cuda.cu asks the occupancy API), so the per-thread scratch is
// sized to the threads, not to the batch. Each block
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
// rows: one value per datapoint (an ensemble's members), read as read(i); the kernels compute each
// datapoint's scalars (block_params is then not called).
struct NuPtr {
  const float* f;
  const double* d;
  bool on_host;
  RegParams host_params;
  bool rows;
  CHY_HD double read(int64_t i = 0) const { return d != nullptr ? d[i] : static_cast<double>(f[i]); }
};

// Per-datapoint nu, a thread per datapoint: the scalars of datapoint i, recomputed only when its nu
// differs from that of the thread's previous datapoint (a NaN nu is recomputed, and stays NaN).
struct RowParamsCache {
  double nu;
  RegParams p;
};

__device__ inline const RegParams& row_params(const RegConfig& c, const NuPtr& nu, int64_t i, bool backward,
                                              RowParamsCache& cache) {
  const double v = nu.read(i);
  if (!(v == cache.nu)) {
    cache.p = reg_params_finish(c, v, reg_const_sum(c, v, backward), backward);
    cache.nu = v;
  }
  return cache.p;
}

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

// What every kernel starts from: the call's scalars (block_params) for a 0-d nu; for a per-datapoint
// nu none yet (row_params / warp_row_params compute each datapoint's). The branch is the same for
// the whole grid, so no block skips block_params' barriers in part. Every thread must call it.
__device__ inline RowParamsCache start_params(const RegConfig& c, const NuPtr& nu, bool backward) {
  return RowParamsCache{NAN, nu.rows ? RegParams{} : block_params(c, nu, backward)};
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
  RowParamsCache cache = start_params(cfg, nu, false);
  const int64_t d = cfg.d, kd = static_cast<int64_t>(cfg.K) * cfg.d;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double* w = ws + tid * ws_size;
  for (int64_t i = tid; i < n; i += step) {
    const RegParams& p = nu.rows ? row_params(cfg, nu, i, false, cache) : cache.p;
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
  RowParamsCache cache = start_params(cfg, nu, true);
  const int64_t d = cfg.d, kd = static_cast<int64_t>(cfg.K) * cfg.d;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double* w = ws + tid * ws_size;
  for (int64_t i = tid; i < n; i += step) {
    const RegParams& p = nu.rows ? row_params(cfg, nu, i, true, cache) : cache.p;
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

// ---- A warp per datapoint: the K = 1 isotropic fast path for d <= 32 -----------------------------
// Lane j holds column j: each row of L is one coalesced read (thread-per-datapoint reads are 4 d^2
// bytes apart across a warp), and a batch of B datapoints runs 32 B threads instead of B. The
// same R and gradients as reg_forward_point_iso1 / reg_backward_point_iso1 (sums in another order).

constexpr int kWarp = 32;

__device__ inline double warp_sum(double v) {
  for (int m = kWarp / 2; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// The forward's sums, all lanes alike, from this lane's column j: w_j = sum_i L_ij p z_i, its sum of
// squares ss and its diagonal entry.
__device__ inline RegIso1Sums warp_iso1_finish(const RegParams& p, int lane, double zj, double mj, double w, double ss,
                                               double ldiag, double& sum_log_l) {
  const int d = p.d;
  // One log per lane; a diagonal entry that is not > 0 (or NaN) makes the sum NaN, as on the CPU.
  sum_log_l = warp_sum(lane < d ? (ldiag > 0.0 ? log(ldiag) : NAN) : 0.0);
  RegIso1Sums r;
  r.a = 1.0 + p.p_iso * warp_sum(zj * zj);
  r.m = p.p_iso * warp_sum(mj * zj);
  r.ww = warp_sum(w * w);
  r.ss = warp_sum(ss);
  r.mm = warp_sum(mj * mj);
  r.log_a = log(r.a);
  return r;
}

// Row i's part of the forward's sums for this lane's column: l = L_i,lane (0 above the diagonal).
// Every lane must call it (a shuffle).
__device__ inline void warp_iso1_row(const RegParams& p, int lane, int i, double l, double zj, double& w, double& ss,
                                     double& ldiag) {
  w += l * (p.p_iso * __shfl_sync(0xffffffffu, zj, i));
  ss += l * l;
  if (lane == i) ldiag = l;
}

// Every row of this lane's column in registers: l[i] = L_i,lane for lane <= i < d, else 0. The 32 rows
// are unrolled at compile time (those past d predicated off), so all the loads are in flight at once.
template <typename T>
__device__ inline void warp_load_rows(int d, int lane, const T* L, double (&l)[kWarp]) {
#pragma unroll
  for (int i = 0; i < kWarp; ++i) l[i] = (i < d && lane <= i) ? static_cast<double>(L[i * d + lane]) : 0.0;
}

// The forward's sums from rows already in registers (the "unrolled" layout).
__device__ inline RegIso1Sums warp_iso1_sums_rows(const RegParams& p, int lane, const double (&l)[kWarp], double zj,
                                                  double mj, double& w, double& sum_log_l) {
  double ss = 0.0, ldiag = 1.0;
  w = 0.0;
#pragma unroll
  for (int i = 0; i < kWarp; ++i)
    if (i < p.d) warp_iso1_row(p, lane, i, l[i], zj, w, ss, ldiag);  // i < d: the same for every lane
  return warp_iso1_finish(p, lane, zj, mj, w, ss, ldiag, sum_log_l);
}

// The forward's sums of datapoint (mu, L, z); w: this lane's w_j. Unrolled: the rows loaded at once
// (warp_load_rows); otherwise row after row.
template <bool Unrolled, typename T>
__device__ inline RegIso1Sums warp_iso1_sums(const RegParams& p, int lane, const T* mu, const T* L, const T* z,
                                             double& w, double& sum_log_l) {
  const int d = p.d;
  const double zj = lane < d ? static_cast<double>(z[lane]) : 0.0;
  const double mj = lane < d ? static_cast<double>(mu[lane]) : 0.0;
  if constexpr (Unrolled) {
    double l[kWarp];
    warp_load_rows(d, lane, L, l);
    return warp_iso1_sums_rows(p, lane, l, zj, mj, w, sum_log_l);
  } else {
    double ss = 0.0, ldiag = 1.0;
    w = 0.0;
    for (int i = 0; i < d; ++i)
      warp_iso1_row(p, lane, i, lane <= i ? static_cast<double>(L[i * d + lane]) : 0.0, zj, w, ss, ldiag);
    return warp_iso1_finish(p, lane, zj, mj, w, ss, ldiag, sum_log_l);
  }
}

// Row sums as a reduce-scatter: lane j holds v[i] for rows i = 0..31; afterwards lane i returns
// sum_j v_j[i]. Each round halves the rows a lane keeps (lanes with bit m clear keep the lower half)
// and adds the partner's (lane ^ m) copy of them: 16 + 8 + 4 + 2 + 1 = 31 shuffles in all, against
// 5 for each of 32 rows with a warp_sum per row. v is overwritten.
// (Rounds as templates, so that every index is a compile-time constant and v stays in registers.)
template <int M>
__device__ inline void warp_reduce_scatter_round(double (&v)[kWarp], int lane) {
  const bool upper = (lane & M) != 0;
#pragma unroll
  for (int k = 0; k < M; ++k) {
    const double send = upper ? v[k] : v[k + M];
    const double keep = upper ? v[k + M] : v[k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, send, M);
  }
  if constexpr (M > 1) warp_reduce_scatter_round<M / 2>(v, lane);
}

__device__ inline double warp_reduce_scatter(double (&v)[kWarp], int lane) {
  warp_reduce_scatter_round<kWarp / 2>(v, lane);
  return v[0];
}

// Per-datapoint nu, a warp per datapoint: lane j adds the constant's term j (d <= 32: one each),
// recomputed only when datapoint i's nu differs from the warp's previous one. Every lane must call
// it (all see the same nu, so the branch is uniform).
__device__ inline void warp_row_params(const RegConfig& c, const NuPtr& nu, int64_t i, bool backward, int lane,
                                       RowParamsCache& cache) {
  const double v = nu.read(i);
  if (v == cache.nu) return;
  double t = 0.0;
  if (c.constants)
    for (int j = lane; j < c.d; j += kWarp) t += reg_const_term(v, c.K, j, backward);
  cache.p = reg_params_finish(c, v, warp_sum(t), backward);
  cache.nu = v;
}

template <bool Unrolled, typename T>
__global__ void __launch_bounds__(kThreads)
    regularizer_forward_warp_kernel(RegConfig cfg, NuPtr nu, int64_t n, const T* __restrict__ mu,
                                    const T* __restrict__ L, const T* __restrict__ z, double* __restrict__ saved,
                                    T* __restrict__ out) {
  RowParamsCache cache = start_params(cfg, nu, false);
  const RegParams& p = cache.p;
  const int64_t d = cfg.d;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t i = warp; i < n; i += warps) {  // the same trip count for every lane of a warp
    if (nu.rows) warp_row_params(cfg, nu, i, false, lane, cache);
    double w, sum_log_l;
    const RegIso1Sums r = warp_iso1_sums<Unrolled>(p, lane, mu + i * d, L + i * d * d, z + i * d, w, sum_log_l);
    if (saved != nullptr) {
      double* si = saved + i * reg_iso1_saved_size(p.d);
      if (lane < d) si[lane] = w;
      if (lane == 0) {
        RegIso1Sums stored = r;
        reg_iso1_store(p.d, stored, si);
      }
    }
    if (lane == 0) out[i] = static_cast<T>(reg_iso1_value_from(p, p.d, r, sum_log_l));
  }
}

// Row `row` (< d) of dR/dL for this lane's column j: cl L_ij + cw w_j below and on the diagonal, plus
// g / L_jj on it. l = L_row,j (0 above the diagonal). Every lane must call it (a shuffle).
template <typename T>
__device__ inline void store_grad_l_row(int lane, int row, int d, double l, double w, double zj, double pi,
                                        double inv_a, double scale_l, double cl, double g, T* gl_i) {
  const double vi = pi * __shfl_sync(0xffffffffu, zj, row) * inv_a;  // V = u / a
  const double cw = -scale_l * vi;                                   // dR/dL_ij = cl L_ij + cw w_j
  double gl = lane <= row ? cl * l + cw * w : 0.0;
  if (lane == row) gl += g / l;
  if (lane < d) gl_i[row * d + lane] = static_cast<T>(gl);
}

template <bool Unrolled, typename T>
__global__ void __launch_bounds__(kThreads)
    regularizer_backward_warp_kernel(RegConfig cfg, NuPtr nu, int64_t n, const T* __restrict__ grad,
                                     int64_t grad_stride, const T* __restrict__ mu, const T* __restrict__ L,
                                     const T* __restrict__ z, const double* __restrict__ saved,
                                     T* __restrict__ g_mu, T* __restrict__ g_l, T* __restrict__ g_z,
                                     double* __restrict__ g_nu) {
  RowParamsCache cache = start_params(cfg, nu, true);
  const RegParams& p = cache.p;
  const int d = cfg.d;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t i = warp; i < n; i += warps) {
    if (nu.rows) warp_row_params(cfg, nu, i, true, lane, cache);
    const double pi = p.p_iso;
    const T* mu_i = mu + i * d;
    const T* z_i = z + i * d;
    const T* L_i = L + i * static_cast<int64_t>(d) * d;
    T* gl_i = g_l + i * static_cast<int64_t>(d) * d;
    const double g = static_cast<double>(grad[i * grad_stride]);
    const double zj = lane < d ? static_cast<double>(z_i[lane]) : 0.0;
    const double mj = lane < d ? static_cast<double>(mu_i[lane]) : 0.0;
    double l_rows[Unrolled ? kWarp : 1];  // Unrolled: this lane's column, every row at once
    if constexpr (Unrolled) warp_load_rows(d, lane, L_i, l_rows);
    double w;
    RegIso1Sums r;
    if (saved != nullptr) {
      const double* si = saved + i * reg_iso1_saved_size(d);
      r = reg_iso1_load(d, si);
      w = lane < d ? si[lane] : 0.0;
    } else {
      double unused;
      if constexpr (Unrolled) r = warp_iso1_sums_rows(p, lane, l_rows, zj, mj, w, unused);
      else r = warp_iso1_sums<false>(p, lane, mu_i, L_i, z_i, w, unused);
    }
    const double inv_a = 1.0 / r.a;
    const double two_a = 2.0 * p.alpha, two_b = 2.0 * p.beta;
    const double scale_l = -two_b * g;
    const double cl = scale_l * pi;
    double y_mine = 0.0;  // y_j = sum_k L_jk w_k for this lane's row j
    if constexpr (Unrolled) {
#pragma unroll
      for (int row = 0; row < kWarp; ++row) {
        if (row < d) store_grad_l_row(lane, row, d, l_rows[row], w, zj, pi, inv_a, scale_l, cl, g, gl_i);
        l_rows[row] *= w;  // this lane's term of row's y
      }
      y_mine = warp_reduce_scatter(l_rows, lane);
    } else {
      for (int row = 0; row < d; ++row) {
        const double l = lane <= row ? static_cast<double>(L_i[row * d + lane]) : 0.0;
        const double y = warp_sum(l * w);
        if (lane == row) y_mine = y;
        store_grad_l_row(lane, row, d, l, w, zj, pi, inv_a, scale_l, cl, g, gl_i);
      }
    }
    if (lane < d) {
      const double vj = pi * zj * inv_a;
      const double y = y_mine + mj * r.m;
      const double e = pi * y + vj * (1.0 - (r.ww + r.m * r.m));  // E = P Y - V Q' + V
      g_z[i * d + lane] = static_cast<T>(g * (-two_a * vj + two_b * e * inv_a));
      g_mu[i * d + lane] = static_cast<T>(g * (-two_b * (pi * mj - vj * r.m)));
    }
    if (lane == 0) g_nu[i] = reg_iso1_dnu(p, d, g, r);
  }
}

// Which layout runs the K = 1 isotropic fast path: a warp per datapoint for d <= 32, a thread per
// datapoint above (set_cuda_kernel_variant overrides this, for measurements). auto picks the warp
// layout because it was the faster at every batch size and both d measured on a GPU (the table is
// in benchmarks/RESULTS.md). kUnrolled (the warp layout with the rows in registers and the
// backward's row sums by one reduce-scatter) has no GPU measurement yet, so auto does not pick it.
enum class Variant { kAuto = 0, kThread = 1, kWarp = 2, kUnrolled = 3 };

inline Variant& kernel_variant() {
  static Variant v = Variant::kAuto;
  return v;
}

inline bool use_warp_kernel(bool iso1, int d) {
  if (!iso1 || d > kWarp) return false;
  return kernel_variant() != Variant::kThread;
}

// Whether a warp-layout launch runs the unrolled kernels.
inline bool use_unrolled_rows() { return kernel_variant() == Variant::kUnrolled; }

// Blocks for n threads' work, at most max_blocks (what stays resident) and at least 1.
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
