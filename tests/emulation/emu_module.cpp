// The CUDA kernels compiled as host C++ (csrc/cuda/cuda_emulation.h) behind the same ATen glue as
// the CUDA backend (csrc/cuda/regularizer_launch.h), on CPU tensors. Built by
// tests/test_cuda_emulation.py with torch.utils.cpp_extension; max_blocks caps the grid as the
// occupancy query does on a device, so that a test can make the grid smaller than the batch;
// host_params says whether the kernels get the host's scalars (as on a GPU for a CPU nu) or compute
// them from nu in "device" memory (as for a GPU nu).
#include <torch/extension.h>

#include "../../csrc/cuda/cuda_emulation.h"
#include "../../csrc/cuda/regularizer_launch.h"

namespace {

using Opt = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                                           const at::Tensor& nu, const Opt& prior_prec, double prior_scale,
                                           double prior_logdet, bool constants, bool save, int64_t max_blocks,
                                           bool host_params) {
  return chyvae_ext::cuda_kernels::run_forward(
      mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, save,
      [max_blocks](const void*) { return max_blocks; }, cudaStream_t{}, [] {}, host_params);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& mu,
                                                                    const at::Tensor& L, const at::Tensor& z,
                                                                    const at::Tensor& nu, const Opt& prior_prec,
                                                                    double prior_scale, double prior_logdet,
                                                                    bool constants, const Opt& saved,
                                                                    int64_t max_blocks, bool host_params) {
  return chyvae_ext::cuda_kernels::run_backward(
      grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved,
      [max_blocks](const void*) { return max_blocks; }, cudaStream_t{}, [] {}, host_params);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "regularizer_forward through the emulated CUDA kernels");
  m.def("backward", &backward, "regularizer_backward through the emulated CUDA kernels");
  m.def("barriers", [] { return chy_emu::scheduler().barriers; }, "block barriers passed so far");
  m.def("threads_per_block", [] { return chyvae_ext::cuda_kernels::kThreads; });
  m.def("warp_barriers", [] { return chy_emu::scheduler().warp_barriers; }, "warp barriers passed so far");
  m.def(
      "set_variant",
      [](int v) { chyvae_ext::cuda_kernels::kernel_variant() = static_cast<chyvae_ext::cuda_kernels::Variant>(v); },
      "0 auto, 1 a thread per datapoint, 2 a warp per datapoint, 3 a warp per datapoint with the rows unrolled");
}
