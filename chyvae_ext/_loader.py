"""Loads the compiled module, refusing one built against a different torch or CUDA."""

from __future__ import annotations

import warnings

import torch

REBUILD_HINT = (
    "Rebuild chyvae_ext against the torch in this environment: "
    "`pip install --no-build-isolation --no-deps --force-reinstall .` from the source tree "
    "(--no-build-isolation matters: without it pip builds against another torch in an isolated "
    "environment)."
)


def _base_version(version: str) -> str:
    return version.split("+")[0]


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def check_build_compat(
    built_torch: str,
    built_with_cuda: bool,
    built_cuda: str | None,
    running_torch: str,
    running_cuda: str | None,
) -> None:
    """Raise ImportError when a module built as described cannot run with the running torch."""
    if _base_version(built_torch) != _base_version(running_torch):
        raise ImportError(
            f"chyvae_ext was built against torch {built_torch}, but torch {running_torch} is "
            f"installed. {REBUILD_HINT}"
        )
    if built_with_cuda:
        if running_cuda is None:
            raise ImportError(
                f"chyvae_ext was built with CUDA {built_cuda} kernels, but the installed torch "
                f"{running_torch} is a CPU build. {REBUILD_HINT}"
            )
        # torch's own policy for extensions: the major version must match; a minor mismatch warns
        # (CUDA's minor-version compatibility lets such a module run).
        if built_cuda is None or _major_minor(built_cuda)[0] != _major_minor(running_cuda)[0]:
            raise ImportError(
                f"chyvae_ext was built with CUDA {built_cuda}, but torch {running_torch} uses CUDA "
                f"{running_cuda}: the major versions differ. {REBUILD_HINT} Point CUDA_HOME at a CUDA "
                f"{running_cuda} toolkit."
            )
        if _major_minor(built_cuda) != _major_minor(running_cuda):
            warnings.warn(
                f"chyvae_ext was built with CUDA {built_cuda} and torch {running_torch} uses CUDA {running_cuda}: "
                "the minor versions differ, which CUDA's minor-version compatibility allows. If the "
                f"kernels fail to load or run, rebuild: {REBUILD_HINT}",
                RuntimeWarning,
                stacklevel=4,
            )


def load_extension():
    """Import chyvae_ext._C after checking it matches the running torch; returns the module."""
    try:
        from . import _build_config
    except ImportError as exc:
        raise ImportError(
            "chyvae_ext's compiled part is missing (no _build_config): the package was not built. "
            "Install it with `pip install --no-build-isolation .`"
        ) from exc
    check_build_compat(
        _build_config.TORCH_VERSION,
        _build_config.WITH_CUDA,
        _build_config.CUDA_VERSION,
        torch.__version__,
        torch.version.cuda,
    )
    try:
        from . import _C
    except ImportError as exc:
        raise ImportError(f"chyvae_ext's compiled module failed to load ({exc}). {REBUILD_HINT}") from exc
    if not _build_config.WITH_CUDA and torch.cuda.is_available():
        warnings.warn(
            "chyvae_ext was built without CUDA kernels but a GPU is present: CUDA inputs use the "
            "pure-PyTorch reference (impl='auto'). Rebuild on a machine with nvcc and a CUDA torch "
            "(or set CHYVAE_EXT_FORCE_CUDA=1) for the fused CUDA op.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _C
