"""beta-VAE, FactorVAE and CHyVAE (docs/math.md 1 and 2), with one loss interface.

``model.loss(x, generator=...)`` returns a dict of scalar tensors: ``loss`` (what the optimiser
minimises), ``recon`` (BCE summed over pixels, mean over the batch), ``neg_elbo`` (a true upper
bound on -log p(x), mean over the batch) and the model's own terms. ``encode(images)`` gives posterior
means, ``decode(z)`` images in [0, 1] (``decode_logits(z)`` the logits), ``reconstruct(images)`` and
``traverse(image)`` the pictures; they take the forms of :mod:`chyvae_ext.models.inputs`.

Built with ``members=M`` a model is M independent models in one (an ensemble, see
:mod:`chyvae_ext.models.ensemble`): images are (M, N, C, 64, 64), every term is (M,) (one per
member), the hyperparameters may differ per member (a sequence of M values), and the random draws
take one generator per member. The loss code is the same for both: batch reductions run over the
last batch dimension.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .._checks import check_non_negative
from .._validate import PriorCov
from ..ops import chyvae_regularizer, jittered_cholesky
from .inputs import DEFAULT_TRAVERSAL, as_codes, as_images
from .networks import Decoder, Encoder, StackedLinear, reconstruction_error

Noise = tuple[torch.Tensor, ...]
Generators = torch.Generator | list[torch.Generator] | None


def _check_positive(name: str, value: object, *, minimum: float = 0.0, integer: bool = False) -> None:
    kind = int if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= minimum:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} > {minimum:g}, got {value!r}")


def _hyper(name: str, value: object, members: int | None, *, minimum: float = 0.0) -> list[float] | float:
    """A hyperparameter: one number, or with members=M a number or M numbers (a list of M floats)."""
    if members is not None and isinstance(value, (list, tuple, torch.Tensor)):
        values = [float(v) for v in value] if not isinstance(value, torch.Tensor) else value.tolist()
        if len(values) != members:
            raise ValueError(f"{name} must have one value per member ({members}), got {len(values)}")
        for v in values:
            _check_positive(name, v, minimum=minimum)
        return values
    _check_positive(name, value, minimum=minimum)
    return float(value) if members is None else [float(value)] * members


def _full_precision(t: torch.Tensor) -> torch.Tensor:
    """The heads and losses run in float32 when the networks run under bf16/fp16 autocast."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class _Base(nn.Module):
    def __init__(self, latent_dim: int, channels: int, hidden: int, head_dim: int, members: int | None = None):
        super().__init__()
        _check_positive("latent_dim", latent_dim, integer=True)
        _check_positive("channels", channels, integer=True)
        _check_positive("hidden", hidden, integer=True)
        if members is not None:
            _check_positive("members", members, integer=True)
        self.latent_dim, self.channels, self.hidden, self.members = latent_dim, channels, hidden, members
        self.encoder = Encoder(channels, hidden, head_dim, members=members)
        self.decoder = Decoder(latent_dim, hidden, channels, members=members)

    # ---- the public face: images in, codes out and back (the forms they take: models.inputs) ---------------
    def _placement(self) -> dict:
        p = next(self.parameters())
        return {"device": p.device, "dtype": p.dtype}

    def encode(self, images) -> torch.Tensor:
        """The posterior means (N, d) of ``images``: uint8 (0..255) or float (0..1), NumPy or torch, (64, 64),
        (N, 64, 64), (64, 64, C), (N, C, 64, 64) or (N, 64, 64, C) (:func:`~chyvae_ext.models.inputs.as_images`;
        an ensemble's (M, N, C, 64, 64) floats give (M, N, d))."""
        return self.posterior(as_images(images, self.channels, **self._placement()))[0]

    def decode(self, z) -> torch.Tensor:
        """Images (N, C, 64, 64) in [0, 1], float32, from codes ``z`` (N, d), or one code (d,) (a tensor,
        NumPy array or list). :meth:`decode_logits` gives the decoder's logits."""
        return torch.sigmoid(self.decoder(as_codes(z, self.latent_dim, **self._placement())).float())

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's Bernoulli logits for codes ``z`` (..., d), as the loss sees them."""
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, images) -> torch.Tensor:
        """The images decoded from their posterior means: (N, C, 64, 64) in [0, 1] (``images`` as :meth:`encode`)."""
        return self.decode(self.encode(images))

    @torch.no_grad()
    def traverse(self, image, dim: int | None = None, values=None) -> torch.Tensor:
        """Latent traversals of one ``image`` (any single-image form :meth:`encode` takes): its posterior mean
        with dimension ``dim`` set to each of ``values`` (default nine from -3 to 3), decoded. Returns
        (len(values), C, 64, 64) for one ``dim``; with ``dim=None``, (d, len(values), C, 64, 64), a row per
        dimension."""
        z = self.encode(image)
        if z.dim() != 2 or z.shape[0] != 1:
            raise ValueError(f"traverse takes one image, got {z.shape[0] if z.dim() == 2 else tuple(z.shape)}")
        d = self.latent_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or not 0 <= dim < d):
            raise ValueError(f"dim must be a latent dimension 0..{d - 1} or None, got {dim!r}")
        values = torch.as_tensor(DEFAULT_TRAVERSAL if values is None else values, dtype=z.dtype, device=z.device)
        if values.dim() != 1 or len(values) == 0:
            raise ValueError(f"values must hold at least one number, got {values.numel()}")
        dims = range(d) if dim is None else [dim]
        codes = z.repeat(len(dims), len(values), 1)  # (dims, steps, d)
        for row, k in enumerate(dims):
            codes[row, :, k] = values
        images = self.decode(codes.reshape(-1, d)).reshape(len(dims), len(values), *(self.channels, 64, 64))
        return images[0] if dim is not None else images

    def _member_values(self, name: str, values: list[float] | float) -> float:
        """A per-member hyperparameter kept as a (M,) float32 buffer that moves with the model and
        leaves the state dict as it is; a lone model's stays a float."""
        if self.members is None:
            return values
        self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)
        return getattr(self, name)

    def check_input(self, x: torch.Tensor) -> None:
        if self.members is None:
            if x.dim() != 4 or x.shape[1:] != (self.channels, 64, 64):
                raise ValueError(f"x must have shape (N, {self.channels}, 64, 64), got {tuple(x.shape)}")
        elif x.dim() != 5 or x.shape[0] != self.members or x.shape[2:] != (self.channels, 64, 64):
            raise ValueError(
                f"x must have shape ({self.members}, N, {self.channels}, 64, 64) (one batch per member), "
                f"got {tuple(x.shape)}"
            )

    def sample_noise(
        self, n: int, device: torch.device | str, generator: Generators = None
    ) -> tuple[torch.Tensor, ...]:
        """The standard-normal draws ``loss`` makes for a batch of n, in the order it makes them.

        Drawing them outside and passing ``loss(x, noise=...)`` gives the same result as
        ``loss(x, generator=...)``; compiled training steps do this, since a torch.Generator cannot
        enter a compiled graph. An ensemble takes a list of generators, one per member, and draws
        each member's noise with its own as the lone model would (stacked on a leading dimension).
        """
        dtype = self.decoder.fc[0].weight.dtype  # the parameters' dtype (heads run in it under autocast)
        shapes = self._noise_shapes(n)
        if self.members is None:
            return tuple(torch.randn(s, generator=generator, device=device, dtype=dtype) for s in shapes)
        gens = _member_generators(generator, self.members)
        draws = [[torch.randn(s, generator=g, device=device, dtype=dtype) for s in shapes] for g in gens]
        return tuple(torch.stack(ts) for ts in zip(*draws, strict=True))

    def _noise_shapes(self, n: int) -> list[tuple[int, ...]]:
        return [(n, self.latent_dim)]

    def _take_noise(self, n, like, generator, noise) -> tuple[torch.Tensor, ...]:
        if noise is None:
            return self.sample_noise(n, like.device, generator)
        shapes = self._noise_shapes(n)
        if self.members is not None:
            shapes = [(self.members, *s) for s in shapes]
        if len(noise) != len(shapes) or any(tuple(t.shape) != s for t, s in zip(noise, shapes, strict=False)):
            got = [tuple(t.shape) for t in noise]
            raise ValueError(f"noise must be tensors of shapes {shapes} (from sample_noise), got {got}")
        return tuple(noise)


class BetaVAE(_Base):
    """q(z|x) = N(mu, diag sigma^2); loss = BCE + beta KL(q || N(0, I)); beta = 1 is the plain VAE."""

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        beta: float | list[float] = 1.0,
        members: int | None = None,
    ):
        super().__init__(latent_dim, channels, hidden, 2 * latent_dim, members)
        self.beta = self._member_values("beta", _hyper("beta", beta, members))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _full_precision(self.encoder(x))
        return h[..., : self.latent_dim], h[..., self.latent_dim :]  # mu, log sigma^2

    def vae_terms(
        self, x: torch.Tensor, *, generator: Generators = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        """What every diagonal-Gaussian model's loss starts from, per datapoint: ``mu``, ``logvar``,
        the sample ``z``, ``recon`` (BCE summed over pixels) and ``kl`` (to N(0, I)), each (..., N[, d])."""
        self.check_input(x)
        mu, logvar = self.posterior(x)
        (eps,) = self._take_noise(x.shape[-4], mu, generator, noise)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = reconstruction_error(self.decoder(z), x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
        return {"mu": mu, "logvar": logvar, "z": z, "recon": recon, "kl": kl}

    def per_member(self, value: float | torch.Tensor) -> float | torch.Tensor:
        """A hyperparameter shaped to multiply a per-datapoint (M, N) term (a lone model's: as it is)."""
        return value if self.members is None else value[:, None]

    def loss(
        self, x: torch.Tensor, *, generator: Generators = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        t = self.vae_terms(x, generator=generator, noise=noise)
        recon, kl = t["recon"], t["kl"]
        return {
            "loss": (recon + self.per_member(self.beta) * kl).mean(-1),
            "recon": recon.mean(-1),
            "kl": kl.mean(-1),
            "neg_elbo": (recon + kl).mean(-1),
            "z": t["z"],
        }


def _member_generators(generator: Generators, members: int) -> list[torch.Generator | None]:
    if generator is None:
        return [None] * members
    if isinstance(generator, torch.Generator) or len(generator) != members:
        raise ValueError(
            f"an ensemble of {members} members draws with one generator per member (a list), got {generator!r}"
        )
    return list(generator)


def permute_dims(z: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Each latent dimension shuffled independently across the batch (Kim & Mnih 2018).

    z: (N, d), or an ensemble's (M, N, d) with a list of M generators (member m's shuffle drawn with
    its generator as its lone model draws it)."""
    if z.dim() == 2:
        u = torch.rand(z.shape, generator=generator, device=z.device)
    else:
        gens = _member_generators(generator, z.shape[0])
        u = torch.stack([torch.rand(z.shape[1:], generator=g, device=z.device) for g in gens])
    return torch.gather(z, -2, torch.argsort(u, dim=-2))


class FactorVAE(BetaVAE):
    """VAE + gamma TC, with TC ~ mean(D(z)[:, 0] - D(z)[:, 1]) from a discriminator D on z."""

    def __init__(
        self,
        latent_dim: int = 10,
        channels: int = 1,
        hidden: int = 128,
        *,
        gamma: float | list[float] = 10.0,
        disc_hidden: int = 1000,
        disc_layers: int = 6,
        members: int | None = None,
    ):
        super().__init__(latent_dim, channels, hidden, beta=1.0, members=members)
        self.gamma = self._member_values("gamma", _hyper("gamma", gamma, members))
        linear = nn.Linear if members is None else (lambda i, o: StackedLinear(members, i, o))
        layers, d_in = [], latent_dim
        for _ in range(disc_layers):
            layers += [linear(d_in, disc_hidden), nn.LeakyReLU(0.2, inplace=True)]
            d_in = disc_hidden
        self.discriminator = nn.Sequential(*layers, linear(d_in, 2))

    def loss(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        out = super().loss(x, generator=generator, noise=noise)
        logits = self.discriminator(out["z"])
        tc = (logits[..., 0] - logits[..., 1]).mean(-1)
        out["tc"] = tc
        out["loss"] = out["recon"] + out["kl"] + self.gamma * tc
        return out

    def discriminator_loss(self, z: torch.Tensor, z_other: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Cross-entropy of D on z (label 0) against permute_dims(z_other) (label 1); z's are detached.
        One value per member for an ensemble."""
        return self.discriminator_terms(z, z_other, generator)[0]

    def discriminator_terms(
        self, z: torch.Tensor, z_other: torch.Tensor, generator: Generators = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(discriminator_loss, D's accuracy): the fraction of z classed 0 (drawn from q(z)) and of
        permute_dims(z_other) classed 1 (from the product of its marginals), averaged over the two; 0.5
        is chance, near 1 an adversary that tells them apart. One value each per member for an ensemble."""
        real = self.discriminator(z.detach())
        fake = self.discriminator(permute_dims(z_other.detach(), generator))
        log_softmax = nn.functional.log_softmax
        loss = -0.5 * (log_softmax(real, -1)[..., 0].mean(-1) + log_softmax(fake, -1)[..., 1].mean(-1))
        with torch.no_grad():
            hits = (real[..., 0] >= real[..., 1]).float().mean(-1) + (fake[..., 1] > fake[..., 0]).float().mean(-1)
        return loss, 0.5 * hits


class CHyVAE(_Base):
    """Full-covariance posterior N(mu, L L^T) under an inverse-Wishart hyperprior (docs/math.md 1).

    The encoder emits mu and a raw d x d matrix A; L = tril(A) with diagonal softplus(A_ii) + 1e-4.
    The decoder sees one sample; the regulariser's K samples are drawn independently of it.
    ``learn_nu`` makes nu a parameter, kept above d - 1 as d - 1 + 1e-3 + softplus(raw).
    ``posterior_jitter`` EPS > 0 makes the posterior covariance L L^T + EPS * I (the original code's
    floor, EPS = 1e-4): :meth:`posterior` returns its Cholesky factor, which the sampler and the
    regulariser use; 0 (the default) keeps C = L L^T, its floor in L's diagonal.
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
        posterior_jitter: float = 0.0,
        members: int | None = None,
    ):
        super().__init__(latent_dim, channels, hidden, latent_dim + latent_dim * latent_dim, members)
        nu = _hyper("nu", nu, members, minimum=latent_dim - 1)
        self.posterior_jitter = check_non_negative("posterior_jitter", posterior_jitter)
        _check_positive("num_samples", num_samples, integer=True)
        self.num_samples, self.impl, self.learn_nu = num_samples, impl, bool(learn_nu)
        self._nu_floor = latent_dim - 1 + 1e-3  # strictly above d - 1 even in float32
        self.set_prior_cov(prior_cov)
        self.register_load_state_dict_post_hook(_rederive_prior)
        if members is None:
            self._nu_fixed = nu
        else:  # float64, as a lone model's float nu reaches the op
            self.register_buffer("_nu_fixed", torch.tensor(nu, dtype=torch.float64), persistent=False)
        if self.learn_nu:
            starts = nu if members is not None else [nu]
            for v in starts:
                if v <= self._nu_floor:
                    floor = self._nu_floor
                    raise ValueError(f"with learn_nu=True, nu must start above d - 1 + 1e-3 = {floor}, got {v}")
            raw = [math.log(math.expm1(v - self._nu_floor)) for v in starts]
            self.nu_raw = nn.Parameter(torch.tensor(raw if members is not None else raw[0], dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        # An ensemble's fixed nu moves with the model but stays float64 (as a lone model's float
        # reaches the op): model.float() must not round nu = 12.3.
        nu = self._buffers.get("_nu_fixed")
        out = super()._apply(fn, recurse)
        if nu is not None:
            self._buffers["_nu_fixed"] = nu.to(self._buffers["_nu_fixed"].device)
        return out

    @property
    def nu(self) -> torch.Tensor | float:
        """nu: a float when fixed, else a 0-d tensor on the model's device (never read back to the host);
        an ensemble's: a (M,) tensor."""
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
        """q(z|x) as (mu, L): its mean and the Cholesky factor of its covariance (with the jitter in it)."""
        d = self.latent_dim
        h = _full_precision(self.encoder(x))
        mu, a = h[..., :d], h[..., d:].reshape(*h.shape[:-1], d, d)
        diag = nn.functional.softplus(torch.diagonal(a, dim1=-2, dim2=-1)) + 1e-4
        L = torch.tril(a, -1) + torch.diag_embed(diag)
        return mu, jittered_cholesky(L, self.posterior_jitter) if self.posterior_jitter else L

    def _noise_shapes(self, n: int) -> list[tuple[int, ...]]:
        return [(n, self.latent_dim, 1), (n, self.num_samples, self.latent_dim, 1)]

    def loss(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None, noise: Noise | None = None
    ) -> dict[str, torch.Tensor]:
        self.check_input(x)
        mu, L = self.posterior(x)
        n, d = x.shape[-4], self.latent_dim
        eps, eps_k = self._take_noise(n, mu, generator, noise)
        z = mu + (L @ eps).squeeze(-1)
        zs = mu.unsqueeze(-2) + (L.unsqueeze(-3) @ eps_k).squeeze(-1)
        recon = reconstruction_error(self.decoder(z), x)
        nu = self.nu
        if self.members is not None:  # every member's datapoints in one call, each with its member's nu
            nu = nu.repeat_interleave(n)
        reg = chyvae_regularizer(
            _full_precision(mu).reshape(-1, d),  # float32 under autocast; a float64 model's stays float64
            _full_precision(L).reshape(-1, d, d),
            _full_precision(zs).reshape(-1, self.num_samples, d),
            nu,
            self._prior_arg(),
            impl=self.impl,
        ).reshape(recon.shape)
        return {
            "loss": (recon - reg).mean(-1),
            "recon": recon.mean(-1),
            "regularizer": reg.mean(-1),
            "neg_elbo": (recon - reg).mean(-1),
            "z": z,
        }


def _rederive_prior(module: CHyVAE, incompatible_keys) -> None:
    """After load_state_dict: the precision and log-determinant of the prior_cov just loaded."""
    if isinstance(module.prior_cov, torch.Tensor):
        module.set_prior_cov(module.prior_cov)
