#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../regularizer_host.h"
#include "../regularizer_math.h"

namespace chyvae_ext {
namespace {

// Datapoints per parallel task: enough work to amortise the scratch allocation.
int64_t grain_for(int64_t d) { return std::max<int64_t>(1, 4096 / (d * d)); }

at::Tensor regularizer_cpu(const at::Tensor& mu_in, const at::Tensor& L_in, const at::Tensor& z_in,
                           const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec,
                           double prior_scale, double prior_logdet, bool constants) {
  const PreparedCall call =
      prepare_regularizer(mu_in, L_in, z_in, nu, prior_prec, prior_scale, prior_logdet, constants);
  const RegParams p = call.params;
  const at::Tensor mu = mu_in.contiguous(), L = L_in.contiguous(), z = z_in.contiguous();
  const int64_t n = mu.size(0);
  at::Tensor out = at::empty({n}, mu.options());
  if (n == 0) return out;
  const double* prec = call.prec.defined() ? call.prec.const_data_ptr<double>() : nullptr;
  const int64_t ws_size = reg_workspace_size(p.d, p.K);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "regularizer_cpu", [&] {
    const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
    const scalar_t* l_p = L.const_data_ptr<scalar_t>();
    const scalar_t* z_p = z.const_data_ptr<scalar_t>();
    scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
    const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
    at::parallel_for(0, n, grain_for(d), [&](int64_t begin, int64_t end) {
      std::vector<double> ws(ws_size);
      for (int64_t i = begin; i < end; ++i) {
        out_p[i] = static_cast<scalar_t>(
            reg_forward_point(p, mu_p + i * d, l_p + i * d * d, z_p + i * kd, prec, ws.data()));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> regularizer_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& mu_in, const at::Tensor& L_in, const at::Tensor& z_in,
    const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec, double prior_scale,
    double prior_logdet, bool constants) {
  const PreparedCall call =
      prepare_regularizer(mu_in, L_in, z_in, nu, prior_prec, prior_scale, prior_logdet, constants);
  const RegParams p = call.params;
  const int64_t n = mu_in.size(0);
  TORCH_CHECK_VALUE(grad_in.dim() == 1 && grad_in.size(0) == n,
                    "chyvae_ext: grad must have shape (", n, "), got ", grad_in.sizes());
  const at::Tensor mu = mu_in.contiguous(), L = L_in.contiguous(), z = z_in.contiguous();
  const at::Tensor grad = grad_in.to(at::kDouble).contiguous();
  at::Tensor g_mu = at::empty_like(mu), g_l = at::empty_like(L), g_z = at::empty_like(z);
  at::Tensor g_nu = at::empty({n}, mu.options().dtype(at::kDouble));
  if (n == 0) return {g_mu, g_l, g_z, g_nu};
  const double* prec = call.prec.defined() ? call.prec.const_data_ptr<double>() : nullptr;
  const int64_t ws_size = reg_workspace_size(p.d, p.K);
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "regularizer_backward_cpu", [&] {
    const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
    const scalar_t* l_p = L.const_data_ptr<scalar_t>();
    const scalar_t* z_p = z.const_data_ptr<scalar_t>();
    const double* g_p = grad.const_data_ptr<double>();
    scalar_t* gmu_p = g_mu.mutable_data_ptr<scalar_t>();
    scalar_t* gl_p = g_l.mutable_data_ptr<scalar_t>();
    scalar_t* gz_p = g_z.mutable_data_ptr<scalar_t>();
    double* gnu_p = g_nu.mutable_data_ptr<double>();
    const int64_t d = p.d, kd = static_cast<int64_t>(p.K) * p.d;
    at::parallel_for(0, n, grain_for(d), [&](int64_t begin, int64_t end) {
      std::vector<double> ws(ws_size);
      for (int64_t i = begin; i < end; ++i) {
        gnu_p[i] = reg_backward_point(p, g_p[i], mu_p + i * d, l_p + i * d * d, z_p + i * kd, prec,
                                      ws.data(), gmu_p + i * d, gl_p + i * d * d, gz_p + i * kd);
      }
    });
  });
  return {g_mu, g_l, g_z, g_nu};
}

}  // namespace

TORCH_LIBRARY_IMPL(chyvae_ext, CPU, m) {
  m.impl("regularizer", &regularizer_cpu);
  m.impl("regularizer_backward", &regularizer_backward_cpu);
}

}  // namespace chyvae_ext
