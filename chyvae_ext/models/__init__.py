"""The models: the paper's three (CHyVAE, beta-VAE, FactorVAE), disentanglement_lib's other baselines
(beta-TCVAE, DIP-VAE, AnnealedVAE) and prior sampling."""

from __future__ import annotations

import torch

from .._checks import check_int
from ..sampling import sample_gaussian, sample_inverse_wishart
from .baselines import DIPVAE, AnnealedVAE, BetaTCVAE, dip_covariance, gaussian_log_density, minibatch_weighted_tc
from .networks import Decoder, Encoder, reconstruction_error
from .vae import BetaVAE, CHyVAE, FactorVAE, permute_dims

__all__ = [
    "AnnealedVAE",
    "BetaTCVAE",
    "BetaVAE",
    "CHyVAE",
    "DIPVAE",
    "Decoder",
    "Encoder",
    "FactorVAE",
    "dip_covariance",
    "gaussian_log_density",
    "minibatch_weighted_tc",
    "permute_dims",
    "reconstruction_error",
    "sample_prior",
]


def sample_prior(model: torch.nn.Module, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """n latent codes from the model's prior, (n, d) on the model's device: for CHyVAE
    Sigma ~ IW(Psi, nu) then z ~ N(0, Sigma); for the others N(0, I)."""
    n = check_int("n", n)
    param = next(model.parameters())
    d = model.latent_dim
    if isinstance(model, CHyVAE):
        nu = model.nu if isinstance(model.nu, float) else float(model.nu.detach())
        cov = model.prior_cov  # None, a positive float or a (d, d) tensor, as chyvae_regularizer takes it
        if torch.is_tensor(cov):
            sigma0 = cov.detach().to("cpu", torch.float64)
        else:
            sigma0 = torch.eye(d, dtype=torch.float64) * (1.0 if cov is None else float(cov))
        psi = max(nu - d - 1, 1.0) * sigma0
        z = sample_gaussian(sample_inverse_wishart(psi, nu, n, generator=generator), generator=generator)
        return z.to(device=param.device, dtype=param.dtype)
    return torch.randn(n, d, generator=generator, dtype=torch.float64).to(device=param.device, dtype=param.dtype)
