"""The fused regulariser: fake kernels for tracing the compiled ops, and the public entry point."""

from __future__ import annotations

import warnings

import torch

from . import _C, _arch, _build_config
from ._checks import check_non_negative
from ._validate import NU_MAX, check_impl, check_regularizer_inputs
from .reference import regularizer_from_checked

_OPS = torch.ops.chyvae_ext


@torch.library.register_fake("chyvae_ext::regularizer")
def _regularizer_fake(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants):
    return mu.new_empty((mu.shape[0],))


@torch.library.register_fake("chyvae_ext::regularizer_forward")
def _regularizer_forward_fake(mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants):
    fast_path = prior_prec is None and (z.dim() == 2 or z.shape[1] == 1)  # K = 1, isotropic
    saved = mu.new_empty((mu.shape[0], mu.shape[1] + 6 if fast_path else 0), dtype=torch.float64)
    return mu.new_empty((mu.shape[0],)), saved


@torch.library.register_fake("chyvae_ext::regularizer_backward")
def _regularizer_backward_fake(grad, mu, L, z, nu, prior_prec, prior_scale, prior_logdet, constants, saved=None):
    return (
        mu.new_empty(mu.shape),
        L.new_empty(L.shape),
        z.new_empty(z.shape),
        mu.new_empty((mu.shape[0],), dtype=torch.float64),
    )


# Autograd for chyvae_ext::regularizer is registered in C++ (csrc/autograd.cpp): the Python
# wrapper of torch.library.register_autograd cost more than the fused kernels themselves.


def fused_available(device: torch.device | str) -> bool:
    """Whether a fused kernel was compiled that can run on ``device``.

    On CUDA: the module was built with CUDA kernels and holds machine code for the device's compute
    capability or PTX the driver can compile for it (see :func:`chyvae_ext.build_info`'s
    ``cuda_archs``). ``impl="auto"`` uses the reference where this is False, with one warning.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not _build_config.WITH_CUDA:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _arch_supported(index)


def _marked_constant(fn):
    """What ``torch.compiler.assume_constant_result`` does (a mark torch.compile reads: the call's result is a
    constant of the graph), without importing torch._dynamo on ``import chyvae_ext`` (1.6 s of its 3 s).
    tests/test_build.py checks the mark is the one torch's decorator sets."""
    fn._dynamo_marked_constant = True
    return fn


@_marked_constant
def _arch_supported(index: int) -> bool:
    ok = _SUPPORTED.get(index)
    if ok is None:
        ok = _SUPPORTED[index] = _arch.runs_on(_build_config.CUDA_ARCHS, torch.cuda.get_device_capability(index))
        if ok:
            _C.allow_cuda_device(index)
        else:
            warnings.warn(
                f"chyvae_ext: the CUDA kernels were built for {_build_config.CUDA_ARCHS}, which cannot run on "
                f"cuda:{index} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(index)))}); "
                "impl='auto' uses the pure-PyTorch reference there. Rebuild with TORCH_CUDA_ARCH_LIST naming "
                "this device's capability for the fused kernels.",
                RuntimeWarning,
                stacklevel=4,
            )
    return ok


_SUPPORTED: dict[int, bool] = {}


def jittered_cholesky(L: torch.Tensor, jitter: float) -> torch.Tensor:
    """The Cholesky factor of ``L L^T + jitter * I``: the original code's posterior floor (docs/math.md 1).

    L: (..., d, d), its lower triangle read. The product and its factorisation run in float64 (a
    jitter of 1e-4 beside entries of 30 is below float32's resolution) and the factor comes back in
    L's dtype, differentiable; cholesky_ex, so nothing is read back to the host. ``jitter = 0`` gives
    ``tril(L)`` (its diagonal is positive) unchanged.
    """
    jitter = check_non_negative("posterior_jitter", jitter)
    L = torch.tril(L)
    if jitter == 0:
        return L
    L64 = L.double()
    eye = torch.eye(L.shape[-1], dtype=torch.float64, device=L.device)
    factor, _ = torch.linalg.cholesky_ex(L64 @ L64.mT + jitter * eye)
    return factor.to(L.dtype)


def chyvae_regularizer(
    mu: torch.Tensor,
    L: torch.Tensor,
    z: torch.Tensor,
    nu: float | torch.Tensor,
    prior_cov: float | torch.Tensor | None = None,
    *,
    constants: bool = True,
    impl: str = "auto",
    posterior_jitter: float = 0.0,
) -> torch.Tensor:
    """The CHyVAE regulariser R of docs/math.md 1.1, one value per datapoint: ELBO = E[log p(x|z)] + R.

    Args:
        mu: (N, d) posterior means.
        L: (N, d, d) Cholesky factors of the posterior covariances C = L L^T; only the lower
            triangle is read.
        z: (N, d) or (N, K, d) posterior samples forming Z = [z_1 .. z_K].
        nu: inverse-Wishart degrees of freedom, > d - 1; a float, a 0-d tensor (differentiable) on
            the CPU or the inputs' device, or a (N,) tensor, one value per datapoint (an ensemble's
            members in one call; its gradient is per datapoint). A float or CPU tensor is checked
            and read on the host; a GPU tensor is read by the kernels in device memory (no
            synchronisation; a value that is not > d - 1 gives NaN).
        prior_cov: Sigma0, the mean of the hyperprior: None (identity), a positive float (a multiple
            of I), an SPD (d, d) tensor (validated on every call: it is read back from its device)
            or a PriorCov (validated once); Psi = max(nu - d - 1, 1) * Sigma0. Receives no gradient.
        constants: include c(nu, Psi, d, K), making R an exact ELBO term.
        impl: "fused" (compiled kernels, no per-datapoint factorisation), "reference" (pure
            PyTorch, docs/math.md 1.2) or "auto" (fused when compiled for the inputs' device).
        posterior_jitter: EPS >= 0; the posterior covariance is ``L L^T + EPS * I`` (the original
            code's floor, EPS = 1e-4), handed to the kernels as its Cholesky factor
            (:func:`jittered_cholesky`). 0 (the default): C = L L^T.

    Returns:
        (N,) tensor in the inputs' dtype (float16/bfloat16 are computed in float32).
    """
    if posterior_jitter != 0:
        check_regularizer_inputs(mu, L, z, nu, prior_cov)  # names a wrong L before it is factorised
        L = jittered_cholesky(L, posterior_jitter)
    if not torch.compiler.is_compiling() and not (isinstance(nu, float) and nu > NU_MAX):
        # The common eager call is checked and run in C++ (python/module.cpp); None means the call
        # is outside it (or wrong), and the checks below take over and name what is wrong.
        out = _C.regularizer_fast(mu, L, z, nu, prior_cov, constants, impl)
        if out is not None:
            return out
    impl = check_impl(impl)
    inp = check_regularizer_inputs(mu, L, z, nu, prior_cov)
    device = inp.mu.device
    if impl == "auto":
        impl = "fused" if fused_available(device) else "reference"
    if impl == "reference":
        return regularizer_from_checked(inp, constants).to(inp.out_dtype)
    if not fused_available(device):
        raise ValueError(
            f"impl='fused' needs a kernel for device {device}, but chyvae_ext was built without CUDA "
            "kernels (see chyvae_ext.build_info()); use impl='auto' or 'reference', or rebuild with CUDA"
        )
    # Eager calls skip torch.ops' Python binding (see python/module.cpp); traced ones must use it.
    op = _OPS.regularizer if torch.compiler.is_compiling() else _C.regularizer_eager
    out = op(inp.mu, inp.L, inp.z, inp.nu, inp.prior_prec, inp.prior_scale, inp.prior_logdet, bool(constants))
    return out if out.dtype == inp.out_dtype else out.to(inp.out_dtype)
