// Autograd for chyvae_ext::regularizer, in C++ rather than torch.library.register_autograd: the
// Python autograd wrapper cost more than the whole fused forward+backward at training batch sizes
// (about 120 us per step at B = 64, d = 10 on the 2-core CPU of BUILD-NOTES.md).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "regularizer_host.h"

namespace chyvae_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Prec = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> call_forward(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                                                const at::Tensor& nu, const Prec& prior_prec, double prior_scale,
                                                double prior_logdet, bool constants) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("chyvae_ext::regularizer_forward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, const at::Tensor&,
                                                                       const Prec&, double, double, bool)>();
  return op.call(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
    const Prec& prior_prec, double prior_scale, double prior_logdet, bool constants, const Prec& saved) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("chyvae_ext::regularizer_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const Prec&, double, double, bool, const Prec&)>();
  return op.call(grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved);
}

Prec as_optional(const at::Tensor& t) { return t.defined() ? Prec(t) : std::nullopt; }

class RegularizerFunction : public torch::autograd::Function<RegularizerFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                            const at::Tensor& nu, const Prec& prior_prec, double prior_scale, double prior_logdet,
                            bool constants) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, saved] = call_forward(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
    ctx->save_for_backward({mu, L, z, nu, prior_prec.value_or(at::Tensor()), saved});
    ctx->saved_data["prior_scale"] = prior_scale;
    ctx->saved_data["prior_logdet"] = prior_logdet;
    ctx->saved_data["constants"] = constants;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Without create_graph nothing below needs recording: skip the Autograd key, whose boxed
    // fallback (no Autograd kernel is registered for regularizer_backward) cost several us a call.
    // With create_graph the fallback stays in charge, as before.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &mu = saved[0], &L = saved[1], &z = saved[2], &nu = saved[3];
    auto [g_mu, g_l, g_z, g_nu] =
        call_backward(grads[0], mu, L, z, nu, as_optional(saved[4]), ctx->saved_data["prior_scale"].toDouble(),
                      ctx->saved_data["prior_logdet"].toDouble(), ctx->saved_data["constants"].toBool(),
                      as_optional(saved[5]));
    at::Tensor grad_nu;
    if (ctx->needs_input_grad(3)) grad_nu = g_nu.sum().to(nu.device(), nu.scalar_type());
    return {ctx->needs_input_grad(0) ? g_mu : at::Tensor(),
            ctx->needs_input_grad(1) ? g_l : at::Tensor(),
            ctx->needs_input_grad(2) ? g_z : at::Tensor(),
            grad_nu,
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

// Records through RegularizerFunction only when a gradient is wanted; otherwise the plain op,
// which skips writing what the backward would reuse.
at::Tensor regularizer_autograd(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                                const Prec& prior_prec, double prior_scale, double prior_logdet, bool constants) {
  if (torch::autograd::compute_requires_grad(mu, L, z, nu)) {
    return RegularizerFunction::apply(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return call_regularizer(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
}

}  // namespace

at::Tensor call_regularizer(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                            const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet,
                            bool constants) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("chyvae_ext::regularizer", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const Prec&, double, double, bool)>();
  return op.call(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
}

TORCH_LIBRARY_IMPL(chyvae_ext, Autograd, m) { m.impl("regularizer", &regularizer_autograd); }

}  // namespace chyvae_ext
