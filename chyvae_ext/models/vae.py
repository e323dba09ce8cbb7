"""beta-VAE, FactorVAE and CHyVAE (SPEC 1 and 2), with one loss interface.

``model.loss(x, generator=...)`` returns a dict of scalar tensors: ``loss`` (what the optimiser
minimises), ``recon`` (BCE summed over pixels, mean over the batch), ``neg_elbo`` (a true upper
bound on -log p(x), mean over the batch) and the model's own terms. ``encode(x)`` gives posterior
means, ``decode(z)`` logits.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .._validate import PriorCov
from ..ops import chyvae_regularizer
from .networks import Decoder, Encoder, reconstruction_error

Noise = tuple[torch.Tensor, ...]


def _check_positive(name: str, value: object, *, minimum: float = 0.0, integer: bool = False) -> None:
    kind = int if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= minimum:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} > {minimum:g}, got {value!r}")


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """The heads and losses run in float32 when the networks run under bf16/fp16 autocast."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class _Base(nn.Module):
    def __init__(self, latent_dim: int, channels: int, hidden: int, head_dim: int):
        super().__init__()
        _check_positive("latent_dim", latent_dim, integer=True)
        _check_positive("channels", channels, integer=True)
        _check_positive("hidden", hidden, integer=True)
        self.latent_dim, self.channels, self.hidden = latent_dim, channels, hidden
        self.encoder = Encoder(channels, hidden, head_dim)
        self.decoder = Decoder(latent_dim, hidden, channels)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1:] != (self.channels, 64, 64):
            raise ValueError(f"x must have shape (N, {self.channels}, 64, 64), got {tuple(x.shape)}")

    def sample_noise(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The standard-normal draws ``loss`` makes for a batch of n, in the order it makes them.

        Drawing them outside and passing ``loss(x, noise=...)`` gives the same result as
        ``loss(x, generator=...)``; compiled training steps do this, since a torch.Generator cannot
        enter a compiled graph.
        """
        dtype = self.decoder.fc[0].weight.dtype  # the parameters' dtype (heads run in it under autocast)
        return tuple(torch.randn(s, generator=generator, device=device, dtype=dtype) for s in self._noise_shapes(n))

    def _noise_shapes(self, n: int) -> list[tuple[int, ...]]:
        return [(n, self.latent_dim)]

    def _take_noise(self, n, like, generator, noise) -> tuple[torch.Tensor, ...]:
        if noise is None:
            return self.sample_noise(n, like.device, generator)
        shapes = self._noise_shapes(n)
        if len(noise) != len(shapes) or any(tuple(t.shape) != s for t, s in zip(noise, shapes, strict=False)):
            got = [tuple(t.shape) for t in noise]
            raise ValueError(f"noise must be tensors of shapes {shapes} (from sample_noise), got {got}")
        return tuple(noise)


class BetaVAE(_Base):
    """q(z|x) = N(mu, diag sigma^2); loss = BCE + beta KL(q || N(0, I)); beta = 1 is the plain VAE."""

    def __init__(self, latent_dim: int = 10, channels: int = 1, hidden: int = 128, *, beta: float = 1.0):
        super().__init__(latent_dim, channels, hidden, 2 * latent_dim)
        _check_positive("beta", beta)
        self.beta = float(beta)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _full_precision(self.encoder(x))
        return h[:, : self.latent_dim], h[:, self.latent_dim :]  # mu, log sigma^2

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def loss(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        self.check_input(x)
        mu, logvar = self.posterior(x)
        (eps,) = self._take_noise(len(x), mu, generator, noise)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = reconstruction_error(self.decoder(z), x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return {
            "loss": (recon + self.beta * kl).mean(),
            "recon": recon.mean(),
            "kl": kl.mean(),
            "neg_elbo": (recon + kl).mean(),
            "z": z,
        }


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each latent dimension shuffled independently across the batch (Kim & Mnih 2018)."""
    n, d = z.shape
    idx = torch.argsort(torch.rand(n, d, generator=generator, device=z.device), dim=0)
    return torch.gather(z, 0, idx)


class FactorVAE(BetaVAE):
    """VAE + gamma TC, with TC ~ mean(D(z)[:, 0] - D(z)[:, 1]) from a discriminator D on z."""

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        gamma: float = 10.0,
        disc_hidden: int = 1000,
        disc_layers: int = 6,
    ):
        super().__init__(latent_dim, channels, hidden, beta=1.0)
        _check_positive("gamma", gamma)
        self.gamma = float(gamma)
        layers, d_in = [], latent_dim
        for _ in range(disc_layers):
            layers += [nn.Linear(d_in, disc_hidden), nn.LeakyReLU(0.2, inplace=True)]
            d_in = disc_hidden
        self.discriminator = nn.Sequential(*layers, nn.Linear(d_in, 2))

    def loss(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        out = super().loss(x, generator=generator, noise=noise)
        logits = self.discriminator(out["z"])
        tc = (logits[:, 0] - logits[:, 1]).mean()
        out["tc"] = tc
        out["loss"] = out["recon"] + out["kl"] + self.gamma * tc
        return out

    def discriminator_loss(
        self, z: torch.Tensor, z_other: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cross-entropy of D on z (label 0) against permute_dims(z_other) (label 1); z's are detached."""
        real = self.discriminator(z.detach())
        fake = self.discriminator(permute_dims(z_other.detach(), generator))
        zeros = torch.zeros(len(real), dtype=torch.long, device=real.device)
        ones = torch.ones(len(fake), dtype=torch.long, device=fake.device)
        ce = nn.functional.cross_entropy
        return 0.5 * (ce(real, zeros) + ce(fake, ones))


class CHyVAE(_Base):
    """Full-covariance posterior N(mu, L L^T) under an inverse-Wishart hyperprior (SPEC 1).

    The encoder emits mu and a raw d x d matrix A; L = tril(A) with diagonal softplus(A_ii) + 1e-4.
    The decoder sees one sample; the regulariser's K samples are drawn independently of it.
    ``learn_nu`` makes nu a parameter, kept above d - 1 as d - 1 + 1e-3 + softplus(raw).
    """

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        nu: float = 200.0,
        prior_cov: float | torch.Tensor | None = None,
        num_samples: int = 1,
        learn_nu: bool = False,
        impl: str = "auto",
    ):
        super().__init__(latent_dim, channels, hidden, latent_dim + latent_dim * latent_dim)
        _check_positive("nu", nu, minimum=latent_dim - 1)
        _check_positive("num_samples", num_samples, integer=True)
        self.num_samples, self.impl, self.learn_nu = num_samples, impl, bool(learn_nu)
        self._nu_floor = latent_dim - 1 + 1e-3  # strictly above d - 1 even in float32
        self.set_prior_cov(prior_cov)
        self.register_load_state_dict_post_hook(_rederive_prior)
        self._nu_fixed = float(nu)
        if self.learn_nu:
            if nu <= self._nu_floor:
                raise ValueError(f"with learn_nu=True, nu must start above d - 1 + 1e-3 = {self._nu_floor}, got {nu}")
            self.nu_raw = nn.Parameter(torch.tensor(math.log(math.expm1(nu - self._nu_floor)), dtype=torch.float32))

    @property
    def nu(self) -> torch.Tensor | float:
        """nu: a float when fixed, else a 0-d tensor on the model's device (never read back to the host)."""
        if self.learn_nu:
            return self._nu_floor + nn.functional.softplus(self.nu_raw)
        return self._nu_fixed

    def set_prior_cov(self, prior_cov: float | torch.Tensor | PriorCov | None) -> None:
        """Sets Sigma0: None (identity), a positive float, or an SPD (d, d) tensor (or PriorCov).

        A tensor is validated here, once (this reads it back from its device), and kept with its
        precision (float64) and log-determinant as buffers that move with the model, so that
        ``loss`` checks nothing on the device.
        """
        for name in ("prior_cov", "prior_prec"):
            if name in self._buffers:
                del self._buffers[name]
        if isinstance(prior_cov, (torch.Tensor, PriorCov)):
            prior = PriorCov(prior_cov)
            if prior.cov.shape != (self.latent_dim, self.latent_dim):
                raise ValueError(
                    f"prior_cov must have shape ({self.latent_dim}, {self.latent_dim}), got {tuple(prior.cov.shape)}"
                )
            self.register_buffer("prior_cov", prior.cov.clone())
            self.register_buffer("prior_prec", prior.prec.clone(), persistent=False)
            self._prior_logdet = prior.logdet
        else:
            if prior_cov is not None:
                _check_positive("prior_cov", prior_cov)
                prior_cov = float(prior_cov)
            self.prior_cov, self.prior_prec, self._prior_logdet = prior_cov, None, 0.0

    def _prior_arg(self) -> float | PriorCov | None:
        if self.prior_prec is None:
            return self.prior_cov
        return PriorCov.trusted(self.prior_cov, self.prior_prec, self._prior_logdet)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.latent_dim
        h = _full_precision(self.encoder(x))
        mu, a = h[:, :d], h[:, d:].reshape(-1, d, d)
        diag = nn.functional.softplus(torch.diagonal(a, dim1=-2, dim2=-1)) + 1e-4
        return mu, torch.tril(a, -1) + torch.diag_embed(diag)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def _noise_shapes(self, n: int) -> list[tuple[int, ...]]:
        return [(n, self.latent_dim, 1), (n, self.num_samples, self.latent_dim, 1)]

    def loss(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        self.check_input(x)
        mu, L = self.posterior(x)
        eps, eps_k = self._take_noise(len(x), mu, generator, noise)
        z = mu + (L @ eps).squeeze(-1)
        zs = mu[:, None] + (L[:, None] @ eps_k).squeeze(-1)
        recon = reconstruction_error(self.decoder(z), x)
        reg = chyvae_regularizer(mu.float(), L.float(), zs.float(), self.nu, self._prior_arg(), impl=self.impl)
        return {
            "loss": (recon - reg).mean(),
            "recon": recon.mean(),
            "regularizer": reg.mean(),
            "neg_elbo": (recon - reg).mean(),
            "z": z,
        }


def _rederive_prior(module: CHyVAE, incompatible_keys) -> None:
    """After load_state_dict: the precision and log-determinant of the prior_cov just loaded."""
    if isinstance(module.prior_cov, torch.Tensor):
        module.set_prior_cov(module.prior_cov)
