"""The other baselines of disentanglement_lib's study (docs/math.md 6): beta-TCVAE, DIP-VAE I/II and AnnealedVAE.

Each is a diagonal-Gaussian VAE on the same networks as beta-VAE (:class:`BetaVAE` gives them the
posterior, the sample and the per-datapoint BCE and KL); each adds its own term to BCE + KL. Every
loss returns the interface of :mod:`chyvae_ext.models.vae`: ``loss``, ``recon``, ``kl``,
``neg_elbo`` (BCE + KL, the true bound, whatever the model optimises), ``z`` and the model's own
terms. Built with ``members=M``, each is an ensemble like the others (hyperparameters per member).
"""

from __future__ import annotations

import math

import torch

from .vae import BetaVAE, Generators, Noise, _check_positive, _hyper

__all__ = ["AnnealedVAE", "BetaTCVAE", "DIPVAE", "gaussian_log_density", "minibatch_weighted_tc"]

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) elementwise (broadcasting)."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def minibatch_weighted_tc(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The minibatch-weighted estimate of the total correlation of q(z) (Chen et al. 2018), without the
    constant (d - 1) log(B N): for z_j, the sample of datapoint j, and log q(z_jl | x_i) of every pair,
    mean_j [logsumexp_i sum_l log q(z_jl|x_i) - sum_l logsumexp_i log q(z_jl|x_i)].

    z, mu, logvar: (..., B, d); returns (...,)."""
    log_q = gaussian_log_density(z.unsqueeze(-2), mu.unsqueeze(-3), logvar.unsqueeze(-3))  # (..., B_j, B_i, d)
    log_qz = torch.logsumexp(log_q.sum(-1), dim=-1)
    log_prod_qz = torch.logsumexp(log_q, dim=-2).sum(-1)
    return (log_qz - log_prod_qz).mean(-1)


class BetaTCVAE(BetaVAE):
    """beta-TCVAE (Chen et al. 2018, Eq. 5 with alpha = gamma = 1): loss = BCE + KL + (beta - 1) TC,
    TC estimated on the batch by minibatch-weighted sampling (:func:`minibatch_weighted_tc`).

    ``dataset_size`` N, where known, adds the constant (d - 1) log(B N) back to the reported ``tc``
    (the loss leaves it out: it has no gradient)."""

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        beta: float | list[float] = 6.0,
        dataset_size: int | None = None,
        members: int | None = None,
    ):
        super().__init__(latent_dim, channels, hidden, beta=beta, members=members)
        if dataset_size is not None:
            _check_positive("dataset_size", dataset_size, integer=True)
        self.dataset_size = dataset_size

    def loss(self, x: torch.Tensor, *, generator: Generators = None, noise: Noise | None = None) -> dict:
        t = self.vae_terms(x, generator=generator, noise=noise)
        tc = minibatch_weighted_tc(t["z"], t["mu"], t["logvar"])
        neg_elbo = (t["recon"] + t["kl"]).mean(-1)
        shift = 0.0
        if self.dataset_size is not None:
            shift = (self.latent_dim - 1) * math.log(x.shape[-4] * self.dataset_size)
        return {
            "loss": neg_elbo + (self.beta - 1.0) * tc,
            "recon": t["recon"].mean(-1),
            "kl": t["kl"].mean(-1),
            "tc": tc + shift,
            "neg_elbo": neg_elbo,
            "z": t["z"],
        }


DIP_KINDS = ("i", "ii")


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor, kind: str) -> torch.Tensor:
    """DIP-VAE's covariance over the batch (..., B, d) -> (..., d, d): Cov[mu] = E[mu mu^T] - E[mu] E[mu]^T
    (type "i"), plus E[diag(exp(logvar))] (type "ii", the aggregate posterior's)."""
    if kind not in DIP_KINDS:
        raise ValueError(f"kind must be 'i' or 'ii', got {kind!r}")
    m = mu.mean(-2)
    cov = (mu.unsqueeze(-1) * mu.unsqueeze(-2)).mean(-3) - m.unsqueeze(-1) * m.unsqueeze(-2)
    if kind == "ii":
        cov = cov + torch.diag_embed(logvar.exp().mean(-2))
    return cov


class DIPVAE(BetaVAE):
    """DIP-VAE (Kumar et al. 2018, Eqs. 6-7): loss = BCE + KL + lambda_od sum_{i != j} M_ij^2
    + lambda_d sum_i (M_ii - 1)^2 with lambda_d = lambda_d_factor * lambda_od and M
    :func:`dip_covariance` of ``kind`` "i" (the means') or "ii" (the aggregate posterior's).
    disentanglement_lib's study: lambda_od in {1, 2, 5, 10, 20, 50}, lambda_d_factor 10 (I) or 1 (II)."""

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        kind: str = "i",
        lambda_od: float | list[float] = 10.0,
        lambda_d_factor: float | list[float] | None = None,
        members: int | None = None,
    ):
        if kind not in DIP_KINDS:
            raise ValueError(f"kind must be 'i' or 'ii', got {kind!r}")
        super().__init__(latent_dim, channels, hidden, beta=1.0, members=members)
        self.kind = kind
        if lambda_d_factor is None:
            lambda_d_factor = 10.0 if kind == "i" else 1.0
        self.lambda_od = self._member_values("lambda_od", _hyper("lambda_od", lambda_od, members))
        self.lambda_d_factor = self._member_values(
            "lambda_d_factor", _hyper("lambda_d_factor", lambda_d_factor, members)
        )

    @property
    def lambda_d(self) -> float | torch.Tensor:
        """lambda_d = lambda_d_factor * lambda_od."""
        return self.lambda_d_factor * self.lambda_od

    def loss(self, x: torch.Tensor, *, generator: Generators = None, noise: Noise | None = None) -> dict:
        t = self.vae_terms(x, generator=generator, noise=noise)
        cov = dip_covariance(t["mu"], t["logvar"], self.kind)
        diag = torch.diagonal(cov, dim1=-2, dim2=-1)
        off_diag = (cov - torch.diag_embed(diag)).pow(2).sum((-2, -1))
        on_diag = (diag - 1.0).pow(2).sum(-1)
        dip = self.lambda_od * off_diag + self.lambda_d * on_diag
        neg_elbo = (t["recon"] + t["kl"]).mean(-1)
        return {
            "loss": neg_elbo + dip,
            "recon": t["recon"].mean(-1),
            "kl": t["kl"].mean(-1),
            "dip_off_diagonal": off_diag,
            "dip_diagonal": on_diag,
            "neg_elbo": neg_elbo,
            "z": t["z"],
        }


class AnnealedVAE(BetaVAE):
    """AnnealedVAE (Burgess et al. 2018, Eq. 8): loss = BCE + gamma |KL - C(t)| (KL the batch mean),
    the capacity C(t) = min(c_max, c_max t / c_iters) raised linearly over the first ``c_iters`` steps.

    t is the buffer ``iteration`` (in the state dict, so a resumed run goes on where it stopped): the
    number of training losses computed so far, counted by ``loss`` in training mode with gradients on
    (an evaluation in eval mode or under no_grad leaves it). The study: gamma = 1000, c_iters = 100,000,
    c_max in {5, 10, 25, 50, 75, 100}."""

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        gamma: float | list[float] = 1000.0,
        c_max: float | list[float] = 25.0,
        c_iters: int = 100000,
        members: int | None = None,
    ):
        super().__init__(latent_dim, channels, hidden, beta=1.0, members=members)
        _check_positive("c_iters", c_iters, integer=True)
        self.c_iters = c_iters
        self.gamma = self._member_values("gamma", _hyper("gamma", gamma, members))
        self.c_max = self._member_values("c_max", _hyper("c_max", c_max, members))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def capacity(self) -> torch.Tensor:
        """C(t) at the current iteration: a 0-d tensor (an ensemble's: (M,))."""
        fraction = torch.clamp(self.iteration.double() / self.c_iters, max=1.0)
        c_max = self.c_max if self.members is None else self.c_max.double()
        return (c_max * fraction).float()

    def loss(self, x: torch.Tensor, *, generator: Generators = None, noise: Noise | None = None) -> dict:
        t = self.vae_terms(x, generator=generator, noise=noise)
        kl, capacity = t["kl"].mean(-1), self.capacity()
        if self.training and torch.is_grad_enabled():
            self.iteration.add_(1)
        recon = t["recon"].mean(-1)
        return {
            "loss": recon + self.gamma * (kl - capacity).abs(),
            "recon": recon,
            "kl": kl,
            "capacity": capacity.expand_as(kl),
            "neg_elbo": (t["recon"] + t["kl"]).mean(-1),
            "z": t["z"],
        }
