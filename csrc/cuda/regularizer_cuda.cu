// CUDA backend: one thread per datapoint running the shared per-datapoint math.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "../regularizer_host.h"
#include "../regularizer_math.h"

namespace chyvae_ext {
namespace {

constexpr int kThreads = 128;

// saved: reg_iso1_saved_size(d) doubles per datapoint on the fast path (written), else unused.
// DS: d at compile time on the fast path (see the CPU backend), 0 otherwise.
template <int DS, typename T>
__global__ void regularizer_forward_kernel(RegParams p, int64_t n, const T* __restrict__ mu,
                                           const T* __restrict__ L, const T* __restrict__ z,
                                           const double* __restrict__ prec, double* __restrict__ ws,
                                           int64_t ws_size, double* __restrict__ saved, T* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
  double* w = ws + i * ws_size;
  if (prec == nullptr && p.K == 1) {
    double* si = saved != nullptr ? saved + i * reg_iso1_saved_size(p.d) : w;
    out[i] = static_cast<T>(reg_forward_point_iso1<DS>(p, mu + i * d, L + i * d * d, z + i * d, si));
  } else {
    out[i] = static_cast<T>(reg_forward_point(p, mu + i * d, L + i * d * d, z + i * kd, prec, w));
  }
}

template <int DS, typename T>
__global__ void regularizer_backward_kernel(RegParams p, int64_t n, const T* __restrict__ grad,
                                            int64_t grad_stride, const T* __restrict__ mu,
                                            const T* __restrict__ L, const T* __restrict__ z,
                                            const double* __restrict__ prec, const double* __restrict__ saved,
                                            double* __restrict__ ws, int64_t ws_size, T* __restrict__ g_mu,
                                            T* __restrict__ g_l, T* __restrict__ g_z, double* __restrict__ g_nu) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
  const double g = static_cast<double>(grad[i * grad_stride]);
  double* w = ws + i * ws_size;
  if (prec == nullptr && p.K == 1) {
    const double* si = saved != nullptr ? saved + i * reg_iso1_saved_size(p.d) : nullptr;
    g_nu[i] = reg_backward_point_iso1<DS>(p, g, mu + i * d, L + i * d * d, z + i * d, si, w, g_mu + i * d,
                                      g_l + i * d * d, g_z + i * d);
  } else {
    g_nu[i] = reg_backward_point(p, g, mu + i * d, L + i * d * d, z + i * kd, prec, w, g_mu + i * d,
                                 g_l + i * d * d, g_z + i * kd);
  }
}

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>((n + kThreads - 1) / kThreads); }

// Calls fn with d as a compile-time constant where the fast path specialises it (as on the CPU), else 0.
template <typename Fn>
void with_static_d(const PreparedCall& call, Fn&& fn) {
  if (uses_iso1(call) && call.params.d == 10) return fn(std::integral_constant<int, 10>());
  fn(std::integral_constant<int, 0>());
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& mu_in, const at::Tensor& L_in,
                                                const at::Tensor& z_in, const at::Tensor& nu,
                                                const std::optional<at::Tensor>& prior_prec, double prior_scale,
                                                double prior_logdet, bool constants, bool save) {
  const c10::cuda::CUDAGuard guard(mu_in.device());
  ForwardCall f = begin_forward(mu_in, L_in, z_in, nu, prior_prec, prior_scale, prior_logdet, constants, save);
  const int64_t n = f.mu.size(0);
  if (n == 0) return {f.out, f.saved};
  // The fast path keeps its scratch in `saved` when there is one; otherwise scratch per thread.
  const bool need_ws = !(uses_iso1(f.call) && save);
  const int64_t ws_size = need_ws ? reg_workspace_size(f.call.params.d, f.call.params.K) : 0;
  at::Tensor ws = at::empty({n * ws_size}, f.mu.options().dtype(at::kDouble));
  const double* prec = f.call.prec.defined() ? f.call.prec.const_data_ptr<double>() : nullptr;
  double* saved_p = f.saved.numel() > 0 ? f.saved.mutable_data_ptr<double>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(f.mu.scalar_type(), "regularizer_cuda", [&] {
    with_static_d(f.call, [&](auto ds) {
      regularizer_forward_kernel<decltype(ds)::value, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          f.call.params, n, f.mu.const_data_ptr<scalar_t>(), f.L.const_data_ptr<scalar_t>(),
          f.z.const_data_ptr<scalar_t>(), prec, ws.mutable_data_ptr<double>(), ws_size, saved_p,
          f.out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {f.out, f.saved};
}

at::Tensor regularizer_cuda(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                            const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet,
                            bool constants) {
  return std::get<0>(forward_impl(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, false));
}

std::tuple<at::Tensor, at::Tensor> regularizer_forward_cuda(const at::Tensor& mu, const at::Tensor& L,
                                                            const at::Tensor& z, const at::Tensor& nu,
                                                            const std::optional<at::Tensor>& prior_prec,
                                                            double prior_scale, double prior_logdet, bool constants) {
  return forward_impl(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> regularizer_backward_cuda(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
    const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet, bool constants,
    const std::optional<at::Tensor>& saved) {
  const c10::cuda::CUDAGuard guard(mu.device());
  BackwardCall b = begin_backward(grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved);
  const int64_t n = b.mu.size(0);
  if (n == 0) return {b.g_mu, b.g_l, b.g_z, b.g_nu};
  const bool need_ws = !(uses_iso1(b.call) && b.saved != nullptr);
  const int64_t ws_size = need_ws ? reg_workspace_size(b.call.params.d, b.call.params.K) : 0;
  at::Tensor ws = at::empty({n * ws_size}, b.mu.options().dtype(at::kDouble));
  const double* prec = b.call.prec.defined() ? b.call.prec.const_data_ptr<double>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(b.mu.scalar_type(), "regularizer_backward_cuda", [&] {
    with_static_d(b.call, [&](auto ds) {
      regularizer_backward_kernel<decltype(ds)::value, scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          b.call.params, n, b.grad.const_data_ptr<scalar_t>(), b.grad.stride(0), b.mu.const_data_ptr<scalar_t>(),
          b.L.const_data_ptr<scalar_t>(), b.z.const_data_ptr<scalar_t>(), prec, b.saved,
          ws.mutable_data_ptr<double>(), ws_size, b.g_mu.mutable_data_ptr<scalar_t>(),
          b.g_l.mutable_data_ptr<scalar_t>(), b.g_z.mutable_data_ptr<scalar_t>(), b.g_nu.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {b.g_mu, b.g_l, b.g_z, b.g_nu};
}

}  // namespace

TORCH_LIBRARY_IMPL(chyvae_ext, CUDA, m) {
  m.impl("regularizer", &regularizer_cuda);
  m.impl("regularizer_forward", &regularizer_forward_cuda);
  m.impl("regularizer_backward", &regularizer_backward_cuda);
}

}  // namespace chyvae_ext
