// The ATen side of the CUDA op: checks, outputs, scratch and the launches, written once for the CUDA
// backend (regularizer_cuda.cu) and the emulated test build (tests/emulation/emu_module.cpp, which
// runs the same kernels on the CPU under cuda_emulation.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>
#include <tuple>

#include "../regularizer_host.h"
#include "regularizer_kernels.cuh"

namespace chyvae_ext {
namespace cuda_kernels {

// host_params: whether a CPU nu's scalars, computed on the host, go to the kernels (the CUDA backend
// always; the emulated test build chooses, to exercise the device-side computation too).
inline NuPtr nu_ptr(const PreparedCall& call, bool host_params) {
  return NuPtr{call.nu_f, call.nu_d, host_params && call.params_on_host && !call.nu_rows, call.params, call.nu_rows};
}

// max_blocks(kernel): the blocks of kThreads threads the device keeps resident for that kernel
// (the grid-stride loops cover any batch with them). after_launch(): run after each launch.
template <typename MaxBlocks, typename Stream, typename AfterLaunch>
std::tuple<at::Tensor, at::Tensor> run_forward(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                                               const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec,
                                               double prior_scale, double prior_logdet, bool constants, bool save,
                                               MaxBlocks&& max_blocks, Stream stream, AfterLaunch&& after_launch,
                                               bool host_params = true) {
  ForwardCall f = begin_forward(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, save);
  const int64_t n = f.mu.size(0);
  if (n == 0) return {f.out, f.saved};
  const bool iso1 = uses_iso1(f.call);
  const RegConfig cfg = f.call.config;
  const double* prec = f.call.prec.defined() ? f.call.prec.const_data_ptr<double>() : nullptr;
  double* saved_p = f.saved.numel() > 0 ? f.saved.mutable_data_ptr<double>() : nullptr;
  if (use_warp_kernel(iso1, cfg.d)) {
    AT_DISPATCH_FLOATING_TYPES(f.mu.scalar_type(), "regularizer_cuda_warp", [&] {
      auto kernel = use_unrolled_rows() ? regularizer_forward_warp_kernel<true, scalar_t>
                                        : regularizer_forward_warp_kernel<false, scalar_t>;
      const unsigned int grid = grid_for(n * kWarp, max_blocks(reinterpret_cast<const void*>(kernel)));
      CHY_LAUNCH(kernel, grid, stream, cfg, nu_ptr(f.call, host_params), n, f.mu.const_data_ptr<scalar_t>(),
                 f.L.const_data_ptr<scalar_t>(), f.z.const_data_ptr<scalar_t>(), saved_p,
                 f.out.mutable_data_ptr<scalar_t>());
      after_launch();
    });
    return {f.out, f.saved};
  }
  const int64_t ws_size = workspace_per_thread(cfg, iso1, saved_p != nullptr);
  AT_DISPATCH_FLOATING_TYPES(f.mu.scalar_type(), "regularizer_cuda", [&] {
    with_static_d(iso1, cfg.d, [&](auto ds) {
      auto kernel = regularizer_forward_kernel<decltype(ds)::value, scalar_t>;
      const unsigned int grid = grid_for(n, max_blocks(reinterpret_cast<const void*>(kernel)));
      at::Tensor ws = at::empty({static_cast<int64_t>(grid) * kThreads * ws_size}, f.mu.options().dtype(at::kDouble));
      CHY_LAUNCH(kernel, grid, stream, cfg, nu_ptr(f.call, host_params), n, f.mu.const_data_ptr<scalar_t>(),
                 f.L.const_data_ptr<scalar_t>(), f.z.const_data_ptr<scalar_t>(), prec,
                 ws.mutable_data_ptr<double>(), ws_size, saved_p, f.out.mutable_data_ptr<scalar_t>());
      after_launch();
    });
  });
  return {f.out, f.saved};
}

template <typename MaxBlocks, typename Stream, typename AfterLaunch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_backward(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
    const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet, bool constants,
    const std::optional<at::Tensor>& saved, MaxBlocks&& max_blocks, Stream stream, AfterLaunch&& after_launch,
    bool host_params = true) {
  BackwardCall b = begin_backward(grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved);
  const int64_t n = b.mu.size(0);
  if (n == 0) return {b.g_mu, b.g_l, b.g_z, b.g_nu};
  const bool iso1 = uses_iso1(b.call);
  const RegConfig cfg = b.call.config;
  const double* prec = b.call.prec.defined() ? b.call.prec.const_data_ptr<double>() : nullptr;
  if (use_warp_kernel(iso1, cfg.d)) {
    AT_DISPATCH_FLOATING_TYPES(b.mu.scalar_type(), "regularizer_backward_cuda_warp", [&] {
      auto kernel = use_unrolled_rows() ? regularizer_backward_warp_kernel<true, scalar_t>
                                        : regularizer_backward_warp_kernel<false, scalar_t>;
      const unsigned int grid = grid_for(n * kWarp, max_blocks(reinterpret_cast<const void*>(kernel)));
      CHY_LAUNCH(kernel, grid, stream, cfg, nu_ptr(b.call, host_params), n, b.grad.const_data_ptr<scalar_t>(),
                 b.grad.stride(0), b.mu.const_data_ptr<scalar_t>(), b.L.const_data_ptr<scalar_t>(),
                 b.z.const_data_ptr<scalar_t>(), b.saved, b.g_mu.mutable_data_ptr<scalar_t>(),
                 b.g_l.mutable_data_ptr<scalar_t>(), b.g_z.mutable_data_ptr<scalar_t>(),
                 b.g_nu.mutable_data_ptr<double>());
      after_launch();
    });
    return {b.g_mu, b.g_l, b.g_z, b.g_nu};
  }
  const int64_t ws_size = workspace_per_thread(cfg, iso1, b.saved != nullptr);
  AT_DISPATCH_FLOATING_TYPES(b.mu.scalar_type(), "regularizer_backward_cuda", [&] {
    with_static_d(iso1, cfg.d, [&](auto ds) {
      auto kernel = regularizer_backward_kernel<decltype(ds)::value, scalar_t>;
      const unsigned int grid = grid_for(n, max_blocks(reinterpret_cast<const void*>(kernel)));
      at::Tensor ws = at::empty({static_cast<int64_t>(grid) * kThreads * ws_size}, b.mu.options().dtype(at::kDouble));
      CHY_LAUNCH(kernel, grid, stream, cfg, nu_ptr(b.call, host_params), n, b.grad.const_data_ptr<scalar_t>(),
                 b.grad.stride(0), b.mu.const_data_ptr<scalar_t>(), b.L.const_data_ptr<scalar_t>(),
                 b.z.const_data_ptr<scalar_t>(), prec, b.saved, ws.mutable_data_ptr<double>(), ws_size, b.g_mu.mutable_data_ptr<scalar_t>(),
                 b.g_l.mutable_data_ptr<scalar_t>(), b.g_z.mutable_data_ptr<scalar_t>(),
                 b.g_nu.mutable_data_ptr<double>());
      after_launch();
    });
  });
  return {b.g_mu, b.g_l, b.g_z, b.g_nu};
}

}  // namespace cuda_kernels
}  // namespace chyvae_ext
