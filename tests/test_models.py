"""Models' losses against direct computations from the formulas of docs/math.md; prior sampling against scipy."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from chyvae_ext import chyvae_regularizer_ref
from chyvae_ext.models import BetaVAE, CHyVAE, FactorVAE, permute_dims, sample_prior
from chyvae_ext.sampling import sample_gaussian, sample_inverse_wishart


def batch(n=6, channels=1, seed=0):
    return torch.rand(n, channels, 64, 64, generator=torch.Generator().manual_seed(seed))


def bce_sum(logits, x):
    """-sum [x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))] per datapoint, written out."""
    p = torch.sigmoid(logits.double())
    x = x.double()
    return -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1)


def test_betavae_loss_matches_the_formula():
    torch.manual_seed(0)
    model = BetaVAE(latent_dim=4, beta=4.0).double()
    x = batch().double()
    out = model.loss(x, generator=torch.Generator().manual_seed(3))
    h = model.encoder(x)
    mu, logvar = h[:, :4], h[:, 4:]
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    recon = bce_sum(model.decoder(mu + torch.exp(logvar / 2) * eps), x)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    assert torch.allclose(out["recon"], recon.mean(), rtol=1e-8)
    assert torch.allclose(out["kl"], kl.mean(), rtol=1e-8)
    assert torch.allclose(out["loss"], (recon + 4.0 * kl).mean(), rtol=1e-8)
    assert torch.allclose(out["neg_elbo"], (recon + kl).mean(), rtol=1e-8)


def test_factorvae_loss_and_discriminator():
    torch.manual_seed(1)
    model = FactorVAE(latent_dim=5, gamma=20.0).double()
    x = batch().double()
    out = model.loss(x, generator=torch.Generator().manual_seed(4))
    logits = model.discriminator(out["z"])
    tc = (logits[:, 0] - logits[:, 1]).mean()
    assert torch.allclose(out["loss"], out["recon"] + out["kl"] + 20.0 * tc, rtol=1e-10)
    assert len(model.discriminator) == 6 * 2 + 1  # six hidden layers of 1000 with LeakyReLU, then 2 logits
    z2 = torch.randn(6, 5, dtype=torch.float64)
    d_loss = model.discriminator_loss(out["z"], z2, generator=torch.Generator().manual_seed(9))
    perm = permute_dims(z2, torch.Generator().manual_seed(9))
    real, fake = model.discriminator(out["z"]), model.discriminator(perm)
    expected = 0.5 * (-torch.log_softmax(real, 1)[:, 0].mean() - torch.log_softmax(fake, 1)[:, 1].mean())
    assert torch.allclose(d_loss, expected, rtol=1e-10)
    d_loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # z is detached for D's step


def test_permute_dims_shuffles_each_dimension_independently():
    z = torch.arange(200.0).view(100, 2) * torch.tensor([1.0, -1.0])
    p = permute_dims(z, torch.Generator().manual_seed(0))
    for j in range(2):
        assert torch.equal(torch.sort(p[:, j]).values, torch.sort(z[:, j]).values)
    rows_kept = (p[:, 0] == -p[:, 1]).float().mean()
    assert rows_kept < 0.1  # the columns were not shuffled together


@pytest.mark.parametrize("num_samples", [1, 2])
def test_chyvae_loss_matches_the_formula(num_samples):
    torch.manual_seed(2)
    d = 4
    model = CHyVAE(latent_dim=d, nu=9.0, num_samples=num_samples)
    x = batch()
    out = model.loss(x, generator=torch.Generator().manual_seed(5))
    h = model.encoder(x)
    mu, a = h[:, :d], h[:, d:].view(-1, d, d)
    L = torch.tril(a, -1) + torch.diag_embed(torch.nn.functional.softplus(torch.diagonal(a, dim1=-2, dim2=-1)) + 1e-4)
    gen = torch.Generator().manual_seed(5)
    z = mu + (L @ torch.randn(6, d, 1, generator=gen)).squeeze(-1)
    zs = mu[:, None] + (L[:, None] @ torch.randn(6, num_samples, d, 1, generator=gen)).squeeze(-1)
    recon = bce_sum(model.decoder(z), x)
    reg = chyvae_regularizer_ref(mu.double(), L.double(), zs.double(), 9.0)
    assert torch.allclose(out["recon"].double(), recon.mean(), rtol=1e-5)
    assert torch.allclose(out["regularizer"].double(), reg.mean(), rtol=1e-5)
    assert torch.allclose(out["loss"].double(), (recon - reg).mean(), rtol=1e-5)


def test_chyvae_fused_and_reference_agree_in_loss_and_gradients():
    results = []
    for impl in ("fused", "reference"):
        torch.manual_seed(3)
        model = CHyVAE(latent_dim=10, nu=12.0, impl=impl)
        out = model.loss(batch(8), generator=torch.Generator().manual_seed(6))
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, rtol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def test_learned_nu_gets_a_gradient_and_stays_valid():
    model = CHyVAE(latent_dim=4, nu=5.0, learn_nu=True)
    assert math.isclose(float(model.nu.detach()), 5.0, rel_tol=1e-6)
    model.loss(batch())["loss"].backward()
    assert model.nu_raw.grad is not None and torch.isfinite(model.nu_raw.grad)
    with torch.no_grad():
        model.nu_raw.fill_(-50.0)
    assert float(model.nu.detach()) > 3.0
    with pytest.raises(ValueError, match=r"with learn_nu=True, nu must start above d - 1 \+ 1e-3"):
        CHyVAE(latent_dim=4, nu=3.0005, learn_nu=True)
    assert CHyVAE(latent_dim=4, nu=3.0005).nu == 3.0005  # valid when nu is fixed


def test_sample_inverse_wishart_against_scipy():
    d, nu = 3, 8.0
    psi = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.5]], dtype=torch.float64)
    s = sample_inverse_wishart(psi, nu, 40000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (40000, 3, 3) and torch.allclose(s, s.mT)
    mean = psi / (nu - d - 1)
    assert torch.allclose(s.mean(0), mean, atol=0.02)
    ref = scipy.stats.invwishart(df=nu, scale=psi.numpy()).rvs(40000, random_state=1)
    assert scipy.stats.ks_2samp(torch.logdet(s).numpy(), np.linalg.slogdet(ref)[1]).pvalue > 1e-3
    assert scipy.stats.ks_2samp(s[:, 0, 1].numpy(), ref[:, 0, 1]).pvalue > 1e-3
    again = sample_inverse_wishart(psi, nu, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, s[:5]) or torch.allclose(
        again, sample_inverse_wishart(psi, nu, 5, generator=torch.Generator().manual_seed(0))
    )


def test_sample_gaussian_covariance():
    cov = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64).expand(50000, 2, 2)
    z = sample_gaussian(cov, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(z.T), cov[0], atol=0.05)


def test_sample_prior():
    chy = CHyVAE(latent_dim=4, nu=500.0)
    z = sample_prior(chy, 20000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (20000, 4) and z.dtype == torch.float32
    assert torch.allclose(torch.cov(z.T), torch.eye(4), atol=0.06)  # large nu: N(0, Sigma0)
    assert sample_prior(BetaVAE(latent_dim=3), 5).shape == (5, 3)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BetaVAE(latent_dim=0), r"latent_dim must be an integer > 0, got 0"),
        (lambda: BetaVAE(beta=0.0), r"beta must be a number > 0, got 0.0"),
        (lambda: FactorVAE(gamma=-1), r"gamma must be a number > 0, got -1"),
        (lambda: CHyVAE(latent_dim=10, nu=9.0), r"nu must be a number > 9, got 9.0"),
        (lambda: CHyVAE(num_samples=0), r"num_samples must be an integer > 0, got 0"),
    ],
)
def test_bad_model_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 64, 64\), got \(2, 3, 64, 64\)"):
        BetaVAE().loss(torch.rand(2, 3, 64, 64))
    eye = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"psi must be a square \(d, d\) matrix, got shape \(3, 2\)"):
        sample_inverse_wishart(eye[:, :2], 5.0, 2)
    with pytest.raises(ValueError, match=r"nu must be a finite number > d - 1 = 2, got 2.0"):
        sample_inverse_wishart(eye, 2.0, 2)
    with pytest.raises(ValueError, match=r"psi must be symmetric positive-definite"):
        sample_inverse_wishart(-eye, 5.0, 2)
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got -1"):
        sample_inverse_wishart(eye, 5.0, -1)
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got 2.5"):
        sample_prior(BetaVAE(), 2.5)
