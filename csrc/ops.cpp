// Every op's schema, in one place. Backends: cpu/regularizer_cpu.cpp, cuda/regularizer_cuda.cu.
// Autograd: autograd.cpp. Fake (meta) kernels for tracing: chyvae_ext/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(chyvae_ext, m) {
  // R of docs/math.md 1.1 per datapoint. mu (N, d); L (N, d, d), lower triangle read; z (N, d) or (N, K, d);
  // nu 0-d (the CPU or the inputs' device) or (N,) (the inputs' device), float32/float64; prior_prec Sigma0^-1 (d, d), or None for Sigma0 = prior_scale * I;
  // prior_logdet log|Sigma0| (used with prior_prec). Returns (N,) in the inputs' dtype.
  m.def(
      "regularizer(Tensor mu, Tensor L, Tensor z, Tensor nu, Tensor? prior_prec, float prior_scale, "
      "float prior_logdet, bool constants) -> Tensor");
  // The same R, plus what the backward can reuse: float64 (N, d + 6) on the K = 1 isotropic fast
  // path (w = L^T u, five sums and log a), (N, 0) otherwise. Autograd calls this one when it records.
  m.def(
      "regularizer_forward(Tensor mu, Tensor L, Tensor z, Tensor nu, Tensor? prior_prec, float prior_scale, "
      "float prior_logdet, bool constants) -> (Tensor, Tensor)");
  // grad (N,) of R; returns grad * dR/d(mu, L, z) and the per-datapoint grad * dR/dnu (N,) in float64,
  // summed by the caller. saved: the second output of regularizer_forward, or None to recompute it.
  m.def(
      "regularizer_backward(Tensor grad, Tensor mu, Tensor L, Tensor z, Tensor nu, Tensor? prior_prec, "
      "float prior_scale, float prior_logdet, bool constants, Tensor? saved=None) -> (Tensor, Tensor, Tensor, Tensor)");
}
