#!/usr/bin/env bash
# Compile the CUDA sources for sm_90 with nvcc, without a GPU and without a CUDA torch, so that the
# CUDA code cannot rot unseen on CPU-only machines. Needs an installed torch (any build) for the
# headers. Prints the kernels' register and stack use. Exits 0 with a note when nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found, skipping the CUDA compile check"
  exit 0
fi
PY="${PYTHON:-python}"
TORCH_INC=$("$PY" -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
CXX_STD=$("$PY" -c "import torch; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); print('c++20' if v >= (2, 14) else 'c++17')")
STUB=$(mktemp -d)
trap 'rm -rf "$STUB"' EXIT
# CPU wheels ship c10/cuda headers but not the header CMake generates for CUDA builds.
if [ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$STUB/c10/cuda/impl"
  echo "#pragma once" > "$STUB/c10/cuda/impl/cuda_cmake_macros.h"
fi
OUT="${STUB}/regularizer_cuda.o"
"$NVCC" -std="$CXX_STD" -c csrc/cuda/regularizer_cuda.cu -o "$OUT" \
  -gencode arch=compute_90,code=sm_90 -Xptxas -v --expt-relaxed-constexpr \
  -Xcompiler -fPIC -I"$STUB" -I"$TORCH_INC" -I"$TORCH_INC/torch/csrc/api/include" -I"$PY_INC" 2>&1 |
  grep -v -F "$TORCH_INC" | grep -E "error|warning|Compiling entry|Used [0-9]+ registers|stack frame" || true
test -s "$OUT"
echo "check_cuda_compile: csrc/cuda/regularizer_cuda.cu compiled for sm_90 with $("$NVCC" --version | tail -1)"
