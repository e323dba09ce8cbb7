#include "regularizer_host.h"

#include <ATen/ATen.h>

#include <cmath>

namespace chyvae_ext {
namespace {

// sum_i reg_const_term(nu, K, i, backward), remembered per thread for the last arguments of each
// pass: a training run calls with one nu, d and K throughout, and the 2d special functions would
// otherwise be evaluated again at every call.
double const_term_sum(double nu, int d, int k, bool backward) {
  struct Entry {
    bool valid = false;
    double nu = 0.0;
    int d = 0, k = 0;
    double value = 0.0;
  };
  thread_local Entry last[2];  // [forward, backward]
  Entry& e = last[backward ? 1 : 0];
  if (!(e.valid && e.nu == nu && e.d == d && e.k == k)) {
    double acc = 0.0;
    for (int i = 0; i < d; ++i) acc += reg_const_term(nu, k, i, backward);
    e.value = acc;
    e.nu = nu;
    e.d = d;
    e.k = k;
    e.valid = true;
  }
  return e.value;
}

}  // namespace

PreparedCall prepare_regularizer(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                                 const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec,
                                 double prior_scale, double prior_logdet, bool constants, bool backward) {
  TORCH_CHECK_VALUE(mu.dim() == 2, "chyvae_ext: mu must have shape (N, d), got ", mu.sizes());
  const int64_t n = mu.size(0), d = mu.size(1);
  TORCH_CHECK_VALUE(d >= 1, "chyvae_ext: mu must have d >= 1 latent dimensions, got ", mu.sizes());
  TORCH_CHECK_VALUE(L.dim() == 3 && L.size(0) == n && L.size(1) == d && L.size(2) == d,
                    "chyvae_ext: L must have shape (", n, ", ", d, ", ", d, "), got ", L.sizes());
  const bool z_ok = (z.dim() == 2 && z.size(0) == n && z.size(1) == d) ||
                    (z.dim() == 3 && z.size(0) == n && z.size(2) == d && z.size(1) >= 1);
  TORCH_CHECK_VALUE(z_ok, "chyvae_ext: z must have shape (", n, ", ", d, ") or (", n, ", K, ", d,
                    ") with K >= 1, got ", z.sizes());
  const auto dtype = mu.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble,
                    "chyvae_ext: mu must be float32 or float64, got ", dtype);
  TORCH_CHECK_VALUE(L.scalar_type() == dtype && z.scalar_type() == dtype,
                    "chyvae_ext: mu, L and z must share a dtype, got ", dtype, ", ", L.scalar_type(),
                    ", ", z.scalar_type());
  TORCH_CHECK_VALUE(L.device() == mu.device() && z.device() == mu.device(),
                    "chyvae_ext: mu, L and z must be on one device, got ", mu.device(), ", ",
                    L.device(), ", ", z.device());
  const bool nu_float = nu.scalar_type() == at::kFloat || nu.scalar_type() == at::kDouble;
  const bool nu_rows = nu.dim() == 1;
  TORCH_CHECK_VALUE((nu.dim() == 0 && nu_float && (nu.device() == mu.device() || nu.device().is_cpu())) ||
                        (nu_rows && nu.size(0) == n && nu_float && nu.device() == mu.device()),
                    "chyvae_ext: nu must be a 0-d float32 or float64 tensor on the CPU or on ", mu.device(),
                    ", or a (", n, ",) one (a value per datapoint) on ", mu.device(), " like mu, got shape ",
                    nu.sizes(), " dtype ", nu.scalar_type(), " on ", nu.device());
  const int64_t k = z.dim() == 3 ? z.size(1) : 1;
  TORCH_CHECK_VALUE(d <= 4096 && k <= 4096, "chyvae_ext: d and K must be at most 4096, got d = ", d,
                    ", K = ", k);

  PreparedCall out;
  RegConfig& c = out.config;
  c.d = static_cast<int>(d);
  c.K = static_cast<int>(k);
  c.constants = constants;
  c.full_prior = prior_prec.has_value();
  c.prior_scale = 1.0;
  c.prior_logdet = 0.0;
  if (c.full_prior) {
    const at::Tensor& pp = *prior_prec;
    TORCH_CHECK_VALUE(pp.dim() == 2 && pp.size(0) == d && pp.size(1) == d,
                      "chyvae_ext: prior_prec must have shape (", d, ", ", d, "), got ", pp.sizes());
    TORCH_CHECK_VALUE(pp.device() == mu.device(), "chyvae_ext: prior_prec must be on ", mu.device(),
                      ", got ", pp.device());
    TORCH_CHECK_VALUE(std::isfinite(prior_logdet), "chyvae_ext: prior_logdet must be finite, got ", prior_logdet);
    // No copy when it is already float64 and contiguous (the Python side keeps it so).
    out.prec = pp.scalar_type() == at::kDouble && pp.is_contiguous() ? pp : pp.to(at::kDouble).contiguous();
    c.prior_logdet = prior_logdet;
  } else {
    TORCH_CHECK_VALUE(prior_scale > 0.0 && std::isfinite(prior_scale),
                      "chyvae_ext: prior_scale must be positive and finite, got ", prior_scale);
    c.prior_scale = prior_scale;
  }
  out.nu_rows = nu_rows;
  out.nu_keep = nu_rows && !nu.is_contiguous() ? nu.contiguous() : nu;
  out.nu_f = nu.scalar_type() == at::kFloat ? out.nu_keep.const_data_ptr<float>() : nullptr;
  out.nu_d = nu.scalar_type() == at::kDouble ? out.nu_keep.const_data_ptr<double>() : nullptr;
  out.params_on_host = nu.device().is_cpu();
  out.params = RegParams{};
  if (nu_rows) {
    if (out.params_on_host) {  // checked here, once; the backend computes the scalars per run of equal values
      for (int64_t i = 0; i < n; ++i) {
        const double v = out.nu_d != nullptr ? out.nu_d[i] : static_cast<double>(out.nu_f[i]);
        TORCH_CHECK_VALUE(std::isfinite(v) && v > static_cast<double>(d - 1), "chyvae_ext: nu must be finite and > d - 1 = ",
                          d - 1, ", got ", v, " at datapoint ", i);
      }
    }
  } else if (out.params_on_host) {
    // Read in place: item() is a whole dispatcher call for one number.
    const double nu_v = out.nu_d != nullptr ? *out.nu_d : static_cast<double>(*out.nu_f);
    TORCH_CHECK_VALUE(std::isfinite(nu_v) && nu_v > static_cast<double>(d - 1),
                      "chyvae_ext: nu must be finite and > d - 1 = ", d - 1, ", got ", nu_v);
    out.params = host_params(c, nu_v, backward);
  }  // otherwise the kernels compute them from nu in device memory
  return out;
}

RegParams host_params(const RegConfig& config, double nu, bool backward) {
  const double sum = config.constants ? const_term_sum(nu, config.d, config.K, backward) : 0.0;
  return reg_params_finish(config, nu, sum, backward);
}

namespace {

void check_saved(const PreparedCall& call, const at::Tensor& mu, const std::optional<at::Tensor>& saved) {
  if (!saved.has_value()) return;
  const at::Tensor& s = *saved;
  TORCH_CHECK_VALUE(s.dim() == 2 && s.size(0) == mu.size(0) && s.size(1) == saved_size(call) &&
                        s.scalar_type() == at::kDouble && s.device() == mu.device() && s.is_contiguous(),
                    "chyvae_ext: saved must be the contiguous float64 (", mu.size(0), ", ", saved_size(call),
                    ") tensor from regularizer_forward on ", mu.device(), ", got ", s.sizes(), " ",
                    s.scalar_type(), " on ", s.device());
}

}  // namespace

ForwardCall begin_forward(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                          const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet,
                          bool constants, bool save) {
  ForwardCall f;
  f.call = prepare_regularizer(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, false);
  f.mu = mu.contiguous();
  f.L = L.contiguous();
  f.z = z.contiguous();
  const int64_t n = mu.size(0);
  f.out = at::empty({n}, mu.options());
  f.saved = at::empty({n, save ? saved_size(f.call) : 0}, mu.options().dtype(at::kDouble));
  return f;
}

BackwardCall begin_backward(const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                            const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec, double prior_scale,
                            double prior_logdet, bool constants, const std::optional<at::Tensor>& saved) {
  BackwardCall b;
  b.call = prepare_regularizer(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, true);
  check_saved(b.call, mu, saved);
  const int64_t n = mu.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 1 && grad.size(0) == n && grad.is_floating_point() && grad.device() == mu.device(),
                    "chyvae_ext: grad must be a floating (", n, ") tensor on ", mu.device(), ", got ", grad.sizes(),
                    " ", grad.scalar_type(), " on ", grad.device());
  b.mu = mu.contiguous();
  b.L = L.contiguous();
  b.z = z.contiguous();
  // Read in place, strided: autograd usually hands over an expanded (stride-0) tensor.
  // (to() is a dispatcher call even when the dtype already matches.)
  b.grad = grad.scalar_type() == mu.scalar_type() ? grad : grad.to(mu.scalar_type());
  b.g_mu = at::empty_like(b.mu);
  b.g_l = at::empty_like(b.L);
  b.g_z = at::empty_like(b.z);
  b.g_nu = at::empty({n}, mu.options().dtype(at::kDouble));
  b.saved = saved.has_value() && saved->numel() > 0 ? saved->const_data_ptr<double>() : nullptr;
  return b;
}

}  // namespace chyvae_ext
