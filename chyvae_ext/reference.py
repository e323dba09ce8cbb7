"""The pure-PyTorch reference of the CHyVAE regulariser (docs/math.md 1.2): literal, O(d^3) per datapoint.

It is the oracle for the tests and the fallback where no fused kernel is compiled.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_non_negative
from ._validate import RegularizerInputs, check_regularizer_inputs


def multivariate_digamma(a: torch.Tensor, d: int) -> torch.Tensor:
    """psi_d(a) = sum_{i=1..d} digamma(a + (1 - i) / 2), elementwise over a tensor a."""
    offsets = torch.arange(d, dtype=a.dtype, device=a.device) / 2
    return torch.digamma(a.unsqueeze(-1) - offsets).sum(-1)


def multivariate_lgamma(a: torch.Tensor, d: int) -> torch.Tensor:
    """log Gamma_d(a) = d (d - 1) / 4 log(pi) + sum_{i=1..d} lgamma(a + (1 - i) / 2), elementwise over a.

    torch.special.multigammaln checks its argument on the host (a device synchronisation on a GPU);
    this sum does not, and is as exact.
    """
    offsets = torch.arange(d, dtype=a.dtype, device=a.device) / 2
    return torch.lgamma(a.unsqueeze(-1) - offsets).sum(-1) + d * (d - 1) / 4 * math.log(math.pi)


def regularizer_from_checked(inp: RegularizerInputs, constants: bool, jitter: float = 0.0) -> torch.Tensor:
    """R of docs/math.md 1.1 for validated inputs, computed (and returned) in float64 where the device has it,
    else in the compute dtype; the callers cast it to the inputs'. Reads nothing back to the host.

    jitter: the posterior covariance is C = L L^T + jitter * I, formed and factorised as written
    (the original code's floor when 1e-4)."""
    # float64 where the device has it: the terms of order nu * d * log(nu) cancel to a few nats, which
    # float32 loses from nu ~ 1e5 on (the kernels keep their nu-dependent scalars in float64 too)
    work = torch.float64 if inp.mu.device.type in ("cpu", "cuda") else inp.mu.dtype
    mu = inp.mu.to(work)
    z = (inp.z if inp.z.dim() == 3 else inp.z.unsqueeze(1)).to(work)
    n, k, d = z.shape
    L = torch.tril(inp.L).to(work)
    if inp.nu.device == mu.device:
        nu = inp.nu.to(mu.dtype)
    elif inp.nu.requires_grad:
        nu = inp.nu.to(device=mu.device, dtype=mu.dtype)  # a copy to the device, differentiable
    else:  # a fixed CPU nu: filled on the device (a copy from the host could not be graph-captured)
        nu = torch.full((), float(inp.nu), dtype=mu.dtype, device=mu.device)
    if inp.prior_cov is None:
        sigma0 = inp.prior_scale * torch.eye(d, dtype=mu.dtype, device=mu.device)
        logdet_sigma0 = d * math.log(inp.prior_scale)
    else:
        sigma0 = inp.prior_cov.to(work)
        logdet_sigma0 = inp.prior_logdet
    s = torch.clamp(nu - d - 1, min=1.0)
    psi = (s[:, None, None] if s.dim() == 1 else s) * sigma0
    zm = z.mT  # (N, d, K)
    psi_post = psi + zm @ zm.mT  # Psi' = Psi + Z Z^T
    chol_post, _ = torch.linalg.cholesky_ex(psi_post)
    logdet_post = 2 * torch.log(torch.diagonal(chol_post, dim1=-2, dim2=-1)).sum(-1)
    cov = L @ L.mT
    if jitter:
        cov = cov + jitter * torch.eye(d, dtype=mu.dtype, device=mu.device)
        logdet_c = 2 * torch.log(torch.diagonal(torch.linalg.cholesky_ex(cov)[0], dim1=-2, dim2=-1)).sum(-1)
    else:
        logdet_c = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    m = cov + mu[:, :, None] * mu[:, None, :] + psi  # C + mu mu^T + Psi
    trace = torch.cholesky_solve(m, chol_post).diagonal(dim1=-2, dim2=-1).sum(-1)
    nu_post = nu + k
    r = -(nu + 1) / 2 * logdet_post - nu_post / 2 * trace + 0.5 * logdet_c
    if constants:
        logdet_psi = d * torch.log(s) + logdet_sigma0  # |s Sigma0| = s^d |Sigma0|
        c = (
            nu / 2 * logdet_psi
            + nu_post * d / 2
            + d / 2
            + d / 2 * math.log(2)
            + multivariate_lgamma(nu_post / 2, d)
            - multivariate_lgamma(nu / 2, d)
            + (1 - k) / 2 * multivariate_digamma(nu_post / 2, d)
        )
        r = r + c
    return r


def chyvae_regularizer_ref(
    mu: torch.Tensor,
    L: torch.Tensor,
    z: torch.Tensor,
    nu: float | torch.Tensor,
    prior_cov: float | torch.Tensor | None = None,
    *,
    constants: bool = True,
    posterior_jitter: float = 0.0,
) -> torch.Tensor:
    """Reference CHyVAE regulariser R (docs/math.md 1.1), one value per datapoint.

    Same arguments and result as :func:`chyvae_ext.chyvae_regularizer`: ``mu`` (N, d), ``L`` (N, d, d)
    (lower triangle read), ``z`` (N, d) or (N, K, d), ``nu`` > d - 1 (a number, a 0-d tensor or one
    value per datapoint, (N,)), ``prior_cov`` None, a positive float or an SPD (d, d) tensor,
    ``posterior_jitter`` EPS >= 0 (C = L L^T + EPS * I, formed as written, as the original code
    does). Forms Psi' and factorises it per datapoint. Returns (N,).
    """
    jitter = check_non_negative("posterior_jitter", posterior_jitter)
    inp = check_regularizer_inputs(mu, L, z, nu, prior_cov)
    return regularizer_from_checked(inp, constants, jitter).to(inp.out_dtype)
