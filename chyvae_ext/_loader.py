"""Loads the compiled module, refusing one built against a different torch or CUDA."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
import types
import warnings
from pathlib import Path

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
    """chyvae_ext._C: the module pip built, where it matches the running torch; else the same sources built
    against the running torch on first import (:func:`build_on_import`, cached). Returns the module."""
    try:
        from . import _build_config
    except ImportError:
        _build_config = None
    if _build_config is None:
        problem = ("chyvae_ext was installed without its compiled module (a plain `pip install .` builds in an "
                   "environment without torch, and ships the sources)")
    else:
        try:
            check_build_compat(
                _build_config.TORCH_VERSION,
                _build_config.WITH_CUDA,
                _build_config.CUDA_VERSION,
                torch.__version__,
                torch.version.cuda,
            )
            problem = None
        except ImportError as exc:
            problem = str(exc).replace(f" {REBUILD_HINT}", "").rstrip(".")
    if problem is None:
        try:
            from . import _C
        except ImportError as exc:
            problem = f"chyvae_ext's compiled module failed to load ({exc})"
    if problem is not None:
        _C, _build_config = build_on_import(problem)
    if not _build_config.WITH_CUDA and torch.cuda.is_available():
        warnings.warn(
            "chyvae_ext was built without CUDA kernels but a GPU is present: CUDA inputs use the "
            "pure-PyTorch reference (impl='auto'). Rebuild on a machine with nvcc and a CUDA torch "
            "(or set CHYVAE_EXT_FORCE_CUDA=1) for the fused CUDA op.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _C


# The CPU kernel's floating-point flags (CMakeLists.txt sets them on regularizer_cpu.cpp alone; a build on
# import cannot set flags per file, and applies them to the host code too, which takes no sums they reorder).
CPU_KERNEL_FLAGS = [
    "-O3", "-Wno-psabi", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
]


def sources_dir() -> Path | None:
    """Where the C++ sources are: shipped in the wheel (``chyvae_ext/_src``), or the source tree (editable)."""
    here = Path(__file__).resolve().parent
    for root in (here / "_src", here.parent):
        if (root / "csrc" / "ops.cpp").is_file() and (root / "python" / "module.cpp").is_file():
            return root
    return None


def build_tag() -> str:
    """The (torch, CUDA, Python) part of a build directory's name."""
    cuda = f"cu{torch.version.cuda}" if torch.version.cuda else "cpu"
    return f"torch-{_base_version(torch.__version__)}-{cuda}-py{sys.version_info[0]}{sys.version_info[1]}"


def build_key(sources: list[Path], root: Path, flags: list[str]) -> str:
    """12 hex digits of a sha256 over the sources' names and bytes and the build's flags: two checkouts or
    versions whose code or flags differ never share (and overwrite) a build directory."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(sources):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    headers = sorted((root / "csrc").rglob("*.h")) + sorted((root / "csrc").rglob("*.cuh"))
    for path in headers:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:12]


def build_dir_for(key: str) -> Path:
    """The build directory of a build: one per (torch, CUDA, Python, :func:`build_key`) under the cache."""
    from ._cache import default_cache_dir

    return default_cache_dir() / "build" / f"{build_tag()}-{key}"


def _load_built(build_dir: Path):
    """The module built in ``build_dir`` before, imported as it is (its directory's key says its sources
    and flags are this build's); None where there is none, or where it does not load (a build cut short)."""
    import importlib.util

    for path in sorted(build_dir.glob("_C*.so")):
        spec = importlib.util.spec_from_file_location("_C", path)
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except (ImportError, OSError):
            path.unlink(missing_ok=True)  # built again below
    return None


def build_on_import(problem: str):
    """Builds chyvae_ext._C from its sources against the running torch (ninja, through
    torch.utils.cpp_extension) into :func:`build_dir_for` its key, or loads the module built there
    before; returns (module, its build config). One process builds at a time (a file lock); the
    others wait and load its result. A line says so whenever a build starts, and how long it took.
    Refuses (ImportError with ``problem`` and how to rebuild) where no C++ compiler or no sources are
    found. ``CHYVAE_EXT_BUILD_CFLAGS`` adds compiler flags after the package's own (the tests build
    with ``-O0``: the same code, built faster)."""
    src = sources_dir()
    compiler = os.environ.get("CXX", "c++")
    if src is None:
        raise ImportError(f"{problem}. {REBUILD_HINT} (It cannot be built on import here: no C++ sources were found.)")
    from torch.utils import cpp_extension

    with_cuda = (
        torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("CHYVAE_EXT_CPU_ONLY") != "1"
    )
    archs = None
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    package = __package__
    def string(name: str, value: str) -> str:  # a string macro through ninja's shell
        return f'-D{name}=\\"{value}\\"'

    defines = [string("CHYVAE_EXT_VERSION", _package_version())]
    if with_cuda:
        defines += ["-DCHYVAE_EXT_WITH_CUDA", string("CHYVAE_EXT_CUDA_VERSION", torch.version.cuda),
                    string("CHYVAE_EXT_CUDA_ARCHS", archs or "")]
    sources = [src / "python" / "module.cpp"] + [src / "csrc" / f for f in (
        "ops.cpp", "autograd.cpp", "regularizer_host.cpp", "cpu/regularizer_cpu.cpp")]
    if with_cuda:
        sources.append(src / "csrc" / "cuda" / "regularizer_cuda.cu")
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    extra = os.environ.get("CHYVAE_EXT_BUILD_CFLAGS", "").split()
    cflags = CPU_KERNEL_FLAGS + defines + openmp + extra  # the extra flags last, so they win (the tests' -O0)
    cuda_cflags = ["-O3", *defines]
    build_dir = build_dir_for(build_key(sources, src, [compiler, *cflags, "|", *cuda_cflags, str(with_cuda)]))
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        module = _load_built(build_dir)
        if module is None:
            if shutil.which(compiler) is None:
                raise ImportError(f"{problem}. {REBUILD_HINT} (It cannot be built on import here: no C++ compiler "
                                  f"({compiler}) was found.)")
            t0 = time.perf_counter()
            print(f"chyvae_ext: {problem}; building it against torch {torch.__version__} in {build_dir} "
                  "(once for these sources; minutes on a small machine)", file=sys.stderr, flush=True)
            module = cpp_extension.load(
                name="_C",
                sources=[str(p) for p in sources],
                extra_cflags=cflags,
                extra_cuda_cflags=cuda_cflags,
                extra_ldflags=openmp,
                extra_include_paths=[str(src / "csrc")],
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                verbose=False,
            )
            print(f"chyvae_ext: built in {time.perf_counter() - t0:.0f} s; later imports load it from there",
                  file=sys.stderr, flush=True)
    config = types.ModuleType(f"{package}._build_config")
    config.VERSION = _package_version()
    config.TORCH_VERSION = _base_version(torch.__version__)
    config.WITH_CUDA = with_cuda
    config.CUDA_VERSION = torch.version.cuda if with_cuda else None
    config.CUDA_ARCHS = archs if with_cuda else None
    config.BUILT_ON_IMPORT = str(build_dir)
    for name, mod in (("_C", module), ("_build_config", config)):  # what `from . import _C` finds from now on
        sys.modules[f"{package}.{name}"] = mod
        setattr(sys.modules[package], name, mod)
    return module, config


def _package_version() -> str:
    return getattr(sys.modules.get(__package__), "__version__", "unknown")  # set before the package loads _C
