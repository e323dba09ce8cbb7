"""chyvae_ext: CHyVAE (Ansari & Soh, AAAI 2019) with a fused C++/CUDA regulariser."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the compiled module)

__version__ = "0.1.0"

from ._loader import load_extension  # noqa: E402

_C = load_extension()

from ._validate import PriorCov  # noqa: E402
from .ops import chyvae_regularizer, fused_available  # noqa: E402
from .reference import chyvae_regularizer_ref  # noqa: E402


def build_info() -> dict:
    """How the compiled module was built.

    Returns a dict with ``version`` (package), ``torch_version`` (the torch it was built against),
    ``cuda`` (whether CUDA kernels were compiled), ``cuda_version`` and ``cuda_archs`` (None without
    CUDA).
    """
    return dict(_C.build_info())


__all__ = [
    "PriorCov",
    "build_info",
    "chyvae_regularizer",
    "chyvae_regularizer_ref",
    "fused_available",
    "__version__",
]
