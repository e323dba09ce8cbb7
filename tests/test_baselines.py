"""The baselines of disentanglement_lib's study (docs/math.md 6): beta-TCVAE, DIP-VAE I/II, AnnealedVAE and the
plain VAE. Each loss is checked term by term against its formula written out here (explicit loops
over datapoints and dimensions, float64), values and gradients; then ensembles, compile, the
training CLI on shapes2d and correlated_ellipses, and every refusal's message."""

import json
import math

import numpy as np
import pytest
import torch

from chyvae_ext.models import DIPVAE, AnnealedVAE, BetaTCVAE, BetaVAE
from chyvae_ext.models.baselines import dip_covariance, gaussian_log_density, minibatch_weighted_tc
from chyvae_ext.models.ensemble import member_state_dict, stack_models
from chyvae_ext.train import main

D = 4  # latent dimensions in the loss tests


def batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 64, 64, generator=g) > 0.5).double()


def model_and_noise(cls, n=5, seed=0, **kw):
    torch.manual_seed(seed)
    model = cls(D, 1, 32, **kw).double()
    noise = model.sample_noise(n, "cpu", torch.Generator().manual_seed(100 + seed))
    return model, noise


def written_out(model, x, noise):
    """BCE and KL per datapoint, the sample z, mu and logvar, from the model's networks."""
    mu, logvar = model.posterior(x)
    z = mu + torch.exp(0.5 * logvar) * noise[0]
    logits = model.decoder(z)
    bce = (torch.nn.functional.softplus(logits) - x * logits).sum(dim=(1, 2, 3))  # -log Bernoulli(x; sigmoid(l))
    kl = torch.stack([0.5 * sum(mu[i, k] ** 2 + logvar[i, k].exp() - 1 - logvar[i, k] for k in range(D))
                      for i in range(len(x))])
    return bce, kl, z, mu, logvar


def total_correlation_loops(z, mu, logvar):
    """Chen et al.'s minibatch-weighted TC without its constant, one datapoint and dimension at a time."""
    n, d = z.shape
    per_j = []
    for j in range(n):
        log_q = torch.stack([torch.stack([-0.5 * (math.log(2 * math.pi) + logvar[i, k]
                                                  + (z[j, k] - mu[i, k]) ** 2 / logvar[i, k].exp())
                                          for k in range(d)]) for i in range(n)])  # (i, k)
        joint = torch.logsumexp(log_q.sum(1), 0)
        marginals = sum(torch.logsumexp(log_q[:, k], 0) for k in range(d))
        per_j.append(joint - marginals)
    return torch.stack(per_j).mean()


def grads(model, value):
    model.zero_grad()
    value.backward(retain_graph=True)
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(model, ours, formula):
    a, b = grads(model, ours), grads(model, formula)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)


# ---- the losses against their formulas ---------------------------------------------------------


def test_plain_vae_is_beta_vae_with_beta_one():
    model, noise = model_and_noise(BetaVAE)
    x = batch()
    out = model.loss(x, noise=noise)
    bce, kl, *_ = written_out(model, x, noise)
    torch.testing.assert_close(out["loss"], (bce + kl).mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["neg_elbo"], out["loss"], rtol=0, atol=0)


@pytest.mark.parametrize("dataset_size", [None, 1000])
def test_beta_tcvae_loss_is_bce_plus_kl_plus_beta_minus_one_tc(dataset_size):
    model, noise = model_and_noise(BetaTCVAE, beta=6.0, dataset_size=dataset_size)
    x = batch()
    out = model.loss(x, noise=noise)
    bce, kl, z, mu, logvar = written_out(model, x, noise)
    tc = total_correlation_loops(z, mu, logvar)
    torch.testing.assert_close(out["recon"], bce.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["kl"], kl.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(out["neg_elbo"], (bce + kl).mean(), rtol=1e-12, atol=0)
    shift = 0.0 if dataset_size is None else (D - 1) * math.log(len(x) * dataset_size)
    torch.testing.assert_close(out["tc"], tc + shift, rtol=1e-10, atol=1e-10)
    want = (bce + kl).mean() + 5.0 * tc  # the constant has no gradient and stays out of the loss
    torch.testing.assert_close(out["loss"], want, rtol=1e-10, atol=1e-10)
    assert_same_gradients(model, out["loss"], want)


def test_minibatch_weighted_tc_is_zero_for_one_datapoint_and_positive_for_correlated_codes():
    # One datapoint: q(z) = q(z|x) is a product of its dimensions, so TC = 0 exactly.
    z, mu, logvar = torch.randn(1, 3).double(), torch.randn(1, 3).double(), torch.randn(1, 3).double()
    assert abs(float(minibatch_weighted_tc(z, mu, logvar))) < 1e-12
    # Means on a line (z_1 = z_0) with small variances: the aggregate posterior is strongly correlated
    # (its TC, the MI of two near copies, is about 2 nats); independent means: about 0. The estimate
    # leaves out the same constant (d - 1) log(B N) from both, so their difference is the TCs'.
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 1, generator=g).double()
    line = torch.cat([a, a], 1)
    small = torch.full_like(line, math.log(0.01))
    z = line + 0.1 * torch.randn(line.shape, generator=g).double()
    indep = torch.randn(400, 2, generator=g).double()
    z_indep = indep + 0.1 * torch.randn(indep.shape, generator=g).double()
    assert float(minibatch_weighted_tc(z, line, small) - minibatch_weighted_tc(z_indep, indep, small)) > 1.0
    p = gaussian_log_density(torch.tensor(0.5), torch.tensor(0.0), torch.tensor(0.0))
    assert float(p) == pytest.approx(-0.5 * math.log(2 * math.pi) - 0.125, rel=1e-6)


@pytest.mark.parametrize(("kind", "factor"), [("i", None), ("ii", None), ("i", 3.0), ("ii", 7.0)])
def test_dip_vae_loss_pushes_the_covariance_to_the_identity(kind, factor):
    model, noise = model_and_noise(DIPVAE, n=6, kind=kind, lambda_od=2.5, lambda_d_factor=factor)
    x = batch(6)
    out = model.loss(x, noise=noise)
    bce, kl, _, mu, logvar = written_out(model, x, noise)
    m = mu.detach().numpy()
    cov = np.cov(m.T, bias=True)  # E[mu mu^T] - E[mu] E[mu]^T
    if kind == "ii":
        cov = cov + np.diag(np.exp(logvar.detach().numpy()).mean(0))
    off = sum(cov[i, j] ** 2 for i in range(D) for j in range(D) if i != j)
    on = sum((cov[i, i] - 1.0) ** 2 for i in range(D))
    lambda_d = (factor if factor is not None else {"i": 10.0, "ii": 1.0}[kind]) * 2.5
    assert model.lambda_d == pytest.approx(lambda_d)
    assert out["dip_off_diagonal"].item() == pytest.approx(off, rel=1e-10)
    assert out["dip_diagonal"].item() == pytest.approx(on, rel=1e-10)
    want = (bce + kl).mean().item() + 2.5 * off + lambda_d * on
    assert out["loss"].item() == pytest.approx(want, rel=1e-10)
    torch.testing.assert_close(out["neg_elbo"], (bce + kl).mean(), rtol=1e-12, atol=0)
    # Gradients: the same formula in torch (a covariance written as sums over the batch).
    n = len(x)
    mean = mu.mean(0)
    c = torch.stack([torch.stack([sum((mu[k, i] - mean[i]) * (mu[k, j] - mean[j]) for k in range(n)) / n
                                  for j in range(D)]) for i in range(D)])
    if kind == "ii":
        c = c + torch.diag(logvar.exp().mean(0))
    formula = (bce + kl).mean() + 2.5 * (c - torch.diag(torch.diag(c))).pow(2).sum() + lambda_d * (
        torch.diag(c) - 1).pow(2).sum()
    assert_same_gradients(model, out["loss"], formula)


def test_dip_covariance_matches_numpy_on_batched_input():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(3, 7, 4, generator=g).double(), torch.randn(3, 7, 4, generator=g).double()
    got = dip_covariance(mu, logvar, "ii")
    for m in range(3):
        want = np.cov(mu[m].numpy().T, bias=True) + np.diag(np.exp(logvar[m].numpy()).mean(0))
        np.testing.assert_allclose(got[m].numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("iteration", [0, 30, 250])
def test_annealed_vae_loss_is_bce_plus_gamma_abs_kl_minus_capacity(iteration):
    model, noise = model_and_noise(AnnealedVAE, gamma=7.0, c_max=12.0, c_iters=100)
    model.iteration.fill_(iteration)
    x = batch()
    out = model.loss(x, noise=noise)
    bce, kl, *_ = written_out(model, x, noise)
    capacity = 12.0 * min(1.0, iteration / 100)
    assert float(out["capacity"]) == pytest.approx(capacity, rel=1e-6)
    want = bce.mean() + 7.0 * (kl.mean() - capacity).abs()
    torch.testing.assert_close(out["loss"], want, rtol=1e-7, atol=1e-7)  # C(t) reported in float32
    torch.testing.assert_close(out["neg_elbo"], (bce + kl).mean(), rtol=1e-12, atol=0)
    assert_same_gradients(model, out["loss"], want)


def test_annealed_vae_counts_training_losses_only_and_the_count_resumes():
    model = AnnealedVAE(D, 1, 32, c_iters=10, c_max=5.0)
    x = batch().float()
    for _ in range(3):
        model.loss(x)
    assert int(model.iteration) == 3
    with torch.no_grad():
        model.loss(x)
    model.eval()
    model.loss(x)
    assert int(model.iteration) == 3  # evaluation (no_grad or eval mode) leaves the schedule alone
    resumed = AnnealedVAE(D, 1, 32, c_iters=10, c_max=5.0)
    resumed.load_state_dict(model.state_dict())
    assert int(resumed.iteration) == 3 and float(resumed.capacity()) == pytest.approx(1.5)
    model.iteration.fill_(1000)
    assert float(model.capacity()) == pytest.approx(5.0)  # capped at c_max


# ---- ensembles and compile ---------------------------------------------------------------------

LONE = {
    "betatcvae": (BetaTCVAE, {"dataset_size": 500}, [{"beta": 1.0}, {"beta": 6.0}]),
    "dipvae1": (DIPVAE, {"kind": "i"}, [{"lambda_od": 1.0}, {"lambda_od": 20.0}]),
    "dipvae2": (DIPVAE, {"kind": "ii"}, [{"lambda_od": 5.0, "lambda_d_factor": 2.0}, {"lambda_od": 2.0}]),
    "annealedvae": (AnnealedVAE, {"c_iters": 50}, [{"c_max": 5.0, "gamma": 100.0}, {"c_max": 25.0}]),
}


@pytest.mark.parametrize("kind", list(LONE))
def test_ensemble_members_equal_their_lone_models(kind):
    cls, common, hypers = LONE[kind]
    lones = []
    for seed, hyper in enumerate(hypers):
        torch.manual_seed(seed)
        lones.append(cls(D, 1, 32, **common, **hyper).double())
    if kind == "annealedvae":
        for lone in lones:
            lone.iteration.fill_(20)  # partway up the capacity ramp
    ens = stack_models(lones)
    xs = torch.stack([batch(5, seed=i) for i in range(2)])
    out = ens.loss(xs, generator=[torch.Generator().manual_seed(10 + i) for i in range(2)])
    out["loss"].sum().backward()
    for i, lone in enumerate(lones):
        alone = lone.loss(xs[i], generator=torch.Generator().manual_seed(10 + i))
        alone["loss"].backward()
        for term, value in alone.items():
            torch.testing.assert_close(out[term][i], value, rtol=1e-9, atol=1e-9, msg=f"{kind} {term} member {i}")
        stacked = dict(ens.named_parameters())
        for name, p in lone.named_parameters():
            torch.testing.assert_close(stacked[name].grad[i], p.grad, rtol=1e-8, atol=1e-10)
    if kind == "annealedvae":
        assert int(ens.iteration) == 21 and int(member_state_dict(ens, 0)["iteration"]) == 21


@pytest.mark.parametrize("kind", list(LONE))
def test_compiled_loss_has_no_graph_breaks_and_matches_eager(kind):
    cls, common, hypers = LONE[kind]
    torch.manual_seed(0)
    model = cls(D, 1, 32, **common, **hypers[0])
    x = batch().float()
    noise = model.sample_noise(len(x), "cpu", torch.Generator().manual_seed(3))
    explained = torch._dynamo.explain(model.loss)(x, noise=noise)
    assert explained.graph_break_count == 0
    if kind == "annealedvae":
        model.iteration.zero_()
    eager = model.loss(x, noise=noise)
    if kind == "annealedvae":
        model.iteration.zero_()
    compiled = torch.compile(model.loss, backend="aot_eager", fullgraph=True)(x, noise=noise)
    for term in eager:
        torch.testing.assert_close(compiled[term], eager[term], rtol=1e-5, atol=1e-5)


# ---- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (BetaTCVAE, {"dataset_size": 0}, r"dataset_size must be an integer > 0, got 0"),
        (BetaTCVAE, {"beta": -1.0}, r"beta must be"),
        (DIPVAE, {"kind": "iii"}, r"kind must be 'i' or 'ii', got 'iii'"),
        (DIPVAE, {"lambda_od": 0.0}, r"lambda_od must be"),
        (DIPVAE, {"lambda_d_factor": float("inf")}, r"lambda_d_factor must be"),
        (AnnealedVAE, {"c_iters": 0}, r"c_iters must be an integer > 0, got 0"),
        (AnnealedVAE, {"c_max": -5.0}, r"c_max must be"),
        (AnnealedVAE, {"gamma": 0}, r"gamma must be"),
    ],
)
def test_bad_hyperparameters_are_refused_with_their_name(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(D, 1, 32, **kwargs)


def test_dip_covariance_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match=r"kind must be 'i' or 'ii', got 'I'"):
        dip_covariance(torch.zeros(3, 2), torch.zeros(3, 2), "I")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "vae", "--beta", "4"], "--model vae is the plain VAE (beta = 1); --beta 4.0 applies to"),
        (["--model", "dipvae1", "--lambda-od", "0"], "--lambda-od must be a positive number, got 0.0"),
        (["--model", "dipvae2", "--lambda-d-factor", "-1"], "--lambda-d-factor must be a positive number, got -1.0"),
        (["--model", "annealedvae", "--c-max", "nan"], "--c-max must be a positive number, got nan"),
        (["--model", "annealedvae", "--c-iters", "0"], "--c-iters must be a positive integer, got 0"),
        (["--model", "betatcvae", "--beta", "0"], "--beta must be a positive number, got 0.0"),
    ],
)
def test_cli_refuses_bad_baseline_options(tmp_path, capsys, args, match):
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_refuses_an_unknown_model_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's choices: exit status 2, as main's own refusals
        main(["--model", "dipvae3", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'dipvae3'" in err and "'annealedvae'" in err


# ---- the training CLI --------------------------------------------------------------------------

TINY = ["--steps", "4", "--batch-size", "8", "--z-dim", "4", "--hidden", "32", "--precision", "fp32",
        "--log-every", "2", "--eval-every", "4", "--ckpt-every", "4", "--metrics", "none"]
OWN_TERM = {"vae": "kl", "betatcvae": "tc", "dipvae1": "dip_off_diagonal", "dipvae2": "dip_diagonal",
            "annealedvae": "capacity"}


@pytest.mark.parametrize("dataset", ["shapes2d", "correlated_ellipses"])
@pytest.mark.parametrize("model", list(OWN_TERM))
def test_cli_trains_each_baseline(tmp_path, model, dataset):
    out = tmp_path / "run"
    extra = {"annealedvae": ["--c-iters", "2", "--c-max", "3"], "betatcvae": ["--beta", "6"]}.get(model, [])
    assert main(["--model", model, "--dataset", dataset, *TINY, *extra, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4]
    assert all(math.isfinite(r["loss"]) and OWN_TERM[model] in r for r in train_rows)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model
    if model == "annealedvae":  # the capacity reached c_max after c_iters = 2 steps
        assert train_rows[-1]["capacity"] == pytest.approx(3.0)
        state = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
        assert int(state["model"]["iteration"]) == 4
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
