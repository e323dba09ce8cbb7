"""FactorVAE's training step against Kim & Mnih 2018, Algorithm 2, point by point: the VAE term uses D
on the first batch's codes; D's permuted codes come from a second, independent batch; the codes are
detached for D's update; D's Adam has lr 1e-4 and betas (0.5, 0.9); D's accuracy and the TC estimate
are logged."""

import copy
import json

import pytest
import torch

from chyvae_ext.metrics import PROTOCOLS
from chyvae_ext.metrics.factor_vae import Protocol
from chyvae_ext.models import FactorVAE, permute_dims
from chyvae_ext.step import make_step
from chyvae_ext.train import TrainConfig, train


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return FactorVAE(3, 1, 16, gamma=6.0, disc_hidden=16, disc_layers=2)


def two_batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.rand(5, 1, 64, 64, generator=g) > 0.5).float() for _ in range(2)]


def one_step(model, xs, noise_seed=3):
    """One eager training step on the batches xs (consumed in order), the discriminator's calls recorded."""
    vae_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt = torch.optim.Adam(vae_params, lr=1e-3)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    calls = []
    terms = model.discriminator_terms

    def recording(z, z_other, generator=None):
        calls.append((z.clone(), z_other.clone()))
        return terms(z, z_other, generator)

    model.discriminator_terms = recording
    batches = iter(xs)
    step = make_step(model, opt, opt_d, batches, torch.Generator().manual_seed(noise_seed), bf16=False)
    out = step()
    del model.discriminator_terms
    return out, calls, batches


def test_vae_term_is_d_on_the_first_batch_codes():
    model = tiny_model()
    before = copy.deepcopy(model)
    x1, x2 = two_batches()
    out, calls, _ = one_step(model, [x1, x2])
    g = torch.Generator().manual_seed(3)
    first = before.loss(x1, noise=before.sample_noise(5, "cpu", g))
    logits = before.discriminator(first["z"])
    assert torch.allclose(out["tc"], (logits[:, 0] - logits[:, 1]).mean(), rtol=1e-6, atol=1e-7)
    assert torch.allclose(out["loss"], first["recon"] + first["kl"] + 6.0 * out["tc"], rtol=1e-6)
    assert torch.equal(calls[0][0], first["z"].detach())  # D's label-0 codes: the same first batch's


def test_discriminator_permutes_a_second_independent_batch():
    model = tiny_model()
    x1, x2 = two_batches()
    _, calls, batches = one_step(model, [x1, x2])
    assert next(batches, None) is None  # the step drew two batches
    g = torch.Generator().manual_seed(3)
    model.sample_noise(5, "cpu", g)  # the first batch's draws
    with torch.no_grad():  # the second batch's codes under the VAE's updated encoder (D does not change it)
        z2 = model.loss(x2, noise=model.sample_noise(5, "cpu", g))["z"]
    z, z_other = calls[0]
    assert torch.allclose(z_other, z2, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(z_other, z)  # not the first batch's codes


def test_discriminator_update_leaves_the_vae_gradients_alone():
    """The codes are detached for D: after the step the encoder's gradients are the VAE loss's alone."""
    model = tiny_model()
    before = copy.deepcopy(model)
    x1, x2 = two_batches()
    one_step(model, [x1, x2])
    first = before.loss(x1, noise=before.sample_noise(5, "cpu", torch.Generator().manual_seed(3)))
    first["loss"].backward()
    for (name, p), q in zip(model.encoder.named_parameters(), before.encoder.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


def test_discriminator_step_updates_every_discriminator_weight():
    model = tiny_model()
    x1, x2 = two_batches()
    before = [p.detach().clone() for p in model.discriminator.parameters()]
    one_step(model, [x1, x2])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.discriminator.parameters(), strict=True))


def test_discriminator_accuracy_counts_each_side_against_its_label():
    model = tiny_model()
    z, z_other = torch.randn(40, 3), torch.randn(40, 3) * 3
    loss, accuracy = model.discriminator_terms(z, z_other, torch.Generator().manual_seed(2))
    real = model.discriminator(z).argmax(1)
    fake = model.discriminator(permute_dims(z_other, torch.Generator().manual_seed(2))).argmax(1)
    expected = 0.5 * ((real == 0).float().mean() + (fake == 1).float().mean())
    assert torch.equal(accuracy, expected)
    assert torch.equal(loss, model.discriminator_loss(z, z_other, torch.Generator().manual_seed(2)))


def test_discriminator_accuracy_per_member_equals_the_lone_models():
    from chyvae_ext.models.ensemble import stack_models

    lones = [tiny_model(seed) for seed in range(3)]
    ens = stack_models(lones)
    z, z_other = torch.randn(3, 40, 3), torch.randn(3, 40, 3)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(3)]
    _, accuracy = ens.discriminator_terms(z, z_other, gens)
    for i, lone in enumerate(lones):
        assert accuracy[i] == lone.discriminator_terms(z[i], z_other[i], torch.Generator().manual_seed(5 + i))[1]


@pytest.fixture
def small_metric_protocol(monkeypatch):
    monkeypatch.setitem(PROTOCOLS, "chyvae", Protocol(votes_per_sample=16, train_votes=20, eval_votes=20,
                                                      std_images=100, std_ddof=0, prune_below=0.0))


def test_run_logs_accuracy_and_tc_and_uses_the_papers_discriminator_adam(tmp_path, small_metric_protocol):
    out = tmp_path / "run"
    train(TrainConfig(model="factorvae", out=str(out), steps=4, batch_size=8, log_every=2, eval_every=4,
                      ckpt_every=4, precision="fp32", z_dim=4, hidden=32, gamma=10.0))
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4]
    for r in train_rows:
        assert 0.0 <= r["disc_accuracy"] <= 1.0 and r["disc_loss"] > 0 and "tc" in r
    ckpt = torch.load(out / "checkpoints" / "step_00000004.pt", weights_only=False)
    group = ckpt["opt_d"]["param_groups"][0]
    assert group["lr"] == 1e-4 and tuple(group["betas"]) == (0.5, 0.9)
    vae_group = ckpt["opt"]["param_groups"][0]
    assert tuple(vae_group["betas"]) == (0.9, 0.999)
