// CUDA backend: the kernels of regularizer_kernels.cuh launched through regularizer_launch.h on the
// current stream, with grids sized to what the device keeps resident.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "regularizer_launch.h"

namespace chyvae_ext {
namespace {

using cuda_kernels::kThreads;

// Blocks of kThreads threads that the current device keeps resident for `kernel` (the occupancy
// API, once per kernel and device): the grid-stride loops need no more, and the scratch is sized
// to them. Host-side queries only: nothing is enqueued, so this is safe during graph capture.
int64_t resident_blocks(const void* kernel) {
  static std::mutex mutex;
  static std::unordered_map<const void*, std::unordered_map<int, int64_t>> cache;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  auto& per_device = cache[kernel];
  auto it = per_device.find(device);
  if (it != per_device.end()) return it->second;
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  const int64_t blocks = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  per_device.emplace(device, blocks);
  return blocks;
}

void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }

std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& mu, const at::Tensor& L, const at::Tensor& z,
                                                const at::Tensor& nu, const std::optional<at::Tensor>& prior_prec,
                                                double prior_scale, double prior_logdet, bool constants, bool save) {
  const c10::cuda::CUDAGuard guard(mu.device());
  return cuda_kernels::run_forward(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, save,
                                   resident_blocks, c10::cuda::getCurrentCUDAStream().stream(), check_launch);
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
  return cuda_kernels::run_backward(grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved,
                                    resident_blocks, c10::cuda::getCurrentCUDAStream().stream(), check_launch);
}

}  // namespace

void set_cuda_kernel_variant(int variant) {
  TORCH_CHECK_VALUE(variant >= 0 && variant <= 3,
                    "chyvae_ext: kernel variant must be 0 (auto), 1 (thread), 2 (warp) or 3 (unrolled), got ",
                    variant);
  cuda_kernels::kernel_variant() = static_cast<cuda_kernels::Variant>(variant);
}

TORCH_LIBRARY_IMPL(chyvae_ext, CUDA, m) {
  m.impl("regularizer", &regularizer_cuda);
  m.impl("regularizer_forward", &regularizer_forward_cuda);
  m.impl("regularizer_backward", &regularizer_backward_cuda);
}

}  // namespace chyvae_ext
