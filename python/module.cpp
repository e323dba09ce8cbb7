// The Python module: loading it registers the chyvae_ext ops; build_info() reports how it was built.
#include <pybind11/pybind11.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/version.h>

#include <string>

#include "../csrc/regularizer_host.h"

#ifndef CHYVAE_EXT_VERSION
#define CHYVAE_EXT_VERSION "unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "chyvae_ext compiled ops (registered under torch.ops.chyvae_ext)";
  // regularizer_eager: chyvae_ext::regularizer through the C++ dispatcher. It goes through every
  // dispatch key (autograd, autocast, backends) exactly as torch.ops.chyvae_ext.regularizer does; it
  // skips only torch.ops' Python binding (argument parsing against the schema, ~8 us a call), which
  // matters when the whole fused forward+backward at B = 64 costs well under 100 us. Eager mode only:
  // under torch.compile the Python side calls torch.ops so that the op is traced.
  m.def("regularizer_eager", &chyvae_ext::call_regularizer,
        "chyvae_ext::regularizer via the C++ dispatcher (eager mode)", py::arg("mu"), py::arg("L"), py::arg("z"), py::arg("nu"), py::arg("prior_prec"), py::arg("prior_scale"),
        py::arg("prior_logdet"), py::arg("constants"));
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
