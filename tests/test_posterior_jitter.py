"""The original code's posterior floor, C = L L^T + EPS * I (docs/math.md 1; ``--posterior-jitter``): the factor,
the op (fused and reference against the reference's literal form), the model, its ensembles and the
option's checks. The Monte Carlo check is test_regularizer's, with a jitter."""

import pytest
import torch
from helpers import make_inputs, random_spd

from chyvae_ext import chyvae_regularizer, chyvae_regularizer_ref, jittered_cholesky
from chyvae_ext.config import TrainConfig, check_config, parse_args
from chyvae_ext.models import CHyVAE
from chyvae_ext.models.ensemble import stack_models


def test_jittered_cholesky_factors_llt_plus_eps():
    _, L, _ = make_inputs(6, 4, seed=1)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        f = jittered_cholesky(L.to(dtype), 1e-4)
        assert f.dtype == dtype and torch.equal(f, torch.tril(f)) and (torch.diagonal(f, dim1=1, dim2=2) > 0).all()
        expected = L @ L.mT + 1e-4 * torch.eye(4, dtype=torch.float64)
        assert torch.allclose((f.double() @ f.double().mT), expected, rtol=tol, atol=tol)
    assert torch.equal(jittered_cholesky(L + torch.triu(torch.ones(4, 4), 1), 0.0), L)  # 0: tril(L) itself


def test_jittered_cholesky_keeps_the_floor_where_float32_would_lose_it():
    """Entries of 30 beside a jitter of 1e-4: the float64 product keeps the smallest eigenvalue >= 1e-4."""
    L = torch.zeros(1, 2, 2)
    L[0, 0, 0], L[0, 1, 0], L[0, 1, 1] = 30.0, 30.0, 1e-4
    f = jittered_cholesky(L, 1e-4).double()
    smallest = torch.linalg.eigvalsh(f @ f.mT)[0, 0]
    assert 0.9e-4 < smallest < 2.1e-4


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("k", [1, 3])
def test_op_with_jitter_equals_the_literal_reference_values_and_gradients(impl, k):
    mu, L, z = make_inputs(7, 5, k, seed=2)
    cov = random_spd(5, seed=4)
    args = [t.clone().requires_grad_() for t in (mu, L, z)]
    nu = torch.tensor(9.5, dtype=torch.float64, requires_grad=True)
    out = chyvae_regularizer(*args, nu, cov, impl=impl, posterior_jitter=0.05)
    ref_args = [t.clone().requires_grad_() for t in (mu, L, z)]
    nu_ref = nu.detach().clone().requires_grad_()
    ref = chyvae_regularizer_ref(*ref_args, nu_ref, cov, posterior_jitter=0.05)
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(ref, chyvae_regularizer_ref(mu, L, z, 9.5, cov), atol=1e-3)  # the jitter moves R
    w = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in zip([*args, nu], [*ref_args, nu_ref], strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernels_with_jitter_equal_the_literal_reference():
    mu, L, z = make_inputs(64, 10, 1, seed=3)
    ref = chyvae_regularizer_ref(mu, L, z, 12.0, posterior_jitter=1e-4)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        got = chyvae_regularizer(*(t.to("cuda", dtype) for t in (mu, L, z)), 12.0, impl="fused", posterior_jitter=1e-4)
        assert torch.allclose(got.double().cpu(), ref, rtol=tol, atol=tol)


def test_model_posterior_and_regulariser_use_the_jittered_covariance():
    torch.manual_seed(0)
    plain = CHyVAE(latent_dim=4, nu=9.0).double()
    jittered = CHyVAE(latent_dim=4, nu=9.0, posterior_jitter=1e-4).double()
    jittered.load_state_dict(plain.state_dict())
    x = (torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    mu, L = plain.posterior(x)
    mu_j, L_j = jittered.posterior(x)
    assert torch.equal(mu, mu_j)
    assert torch.allclose(L_j @ L_j.mT, L @ L.mT + 1e-4 * torch.eye(4, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert torch.linalg.eigvalsh(L_j @ L_j.mT).min() >= 1e-4 * (1 - 1e-9)
    noise = jittered.sample_noise(5, "cpu", torch.Generator().manual_seed(2))
    out = jittered.loss(x, noise=noise)
    zs = mu_j.unsqueeze(-2) + (L_j.unsqueeze(-3) @ noise[1]).squeeze(-1)  # the regulariser's samples from L'
    assert torch.allclose(out["z"], mu_j + (L_j @ noise[0]).squeeze(-1), rtol=1e-12)
    reg = chyvae_regularizer_ref(mu, L, zs, 9.0, posterior_jitter=1e-4)  # literal: L L^T + 1e-4 I
    assert torch.allclose(out["regularizer"], reg.mean(), rtol=1e-10)


def test_ensemble_of_jittered_members_equals_the_lone_models():
    lones = []
    for seed in range(2):
        torch.manual_seed(seed)
        lones.append(CHyVAE(latent_dim=3, hidden=16, nu=[7.0, 20.0][seed], posterior_jitter=1e-3).double())
    ens = stack_models(lones)
    assert ens.posterior_jitter == 1e-3
    xs = (torch.rand(2, 4, 1, 64, 64, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    out = ens.loss(xs, generator=[torch.Generator().manual_seed(10 + i) for i in range(2)])
    for i, lone in enumerate(lones):
        alone = lone.loss(xs[i], generator=torch.Generator().manual_seed(10 + i))
        assert torch.allclose(out["regularizer"][i], alone["regularizer"], rtol=1e-10)


def test_ensemble_refuses_members_with_different_jitters():
    a = CHyVAE(latent_dim=3, hidden=16, posterior_jitter=1e-4)
    b = CHyVAE(latent_dim=3, hidden=16)
    with pytest.raises(ValueError, match="posterior_jitter"):
        stack_models([a, b])


def test_flag_alone_is_the_original_floor_and_a_value_is_taken():
    (c,), _, _, _ = parse_args(["--posterior-jitter"])
    assert c.posterior_jitter == 1e-4
    (c,), _, _, _ = parse_args(["--posterior-jitter", "0.01"])
    assert c.posterior_jitter == 0.01
    (c,), _, _, _ = parse_args([])
    assert c.posterior_jitter == 0.0


@pytest.mark.parametrize(("config", "match"), [
    (TrainConfig(posterior_jitter=-1e-4), r"--posterior-jitter must be a finite number >= 0, got -0.0001"),
    (TrainConfig(posterior_jitter=float("nan")), r"--posterior-jitter must be a finite number >= 0, got nan"),
    (TrainConfig(model="betavae", posterior_jitter=1e-4),
     r"--posterior-jitter is CHyVAE's posterior floor; --model betavae has no full posterior covariance"),
])
def test_bad_jitter_options_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        check_config(config.resolved())


@pytest.mark.parametrize(("value", "match"), [
    (-1.0, r"posterior_jitter must be a finite number >= 0, got -1.0"),
    (float("inf"), r"posterior_jitter must be a finite number >= 0, got inf"),
    (True, r"posterior_jitter must be a finite number >= 0, got True"),
    ("1e-4", r"posterior_jitter must be a finite number >= 0, got '1e-4'"),
])
def test_bad_jitter_values_are_named_by_the_op_the_reference_and_the_model(value, match):
    mu, L, z = make_inputs(3, 2, seed=0)
    with pytest.raises(ValueError, match=match):
        chyvae_regularizer(mu, L, z, 5.0, posterior_jitter=value)
    with pytest.raises(ValueError, match=match):
        chyvae_regularizer_ref(mu, L, z, 5.0, posterior_jitter=value)
    with pytest.raises(ValueError, match=match):
        CHyVAE(latent_dim=2, posterior_jitter=value)
    with pytest.raises(ValueError, match=match):
        jittered_cholesky(L, value)
