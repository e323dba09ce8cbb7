"""Input checks shared by the fused op and the reference: one place, one set of messages."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch

IMPLS = ("auto", "fused", "reference")


@dataclass
class RegularizerInputs:
    """Validated inputs, cast to the compute dtype (float32 for half and bfloat16 inputs)."""

    mu: torch.Tensor  # (N, d)
    L: torch.Tensor  # (N, d, d)
    z: torch.Tensor  # (N, d) or (N, K, d)
    nu: torch.Tensor  # 0-d float32/float64 on the CPU or the inputs' device, or (N,) on the inputs' device;
    # differentiable when the user's nu is
    prior_cov: torch.Tensor | None  # (d, d) in the compute dtype, or None for prior_scale * I
    prior_scale: float
    prior_prec: torch.Tensor | None  # Sigma0^-1, float64 (d, d), on the inputs' device
    prior_logdet: float  # log|Sigma0|, for a full prior_cov
    out_dtype: torch.dtype


class PriorCov:
    """A full prior covariance Sigma0, validated once: its precision and log-determinant kept with it.

    ``chyvae_regularizer(..., prior_cov=PriorCov(cov))`` and ``CHyVAE(prior_cov=cov)`` use it so that
    a training step checks nothing on the device: validating a plain tensor (finite, symmetric,
    positive-definite) reads values back from the device and factorises it, on every call.

    Attributes: ``cov`` (d, d) as given, ``prec`` = Sigma0^-1 in float64 on the same device, and
    ``logdet`` = log|Sigma0| (a float). ``to(device)`` moves the tensors.
    """

    def __init__(self, cov: torch.Tensor):
        if isinstance(cov, PriorCov):
            cov, prec, logdet = cov.cov, cov.prec, cov.logdet
        else:
            cov, prec, logdet = _validate_cov_tensor(cov, None)
        self.cov, self.prec, self.logdet = cov, prec, logdet

    @classmethod
    def trusted(cls, cov: torch.Tensor, prec: torch.Tensor, logdet: float) -> PriorCov:
        """Rebuilds a validated prior from its parts (as a model keeps them in buffers); no checks."""
        obj = object.__new__(cls)
        obj.cov, obj.prec, obj.logdet = cov, prec, logdet
        return obj

    def to(self, device) -> PriorCov:
        return PriorCov.trusted(self.cov.to(device), self.prec.to(device), self.logdet)

    @property
    def shape(self) -> torch.Size:
        return self.cov.shape

    @property
    def device(self) -> torch.device:
        return self.cov.device

    def __repr__(self) -> str:
        return f"PriorCov(d={self.cov.shape[0]}, logdet={self.logdet:.6g}, device={self.cov.device})"


def check_impl(impl: object) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl  # type: ignore[return-value]


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


@functools.lru_cache(maxsize=64)
def _nu_tensor(value: float) -> torch.Tensor:
    # Creating a 0-d tensor costs more than the fused kernels at small batches; nu is read-only.
    return torch.tensor(value, dtype=torch.float64)


NU_MAX = 1e12  # beyond it float64 itself loses R: its terms of order nu * d * log(nu) cancel to a few nats


def _check_nu_value(value: float, d: int) -> None:
    if not math.isfinite(value) or value <= d - 1:
        raise ValueError(f"nu must be finite and greater than d - 1 = {d - 1} (d = {d}), got {value}")
    if value > NU_MAX:
        raise ValueError(f"nu must be at most {NU_MAX:g}, got {value:g}: the regulariser's terms of order "
                         "nu * d * log(nu) cancel to a few nats, more digits than float64 holds beyond it "
                         "(at nu = 1e13 R is off by about half a nat)")


def _check_nu_rows(nu: torch.Tensor, d: int) -> None:
    if bool((nu > NU_MAX).any()):
        _check_nu_value(float(nu.max()), d)
    bad = ~(torch.isfinite(nu) & (nu > d - 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"nu must be finite and greater than d - 1 = {d - 1} (d = {d}), got {float(nu[i])} at datapoint {i}"
        )


def _check_nu(nu: object, n: int, d: int, device: torch.device) -> torch.Tensor:
    """nu as a 0-d float32/float64 tensor on the CPU or on ``device``, or a (n,) one on ``device``
    (differentiable when nu is).

    A (n,) tensor is one nu per datapoint (an ensemble's members in one call): on the CPU every
    value is checked here; on a GPU none is (as for a 0-d GPU tensor, below); on another device
    than ``device`` it moves there.

    A number becomes a CPU tensor (a fixed value: the CUDA op reads it on the host, as torch's ops
    read a 0-d CPU tensor given with CUDA tensors), except while compiling, where it is made on
    ``device`` inside the graph (a CPU tensor would keep Inductor's CUDA graphs off). A CPU tensor
    stays on the CPU; a tensor on another device moves to ``device``. A number or a CPU tensor is
    checked (> d - 1) here. A tensor already on a GPU is not: reading its value would make the host
    wait for the device; the kernels read it in device memory, and a value that is not finite and
    > d - 1 makes R and its gradients NaN.
    """
    if type(nu) is float:  # the common case first: the ABC check of numbers.Real costs ~1 us
        value = nu
    elif isinstance(nu, bool) or not isinstance(nu, (numbers.Real, torch.Tensor)):
        raise TypeError(f"nu must be a float, a 0-d tensor or a (N,) tensor, got {type(nu).__name__}")
    elif isinstance(nu, torch.Tensor):
        if nu.dim() != 0 and tuple(nu.shape) != (n,):
            raise ValueError(f"nu must be a 0-d tensor or have shape ({n},) (one per datapoint), got {tuple(nu.shape)}")
        if not nu.is_floating_point():
            raise TypeError(f"nu must be a floating-point tensor, got dtype {nu.dtype}")
        if nu.device.type == "cpu" and not torch.compiler.is_compiling():
            if nu.dim() == 0:
                _check_nu_value(float(nu.detach()), d)
            elif n > 0:
                _check_nu_rows(nu.detach(), d)
        if nu.dtype not in (torch.float32, torch.float64):
            nu = nu.to(torch.float32)
        if nu.device == device or (nu.device.type == "cpu" and nu.dim() == 0):
            return nu
        return nu.to(device)
    else:
        value = float(nu)
    _check_nu_value(value, d)
    if torch.compiler.is_compiling():
        return torch.tensor(value, dtype=torch.float64, device=device)
    return _nu_tensor(value)


def _validate_cov_tensor(prior_cov: object, d: int | None):
    """(cov, Sigma0^-1 in float64, log|Sigma0|) of a covariance tensor; reads it back (syncs)."""
    if not isinstance(prior_cov, torch.Tensor):
        raise TypeError(
            f"prior_cov must be None, a positive float, a (d, d) tensor or a PriorCov, got {type(prior_cov).__name__}"
        )
    if not prior_cov.is_floating_point():
        raise TypeError(f"prior_cov must be a floating-point tensor, got dtype {prior_cov.dtype}")
    if prior_cov.dim() != 2 or prior_cov.shape[0] != prior_cov.shape[1] or (d is not None and prior_cov.shape[0] != d):
        want = f"({d}, {d})" if d is not None else "(d, d)"
        raise ValueError(f"prior_cov must have shape {want}, got {tuple(prior_cov.shape)}")
    if prior_cov.requires_grad:
        raise ValueError("prior_cov must not require grad: it is a fixed hyperparameter here")
    cov64 = prior_cov.to(torch.float64)
    if not bool(torch.isfinite(cov64).all()):
        raise ValueError("prior_cov must be finite, got non-finite entries")
    asym = float((cov64 - cov64.mT).abs().max())
    tol = 100 * torch.finfo(prior_cov.dtype).eps * max(float(cov64.abs().max()), 1e-300)
    if asym > tol:
        raise ValueError(
            f"prior_cov must be symmetric positive-definite, got max |A - A^T| = {asym:.3g} (tolerance {tol:.3g})"
        )
    chol, info = torch.linalg.cholesky_ex(cov64)
    if int(info) != 0:
        raise ValueError(
            "prior_cov must be symmetric positive-definite, got a matrix whose Cholesky "
            f"factorisation fails at leading minor {int(info)}"
        )
    prec = torch.cholesky_inverse(chol).contiguous()
    logdet = float(2.0 * torch.log(torch.diagonal(chol)).sum())
    return prior_cov.detach(), prec, logdet


def _check_prior_cov(prior_cov: object, d: int, device: torch.device, dtype: torch.dtype):
    """Returns (prior_cov tensor or None, scale, precision float64 or None, log|Sigma0|)."""
    if prior_cov is None:
        return None, 1.0, None, 0.0
    if isinstance(prior_cov, bool):
        raise TypeError("prior_cov must be None, a positive float, a (d, d) tensor or a PriorCov, got bool")
    if isinstance(prior_cov, numbers.Real):
        scale = float(prior_cov)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"prior_cov as a number must be positive and finite, got {scale}")
        return None, scale, None, 0.0
    if isinstance(prior_cov, PriorCov):  # validated when it was made: shape and device only
        if prior_cov.cov.shape != (d, d):
            raise ValueError(f"prior_cov must have shape ({d}, {d}), got {tuple(prior_cov.cov.shape)}")
        if prior_cov.cov.device != device or prior_cov.prec.device != device:
            raise ValueError(f"prior_cov must be on {device} like mu, got {prior_cov.cov.device}")
        prec = prior_cov.prec if prior_cov.prec.dtype == torch.float64 else prior_cov.prec.to(torch.float64)
        return prior_cov.cov.to(dtype), 1.0, prec, prior_cov.logdet
    if isinstance(prior_cov, torch.Tensor) and prior_cov.shape == (d, d) and prior_cov.device != device:
        raise ValueError(f"prior_cov must be on {device} like mu, got {prior_cov.device}")
    cov, prec, logdet = _validate_cov_tensor(prior_cov, d)
    return cov.to(dtype), 1.0, prec, logdet


def check_regularizer_inputs(mu, L, z, nu, prior_cov) -> RegularizerInputs:
    """Validate the arguments of chyvae_regularizer; every error names the argument."""
    mu = _check_tensor("mu", mu)
    L = _check_tensor("L", L)
    z = _check_tensor("z", z)
    if mu.dim() != 2:
        raise ValueError(f"mu must have shape (N, d), got {tuple(mu.shape)}")
    n, d = mu.shape
    if d < 1:
        raise ValueError(f"mu must have at least one latent dimension, got shape {tuple(mu.shape)}")
    if L.shape != (n, d, d):
        raise ValueError(f"L must have shape ({n}, {d}, {d}) to match mu, got {tuple(L.shape)}")
    if z.dim() == 2:
        if z.shape != (n, d):
            raise ValueError(f"z must have shape ({n}, {d}) or ({n}, K, {d}), got {tuple(z.shape)}")
    elif z.dim() != 3 or z.shape[0] != n or z.shape[2] != d or z.shape[1] < 1:
        raise ValueError(f"z must have shape ({n}, {d}) or ({n}, K, {d}) with K >= 1, got {tuple(z.shape)}")
    if not (mu.dtype == L.dtype == z.dtype):
        raise TypeError(f"mu, L and z must share a dtype, got mu {mu.dtype}, L {L.dtype}, z {z.dtype}")
    if not (mu.device == L.device == z.device):
        raise ValueError(
            f"mu, L and z must be on one device, got mu {mu.device}, L {L.device}, z {z.device}"
        )
    out_dtype = mu.dtype
    compute = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
    nu_t = _check_nu(nu, n, d, mu.device)
    cov, scale, prec, logdet = _check_prior_cov(prior_cov, d, mu.device, compute)
    if compute != mu.dtype:
        mu, L, z = mu.to(compute), L.to(compute), z.to(compute)
    return RegularizerInputs(
        mu=mu,
        L=L,
        z=z,
        nu=nu_t,
        prior_cov=cov,
        prior_scale=scale,
        prior_prec=prec,
        prior_logdet=logdet,
        out_dtype=out_dtype,
    )
