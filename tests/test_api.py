"""The Python front (issue 33, item 2): chyvae_ext.train and chyvae_ext.load, and every model's encode, decode,
reconstruct and traverse against the model's own layers, on every input form they accept, and their refusals."""

import json

import numpy as np
import pytest
import torch

import chyvae_ext
from chyvae_ext.build import build_model
from chyvae_ext.config import TrainConfig
from chyvae_ext.models.inputs import DEFAULT_TRAVERSAL, as_codes, as_images

TINY = dict(steps=4, batch_size=4, z_dim=3, hidden=16, nu=10.0, log_every=2, eval_every=4, ckpt_every=2,
            metrics="none", precision="fp32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return chyvae_ext.train(out=str(out), **TINY)


def test_train_returns_the_run_directory_its_status_and_last_evaluation(trained):
    assert trained.run_dir.is_dir() and trained.status["state"] == "finished" and trained.status["step"] == 4
    rows = [json.loads(x) for x in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "eval"][-1]
    assert trained.metrics == {k: v for k, v in last.items() if k != "kind"} and "neg_elbo" in trained.metrics


def test_train_takes_a_train_config_as_well_as_options(tmp_path):
    run = chyvae_ext.train(TrainConfig(model="betavae", out=str(tmp_path / "b"), **{**TINY, "steps": 2}))
    assert run.status["step"] == 2 and json.loads((run.run_dir / "config.json").read_text())["model"] == "betavae"


def test_import_chyvae_ext_leaves_the_trainer_unimported_until_chyvae_ext_train_is_used():
    import subprocess
    import sys

    code = ("import sys, chyvae_ext; print('chyvae_ext.train' in sys.modules); t = chyvae_ext.train; "
            "print(callable(t), t is sys.modules['chyvae_ext.train'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr


def test_chyvae_ext_train_is_callable_after_its_module_is_imported(tmp_path):
    import chyvae_ext.train as module  # the import sets chyvae_ext.train to the module

    assert chyvae_ext.train is module
    run = chyvae_ext.train(out=str(tmp_path / "r"), **{**TINY, "steps": 2})
    assert run.status["step"] == 2


@pytest.mark.parametrize(("call", "match"), [
    (lambda: chyvae_ext.train(stepz=3), r"unexpected keyword argument 'stepz'; the options are: model, dataset"),
    (lambda: chyvae_ext.train(TrainConfig(), steps=3), r"give a TrainConfig or options, not both"),
    (lambda: chyvae_ext.train({"steps": 3}), r"config must be a chyvae_ext TrainConfig, got dict"),
    (lambda: chyvae_ext.train(steps=0), r"--steps must be a positive integer, got 0"),
])
def test_train_refuses_bad_options_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_load_gives_the_model_in_eval_mode_with_its_config_checkpoint_and_step(trained):
    model = chyvae_ext.load(trained.run_dir)
    assert not model.training and model.step == 4 and model.checkpoint.name == "step_00000004.pt"
    assert model.config.model == "chyvae" and model.config.z_dim == 3
    state = torch.load(model.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    older = chyvae_ext.load(trained.run_dir, checkpoint=trained.run_dir / "checkpoints" / "step_00000002.pt")
    assert older.step == 2


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match=rf"chyvae_ext.load: no run directory {tmp_path / 'none'}"):
        chyvae_ext.load(tmp_path / "none")
    with pytest.raises(ValueError, match=r"no config.json there"):
        chyvae_ext.load(tmp_path)


@pytest.fixture(params=["chyvae", "betavae", "factorvae", "dipvae1"])
def model(request):
    torch.manual_seed(0)
    c = TrainConfig(model=request.param, z_dim=3, hidden=16, nu=10.0).resolved()
    return build_model(c, 1).eval()


def pixels(n=2, seed=0):
    return (np.random.default_rng(seed).random((n, 64, 64)) * 255).astype(np.uint8)


def test_encode_is_the_posterior_mean_for_every_input_form(model):
    u8 = pixels()
    want = model.posterior(torch.from_numpy(u8).float()[:, None] / 255)[0]
    forms = [u8, torch.from_numpy(u8), u8[:, :, :, None], u8[:, None], u8.astype(np.float64) / 255,
             torch.from_numpy(u8).float()[:, None] / 255]
    for form in forms:
        torch.testing.assert_close(model.encode(form), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.encode(u8[0]), want[:1], rtol=1e-6, atol=1e-6)  # one (64, 64) image


def test_decode_is_the_decoders_sigmoid_and_takes_one_code_or_a_batch(model):
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    want = torch.sigmoid(model.decoder(z))
    torch.testing.assert_close(model.decode(z), want)
    torch.testing.assert_close(model.decode(z.numpy()), want)
    torch.testing.assert_close(model.decode(z[0].tolist()), want[:1])
    torch.testing.assert_close(model.decode_logits(z), model.decoder(z))
    assert model.decode(z).min() >= 0 and model.decode(z).max() <= 1


def test_reconstruct_decodes_the_posterior_mean(model):
    u8 = pixels()
    torch.testing.assert_close(model.reconstruct(u8), model.decode(model.encode(u8)))
    assert not model.reconstruct(u8).requires_grad


def test_traverse_sets_one_dimension_to_each_value(model):
    image = pixels(1)[0]
    z = model.encode(image)[0]
    grid = model.traverse(image)
    assert grid.shape == (3, len(DEFAULT_TRAVERSAL), 1, 64, 64)
    for k in range(3):
        codes = z.repeat(len(DEFAULT_TRAVERSAL), 1)
        codes[:, k] = torch.tensor(DEFAULT_TRAVERSAL)
        torch.testing.assert_close(grid[k], model.decode(codes))
    one = model.traverse(image, dim=1, values=[-1.0, 0.5])
    codes = z.repeat(2, 1)
    codes[:, 1] = torch.tensor([-1.0, 0.5])
    assert one.shape == (2, 1, 64, 64)
    torch.testing.assert_close(one, model.decode(codes))


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: m.encode(np.zeros((2, 32, 32), np.uint8)), r"images must be \(64, 64\), .* got shape \(2, 32, 32\)"),
    (lambda m: m.encode(np.zeros((2, 3, 64, 64), np.uint8)), r"with C = 1 \(the model's channels\), got shape"),
    (lambda m: m.encode(np.zeros((64, 64), np.int16)), r"images must be uint8 \(0..255\) or floating point"),
    (lambda m: m.encode([[0.0]]), r"images must be a torch tensor or a NumPy array, got list"),
    (lambda m: m.encode(np.array([["a"] * 64] * 64)), r"images must be numbers, got a NumPy array of dtype <U1"),
    (lambda m: m.decode(torch.zeros(2, 4)), r"z must end in the model's 3 latent dimensions, got shape \(2, 4\)"),
    (lambda m: m.traverse(pixels(2)), r"traverse takes one image, got 2"),
    (lambda m: m.traverse(pixels(1)[0], dim=3), r"dim must be a latent dimension 0..2 or None, got 3"),
    (lambda m: m.traverse(pixels(1)[0], values=[]), r"values must hold at least one number, got 0"),
])
def test_the_public_methods_refuse_what_they_cannot_read_naming_it(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


def test_as_images_and_as_codes_place_on_the_device_and_dtype_asked():
    x = as_images(pixels(), 1, device=torch.device("cpu"), dtype=torch.float64)
    assert x.shape == (2, 1, 64, 64) and x.dtype == torch.float64 and float(x.max()) <= 1.0
    rgb = (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8)
    y = as_images(rgb, 3, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(y[0], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    z = as_codes([1, 2, 3], 3, device=torch.device("cpu"), dtype=torch.float32)
    assert z.shape == (1, 3) and z.dtype == torch.float32
