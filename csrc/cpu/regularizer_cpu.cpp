// CPU backend: the shared per-datapoint math, parallel over the batch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../regularizer_host.h"
#include "../regularizer_math.h"

// The inner loops are written for SIMD; a build for baseline x86-64 would only use SSE2. GCC's
// target_clones compiles each chunk function for AVX2+FMA (x86-64-v3) and the baseline, and picks
// one at load time for the running CPU. (An AVX-512 clone measured slower: rows of 10 to 32
// doubles are too short for 8-wide vectors.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CHY_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CHY_CPU_CLONES
#endif

namespace chyvae_ext {
namespace {

// Datapoints per parallel task: below a few hundred thousand flops a thread hand-off costs more
// than it saves.
int64_t grain_for(int64_t d, int64_t k) { return std::max<int64_t>(1, 65536 / (d * (d + 4 * k))); }

// The fast path, with d fixed at compile time for d = 10 and 32 (docs/math.md 2's latent sizes) and at
// run time otherwise. With d fixed, the rows run as whole quads of columns whose lower-triangle
// masks are constants (reg_*_point_iso1_quads: faster per datapoint than the scalar masked rows at
// d = 10 and the run-time-d rows at d = 32; benchmarks/RESULTS.md). Without GCC's vector extension (CHY_QUAD), d = 10 uses the
// scalar masked rows and d = 32 the run-time path.
template <int DS, typename T>
CHY_HD void forward_iso1(const RegParams& p, int64_t begin, int64_t end, const T* mu, const T* L, const T* z, T* out,
                         double* saved, double* ws) {
  const int64_t d = p.d, ss = reg_iso1_saved_size(p.d);
  for (int64_t i = begin; i < end; ++i) {
    double* si = saved != nullptr ? saved + i * ss : ws;
#ifdef CHY_QUAD
    if (DS > 0) {
      out[i] = static_cast<T>(reg_forward_point_iso1_quads<DS>(p, mu + i * d, L + i * d * d, z + i * d, si));
      continue;
    }
#endif
    out[i] = static_cast<T>(reg_forward_point_iso1<DS>(p, mu + i * d, L + i * d * d, z + i * d, si));
  }
}

template <int DS, typename T>
CHY_HD void backward_iso1(const RegParams& p, int64_t begin, int64_t end, const T* grad, int64_t grad_stride,
                          const T* mu, const T* L, const T* z, const double* saved, double* ws, T* g_mu, T* g_l,
                          T* g_z, double* g_nu) {
  const int64_t d = p.d, ss = reg_iso1_saved_size(p.d);
  for (int64_t i = begin; i < end; ++i) {
    const double g = static_cast<double>(grad[i * grad_stride]);
    const double* si = saved != nullptr ? saved + i * ss : nullptr;
#ifdef CHY_QUAD
    if (DS > 0) {
      g_nu[i] = reg_backward_point_iso1_quads<DS>(p, g, mu + i * d, L + i * d * d, z + i * d, si, ws, g_mu + i * d,
                                                  g_l + i * d * d, g_z + i * d);
      continue;
    }
#endif
    g_nu[i] = reg_backward_point_iso1<DS>(p, g, mu + i * d, L + i * d * d, z + i * d, si, ws, g_mu + i * d,
                                          g_l + i * d * d, g_z + i * d);
  }
}

template <typename T>
CHY_HD void forward_chunk(const RegParams& p, int64_t begin, int64_t end, const T* mu, const T* L, const T* z,
                          const double* prec, T* out, double* saved) {
  std::vector<double> ws(reg_workspace_size(p.d, p.K));
  const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
  if (prec == nullptr && p.K == 1) {
    switch (p.d) {
      case 10: return forward_iso1<10>(p, begin, end, mu, L, z, out, saved, ws.data());
#ifdef CHY_QUAD
      case 32: return forward_iso1<32>(p, begin, end, mu, L, z, out, saved, ws.data());
#endif
      default: return forward_iso1<0>(p, begin, end, mu, L, z, out, saved, ws.data());
    }
  }
  for (int64_t i = begin; i < end; ++i)
    out[i] = static_cast<T>(reg_forward_point(p, mu + i * d, L + i * d * d, z + i * kd, prec, ws.data()));
}

template <typename T>
CHY_HD void backward_chunk(const RegParams& p, int64_t begin, int64_t end, const T* grad, int64_t grad_stride,
                           const T* mu, const T* L, const T* z, const double* prec, const double* saved, T* g_mu,
                           T* g_l, T* g_z, double* g_nu) {
  std::vector<double> ws(reg_workspace_size(p.d, p.K));
  const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
  if (prec == nullptr && p.K == 1) {
    switch (p.d) {
      case 10: return backward_iso1<10>(p, begin, end, grad, grad_stride, mu, L, z, saved, ws.data(), g_mu, g_l, g_z, g_nu);
#ifdef CHY_QUAD
      case 32: return backward_iso1<32>(p, begin, end, grad, grad_stride, mu, L, z, saved, ws.data(), g_mu, g_l, g_z, g_nu);
#endif
      default: return backward_iso1<0>(p, begin, end, grad, grad_stride, mu, L, z, saved, ws.data(), g_mu, g_l, g_z, g_nu);
    }
  }
  for (int64_t i = begin; i < end; ++i)
    g_nu[i] = reg_backward_point(p, static_cast<double>(grad[i * grad_stride]), mu + i * d, L + i * d * d,
                                 z + i * kd, prec, ws.data(), g_mu + i * d, g_l + i * d * d, g_z + i * kd);
}

// Non-template entry points, one per dtype, so that target_clones can version them.
#define CHY_DEFINE_CHUNKS(T)                                                                                   \
  CHY_CPU_CLONES void forward_chunks(const RegParams& p, int64_t b, int64_t e, const T* mu, const T* L,       \
                                     const T* z, const double* prec, T* out, double* saved) {                 \
    forward_chunk<T>(p, b, e, mu, L, z, prec, out, saved);                                                     \
  }                                                                                                            \
  CHY_CPU_CLONES void backward_chunks(const RegParams& p, int64_t b, int64_t e, const T* grad, int64_t gs,     \
                                      const T* mu, const T* L, const T* z, const double* prec,                 \
                                      const double* saved, T* g_mu, T* g_l, T* g_z, double* g_nu) {            \
    backward_chunk<T>(p, b, e, grad, gs, mu, L, z, prec, saved, g_mu, g_l, g_z, g_nu);                         \
  }
CHY_DEFINE_CHUNKS(float)
CHY_DEFINE_CHUNKS(double)
#undef CHY_DEFINE_CHUNKS

// Calls fn(params, begin, end) over [begin, end): once with the call's scalars, or, for a
// per-datapoint nu, once per run of equal values (an ensemble's datapoints come grouped by member,
// so a chunk computes the scalars about once per member).
template <typename Fn>
void over_runs(const PreparedCall& call, bool backward, int64_t begin, int64_t end, Fn&& fn) {
  if (!call.nu_rows) return fn(call.params, begin, end);
  auto nu_at = [&](int64_t i) { return call.nu_d != nullptr ? call.nu_d[i] : static_cast<double>(call.nu_f[i]); };
  for (int64_t i = begin; i < end;) {
    const double v = nu_at(i);
    int64_t j = i + 1;
    while (j < end && nu_at(j) == v) ++j;
    fn(host_params(call.config, v, backward), i, j);
    i = j;
  }
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& mu_in, const at::Tensor& L_in,
                                                const at::Tensor& z_in, const at::Tensor& nu,
                                                const std::optional<at::Tensor>& prior_prec, double prior_scale,
                                                double prior_logdet, bool constants, bool save) {
  ForwardCall f = begin_forward(mu_in, L_in, z_in, nu, prior_prec, prior_scale, prior_logdet, constants, save);
  const RegConfig& cfg = f.call.config;
  const int64_t n = f.mu.size(0);
  if (n == 0) return {f.out, f.saved};
  const double* prec = f.call.prec.defined() ? f.call.prec.const_data_ptr<double>() : nullptr;
  double* saved_p = f.saved.numel() > 0 ? f.saved.mutable_data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(f.mu.scalar_type(), "regularizer_cpu", [&] {
    const scalar_t* mu_p = f.mu.const_data_ptr<scalar_t>();
    const scalar_t* l_p = f.L.const_data_ptr<scalar_t>();
    const scalar_t* z_p = f.z.const_data_ptr<scalar_t>();
    scalar_t* out_p = f.out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, grain_for(cfg.d, cfg.K), [&](int64_t begin, int64_t end) {
      over_runs(f.call, false, begin, end, [&](const RegParams& rp, int64_t b, int64_t e) {
        forward_chunks(rp, b, e, mu_p, l_p, z_p, prec, out_p, saved_p);
      });
    });
  });
  return {f.out, f.saved};
}

at::Tensor regularizer_cpu(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                           const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet,
                           bool constants) {
  return std::get<0>(forward_impl(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, false));
}

std::tuple<at::Tensor, at::Tensor> regularizer_forward_cpu(const at::Tensor& mu, const at::Tensor& L,
                                                           const at::Tensor& z, const at::Tensor& nu,
                                                           const std::optional<at::Tensor>& prior_prec,
                                                           double prior_scale, double prior_logdet, bool constants) {
  return forward_impl(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> regularizer_backward_cpu(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
    const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet, bool constants,
    const std::optional<at::Tensor>& saved) {
  BackwardCall b = begin_backward(grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved);
  const RegConfig& cfg = b.call.config;
  const int64_t n = b.mu.size(0);
  if (n == 0) return {b.g_mu, b.g_l, b.g_z, b.g_nu};
  const double* prec = b.call.prec.defined() ? b.call.prec.const_data_ptr<double>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(b.mu.scalar_type(), "regularizer_backward_cpu", [&] {
    const scalar_t* mu_p = b.mu.const_data_ptr<scalar_t>();
    const scalar_t* l_p = b.L.const_data_ptr<scalar_t>();
    const scalar_t* z_p = b.z.const_data_ptr<scalar_t>();
    const scalar_t* g_p = b.grad.const_data_ptr<scalar_t>();
    const int64_t g_stride = b.grad.stride(0);
    scalar_t* gmu_p = b.g_mu.mutable_data_ptr<scalar_t>();
    scalar_t* gl_p = b.g_l.mutable_data_ptr<scalar_t>();
    scalar_t* gz_p = b.g_z.mutable_data_ptr<scalar_t>();
    double* gnu_p = b.g_nu.mutable_data_ptr<double>();
    at::parallel_for(0, n, grain_for(cfg.d, cfg.K), [&](int64_t begin, int64_t end) {
      over_runs(b.call, true, begin, end, [&](const RegParams& rp, int64_t b0, int64_t e0) {
        backward_chunks(rp, b0, e0, g_p, g_stride, mu_p, l_p, z_p, prec, b.saved, gmu_p, gl_p, gz_p, gnu_p);
      });
    });
  });
  return {b.g_mu, b.g_l, b.g_z, b.g_nu};
}

}  // namespace

TORCH_LIBRARY_IMPL(chyvae_ext, CPU, m) {
  m.impl("regularizer", &regularizer_cpu);
  m.impl("regularizer_forward", &regularizer_forward_cpu);
  m.impl("regularizer_backward", &regularizer_backward_cpu);
}

}  // namespace chyvae_ext
