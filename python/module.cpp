// The Python module: loading it registers the chyvae_ext ops; build_info() reports how it was built.
#include <pybind11/pybind11.h>
#include <torch/version.h>

#include <string>

#ifndef CHYVAE_EXT_VERSION
#define CHYVAE_EXT_VERSION "unknown"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "chyvae_ext compiled ops (registered under torch.ops.chyvae_ext)";
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
