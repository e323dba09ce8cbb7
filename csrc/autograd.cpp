// Autograd for chyvae_ext::regularizer, in C++ rather than torch.library.register_autograd: the
// Python autograd wrapper cost more than the whole fused forward+backward at training batch sizes
// (the numbers: benchmarks/RESULTS.md).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>

#include "regularizer_host.h"

namespace chyvae_ext {
namespace {

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

// The backward node, written by hand as PyTorch's generated nodes are rather than through
// torch::autograd::Function: recording through Function (wrapped outputs, input and output infos,
// the saved-data map) was a large share of the whole fused step at training sizes
// (benchmarks/RESULTS.md); this node records what the backward needs and nothing else.
struct RegularizerBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable mu, L, z, nu, prior_prec, saved;
  double prior_scale = 1.0, prior_logdet = 0.0;
  bool constants = true;

  std::string name() const override { return "chyvae_ext::RegularizerBackward"; }

  void release_variables() override {
    for (auto* v : {&mu, &L, &z, &nu, &prior_prec, &saved}) v->reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list result(4);
    if (!grads[0].defined()) return result;  // no gradient flowed into R: none flows out
    // Without create_graph nothing below needs recording: skip the Autograd key, whose boxed
    // fallback (no Autograd kernel is registered for regularizer_backward) boxes every argument of
    // every call. With create_graph the fallback stays in charge (it warns: no double backward).
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    const at::Tensor nu_t = nu.unpack();
    auto [g_mu, g_l, g_z, g_nu] = call_backward(grads[0], mu.unpack(), L.unpack(), z.unpack(), nu_t,
                                                as_optional(prior_prec.unpack()), prior_scale, prior_logdet,
                                                constants, as_optional(saved.unpack()));
    if (should_compute_output(0)) result[0] = std::move(g_mu);
    if (should_compute_output(1)) result[1] = std::move(g_l);
    if (should_compute_output(2)) result[2] = std::move(g_z);
    if (should_compute_output(3)) {  // a 0-d nu: the sum over datapoints; a per-datapoint nu: each its own
      result[3] = (nu_t.dim() == 0 ? g_nu.sum() : g_nu).to(nu_t.device(), nu_t.scalar_type());
    }
    return result;
  }
};

// A new node, owned the way this torch owns nodes: std::shared_ptr with torch's iterative deleter
// (torch <= 2.12) or c10::intrusive_ptr (later versions).
using NodePtr = decltype(torch::autograd::Edge::function);

template <typename Ptr = NodePtr>
Ptr make_backward_node() {
  if constexpr (std::is_same_v<Ptr, std::shared_ptr<torch::autograd::Node>>) {
    return Ptr(new RegularizerBackward(), [](auto* node) { deleteNode(node); });  // found by ADL
  } else {
    return c10::make_intrusive<RegularizerBackward>();
  }
}

// Records RegularizerBackward only when a gradient is wanted; otherwise the plain op, which skips
// writing what the backward would reuse.
at::Tensor regularizer_autograd(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                                const Prec& prior_prec, double prior_scale, double prior_logdet, bool constants) {
  TORCH_CHECK(!(torch::autograd::isFwGradDefined(mu) || torch::autograd::isFwGradDefined(L) ||
                torch::autograd::isFwGradDefined(z) || torch::autograd::isFwGradDefined(nu)),
              "chyvae_ext::regularizer does not support forward-mode automatic differentiation");
  if (!torch::autograd::compute_requires_grad(mu, L, z, nu)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_regularizer(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
  }
  at::Tensor out, saved;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, saved) = call_forward(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants);
  }
  auto node = make_backward_node();
  auto* fn = static_cast<RegularizerBackward*>(node.get());
  fn->set_next_edges(torch::autograd::collect_next_edges(mu, L, z, nu));
  fn->mu = torch::autograd::SavedVariable(mu, false);
  fn->L = torch::autograd::SavedVariable(L, false);
  fn->z = torch::autograd::SavedVariable(z, false);
  fn->nu = torch::autograd::SavedVariable(nu, false);
  fn->prior_prec = torch::autograd::SavedVariable(prior_prec.value_or(at::Tensor()), false);
  fn->saved = torch::autograd::SavedVariable(saved, false);
  fn->prior_scale = prior_scale;
  fn->prior_logdet = prior_logdet;
  fn->constants = constants;
  torch::autograd::set_history(out, node);
  return out;
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
