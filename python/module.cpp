// The Python module: loading it registers the chyvae_ext ops; build_info() reports how it was built.
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/version.h>

#include <cmath>
#include <string>
#include <unordered_map>
#include <vector>

#include "../csrc/regularizer_host.h"

#ifndef CHYVAE_EXT_VERSION
#define CHYVAE_EXT_VERSION "unknown"
#endif

namespace py = pybind11;

namespace {

// CUDA devices that chyvae_ext.fused_available() found the built kernels can run on (it reports
// each here); other CUDA devices take the Python path, which decides between kernel and reference.
std::vector<bool>& cuda_devices_ok() {
  static std::vector<bool> ok;
  return ok;
}

// An argument of the fast path: a plain torch.Tensor (or Parameter, not a subclass, whose methods
// could mean something else) holding float32 or float64 on a device with compiled kernels.

const at::Tensor* fast_tensor(py::handle obj) {
  if (!THPVariable_CheckExact(obj.ptr())) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(obj.ptr());
  const auto dtype = t.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return nullptr;
#ifdef CHYVAE_EXT_WITH_CUDA
  if (t.is_cuda()) {
    const auto& ok = cuda_devices_ok();
    const int index = t.device().index();
    if (index < 0 || index >= static_cast<int>(ok.size()) || !ok[index]) return nullptr;
  } else if (!t.is_cpu()) {
    return nullptr;
  }
#else
  if (!t.is_cpu()) return nullptr;
#endif
  return &t;
}

// nu as the 0-d float64 CPU tensor the op takes (with CUDA inputs too: the CUDA op reads a CPU nu
// on the host), one per value: making a tensor costs about as much as the fused kernels at B = 64.
// The op only reads it. Called with the GIL held.
const at::Tensor& nu_tensor(double value) {
  static std::unordered_map<double, at::Tensor> cache;
  auto it = cache.find(value);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 64) cache.clear();
  return cache.emplace(value, at::scalar_tensor(value, at::TensorOptions().dtype(at::kDouble))).first->second;
}

// chyvae_regularizer for the common eager call, checked here instead of in Python (the Python
// checks cost as much as the forward kernel at B = 64): mu, L, z plain float32/float64 tensors of
// one dtype on one device, shapes (N, d), (N, d, d), (N, d) or (N, K, d); nu a float > d - 1;
// prior_cov None or a positive float; constants a bool; impl "auto" or "fused". Anything else,
// valid or not, returns None, and chyvae_ext.ops then runs its full checks, which name the
// argument that is wrong.
py::object regularizer_fast(py::handle mu_o, py::handle L_o, py::handle z_o, py::handle nu_o, py::handle cov_o,
                            py::handle constants_o, py::handle impl_o) {
  const py::object none = py::none();
  if (!PyUnicode_Check(impl_o.ptr())) return none;
  if (PyUnicode_CompareWithASCIIString(impl_o.ptr(), "auto") != 0 &&
      PyUnicode_CompareWithASCIIString(impl_o.ptr(), "fused") != 0)
    return none;
  if (constants_o.ptr() != Py_True && constants_o.ptr() != Py_False) return none;
  if (!PyFloat_CheckExact(nu_o.ptr())) return none;
  double prior_scale = 1.0;
  if (!cov_o.is_none()) {
    if (!PyFloat_CheckExact(cov_o.ptr())) return none;
    prior_scale = PyFloat_AS_DOUBLE(cov_o.ptr());
    if (!(std::isfinite(prior_scale) && prior_scale > 0.0)) return none;
  }
  const at::Tensor* mu = fast_tensor(mu_o);
  const at::Tensor* L = fast_tensor(L_o);
  const at::Tensor* z = fast_tensor(z_o);
  if (mu == nullptr || L == nullptr || z == nullptr) return none;
  if (L->scalar_type() != mu->scalar_type() || z->scalar_type() != mu->scalar_type()) return none;
  if (L->device() != mu->device() || z->device() != mu->device()) return none;
  if (mu->dim() != 2) return none;
  const int64_t n = mu->size(0), d = mu->size(1);
  if (d < 1 || L->dim() != 3 || L->size(0) != n || L->size(1) != d || L->size(2) != d) return none;
  const bool z_ok = (z->dim() == 2 && z->size(0) == n && z->size(1) == d) ||
                    (z->dim() == 3 && z->size(0) == n && z->size(1) >= 1 && z->size(2) == d);
  if (!z_ok) return none;
  const double nu = PyFloat_AS_DOUBLE(nu_o.ptr());
  if (!(std::isfinite(nu) && nu > static_cast<double>(d - 1))) return none;
  const at::Tensor nu_t = nu_tensor(nu);  // our own reference: the cache may change without the GIL
  const bool constants = constants_o.ptr() == Py_True;
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = chyvae_ext::call_regularizer(*mu, *L, *z, nu_t, std::nullopt, prior_scale, 0.0, constants);
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(out)));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "chyvae_ext compiled ops (registered under torch.ops.chyvae_ext)";
  // regularizer_eager: chyvae_ext::regularizer through the C++ dispatcher. It goes through every
  // dispatch key (autograd, autocast, backends) exactly as torch.ops.chyvae_ext.regularizer does; it
  // skips only torch.ops' Python binding (argument parsing against the schema), which is a visible
  // share of the whole fused forward+backward at B = 64 (benchmarks/RESULTS.md). Eager mode only:
  // under torch.compile the Python side calls torch.ops so that the op is traced.
  m.def("regularizer_eager", &chyvae_ext::call_regularizer,
        "chyvae_ext::regularizer via the C++ dispatcher (eager mode)", py::arg("mu"), py::arg("L"), py::arg("z"), py::arg("nu"), py::arg("prior_prec"), py::arg("prior_scale"),
        py::arg("prior_logdet"), py::arg("constants"));
  m.def("regularizer_fast", &regularizer_fast,
        "chyvae_regularizer's common eager call checked and run in C++; None when the call is outside it",
        py::arg("mu"), py::arg("L"), py::arg("z"), py::arg("nu"), py::arg("prior_cov"), py::arg("constants"),
        py::arg("impl"));
  m.def(
      "allow_cuda_device",
      [](int index) {
        auto& ok = cuda_devices_ok();
        if (index >= static_cast<int>(ok.size())) ok.resize(index + 1, false);
        ok[index] = true;
      },
      "lets the C++ entry run on this CUDA device (chyvae_ext.fused_available found the kernels can run there)",
      py::arg("index"));
  m.def(
      "set_cuda_kernel_variant",
      [](const std::string& name) {
        const int v = name == "auto" ? 0 : name == "thread" ? 1 : name == "warp" ? 2 : name == "unrolled" ? 3 : -1;
        TORCH_CHECK_VALUE(v >= 0, "chyvae_ext: variant must be 'auto', 'thread', 'warp' or 'unrolled', got '", name,
                          "'");
#ifdef CHYVAE_EXT_WITH_CUDA
        chyvae_ext::set_cuda_kernel_variant(v);
#else
        TORCH_CHECK_VALUE(v == 0, "chyvae_ext: built without CUDA kernels: only 'auto' can be set");
#endif
      },
      "which CUDA kernels run the K = 1 isotropic path: 'auto', 'thread' (one per datapoint), 'warp' "
      "(a warp per datapoint, d <= 32) or 'unrolled' (the warp layout with every row in registers and the "
      "backward's row sums by one reduce-scatter); for measurements",
      py::arg("variant"));
  m.def("build_info", []() {
    py::dict info;
    info["version"] = CHYVAE_EXT_VERSION;
    info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                            std::to_string(TORCH_VERSION_MINOR) + "." +
                            std::to_string(TORCH_VERSION_PATCH);
#ifdef CHYVAE_EXT_WITH_CUDA
    info["cuda"] = true;
    info["cuda_version"] = CHYVAE_EXT_CUDA_VERSION;
    info["cuda_archs"] = CHYVAE_EXT_CUDA_ARCHS;
#else
    info["cuda"] = false;
    info["cuda_version"] = py::none();
    info["cuda_archs"] = py::none();
#endif
    return info;
  });
}
