// Host-side preparation shared by every backend: input checks and the per-call scalars.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "regularizer_math.h"

namespace chyvae_ext {

struct PreparedCall {
  RegConfig config;
  RegParams params;     // from nu on the host when nu is on the CPU (params_on_host), else for the kernels to compute
  bool params_on_host;  // nu is a CPU tensor: read here; otherwise nu is in the inputs' device memory
  at::Tensor prec;      // Prec0 = Sigma0^-1, float64 contiguous (d, d) on the inputs' device; undefined if isotropic
  const float* nu_f;    // nu in its own memory (the CPU or the inputs' device): one of these is set
  const double* nu_d;
  bool nu_rows;         // nu has one value per datapoint (N,), contiguous: params holds no call-wide scalars
  at::Tensor nu_keep;   // keeps the memory nu_f / nu_d point into alive (a contiguous copy when nu was strided)
};

// Checks shapes, dtypes and devices (kernels assume what this checks) and, when nu is on the CPU,
// computes the scalars. nu: a (N,) float32/float64 tensor, one value per datapoint, on the inputs'
// device (on the CPU each is checked > d - 1 here, and the backend computes the scalars per run of
// equal values; on a GPU the kernels compute them per datapoint), or a 0-d float32/float64 tensor on the CPU (any inputs: read on the host, as
// torch's ops read a 0-d CPU tensor given with CUDA tensors, so a captured graph keeps its value) or
// on the inputs' device (read there by the kernels: nothing waits for the host, and a captured CUDA
// graph reads the current value). prior_prec: Sigma0^-1 (d, d), or nullopt for Sigma0 = prior_scale * I.
// prior_logdet: log|Sigma0| (ignored when isotropic). The forward needs c, the backward dc/dnu:
// `backward` says which, so each pass evaluates only its special functions.
PreparedCall prepare_regularizer(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                                 const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec,
                                 double prior_scale, double prior_logdet, bool constants, bool backward);

// Whether a call runs the K = 1 isotropic fast path, and the per-datapoint size of what its
// forward saves for the backward (0 on the general path).
// The scalars for a nu read on the host (a CPU nu: every datapoint's for per-datapoint nu), with
// the special-function sum remembered per thread for the last nu of each pass.
RegParams host_params(const RegConfig& config, double nu, bool backward);

inline bool uses_iso1(const PreparedCall& call) { return !call.prec.defined() && call.config.K == 1; }
inline int64_t saved_size(const PreparedCall& call) {
  return uses_iso1(call) ? reg_iso1_saved_size(call.config.d) : 0;
}

// Everything a backend's forward needs: the checked call, contiguous inputs, outputs to fill.
struct ForwardCall {
  PreparedCall call;
  at::Tensor mu, L, z;  // contiguous
  at::Tensor out;       // (N,) in the inputs' dtype
  at::Tensor saved;     // float64 (N, saved_size) when asked to save, else (N, 0)
};
ForwardCall begin_forward(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                          const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet,
                          bool constants, bool save);

// The same for the backward: grad is cast to the inputs' dtype but keeps its strides.
struct BackwardCall {
  PreparedCall call;
  at::Tensor mu, L, z, grad;
  at::Tensor g_mu, g_l, g_z, g_nu;  // g_nu: float64 (N,)
  const double* saved;              // regularizer_forward's saved state, or nullptr to recompute
};
BackwardCall begin_backward(const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                            const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec, double prior_scale,
                            double prior_logdet, bool constants, const std::optional<at::Tensor>& saved);

// Which CUDA kernels run the K = 1 isotropic fast path: 0 auto (a warp per datapoint for
// d <= 32), 1 a thread per datapoint, 2 a warp per datapoint (d <= 32), 3 the unrolled warp layout
// (d <= 32: every row of L in registers). For measurements.
// Defined by the CUDA backend only.
void set_cuda_kernel_variant(int variant);

// chyvae_ext::regularizer through the dispatcher from C++ (every dispatch key, as torch.ops would).
at::Tensor call_regularizer(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z, const at::Tensor& nu,
                            const std::optional<at::Tensor>& prior_prec, double prior_scale, double prior_logdet,
                            bool constants);

}  // namespace chyvae_ext
