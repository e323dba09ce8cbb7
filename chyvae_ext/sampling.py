"""Sampling from the CHyVAE prior (docs/math.md 1.4): inverse-Wishart covariances by Bartlett's method."""

from __future__ import annotations

import math
import numbers

import torch

from ._checks import check_int


def _check_psi_nu(psi: torch.Tensor, nu: float) -> tuple[torch.Tensor, float]:
    if not isinstance(psi, torch.Tensor) or not psi.is_floating_point():
        raise TypeError(f"psi must be a floating-point tensor, got {type(psi).__name__}")
    if psi.dim() != 2 or psi.shape[0] != psi.shape[1] or psi.shape[0] < 1:
        raise ValueError(f"psi must be a square (d, d) matrix, got shape {tuple(psi.shape)}")
    d = psi.shape[0]
    if isinstance(nu, bool) or not isinstance(nu, numbers.Real) or not math.isfinite(nu) or nu <= d - 1:
        raise ValueError(f"nu must be a finite number > d - 1 = {d - 1}, got {nu!r}")
    return psi, float(nu)


def sample_inverse_wishart(
    psi: torch.Tensor, nu: float, n: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n draws of Sigma ~ IW(psi, nu), (n, d, d), in psi's dtype and on psi's device.

    Bartlett: A lower-triangular with A_ii = sqrt(chi2(nu - i + 1)), A_ij ~ N(0, 1) below the
    diagonal; with B = chol(psi^-1), W = B A A^T B^T ~ Wishart(psi^-1, nu) and Sigma = W^-1.
    The random numbers are drawn on the CPU in float64 (``generator`` a CPU torch.Generator).
    """
    psi, nu = _check_psi_nu(psi, nu)
    n = check_int("n", n)
    d = psi.shape[0]
    psi64 = psi.detach().to("cpu", torch.float64)
    chol_psi, info = torch.linalg.cholesky_ex(psi64)
    if int(info) != 0:
        raise ValueError("psi must be symmetric positive-definite; its Cholesky factorisation failed")
    b = torch.linalg.cholesky(torch.cholesky_inverse(chol_psi))
    dof = nu - torch.arange(d, dtype=torch.float64)  # nu - i + 1 for i = 1..d
    chi2 = 2.0 * torch._standard_gamma((dof / 2).expand(n, d).contiguous(), generator=generator)
    a = torch.tril(torch.randn(n, d, d, dtype=torch.float64, generator=generator), -1)
    a = a + torch.diag_embed(chi2.sqrt())
    ba = b @ a  # W = (B A)(B A)^T, so chol(W) = B A and Sigma = (B A)^-T (B A)^-1
    sigma = torch.cholesky_inverse(ba)
    return sigma.to(device=psi.device, dtype=psi.dtype)


def sample_gaussian(cov: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """One z ~ N(0, cov_i) per covariance in cov (n, d, d): (n, d), cov's dtype and device."""
    cov64 = cov.detach().to("cpu", torch.float64)
    eps = torch.randn(cov64.shape[:-1] + (1,), dtype=torch.float64, generator=generator)
    return (torch.linalg.cholesky(cov64) @ eps).squeeze(-1).to(device=cov.device, dtype=cov.dtype)
