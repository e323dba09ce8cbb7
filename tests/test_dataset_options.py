"""Dataset options of a run: --dataset-size (a fixed set drawn once from a procedural dataset, cached on disk,
trained on) and --no-shape-factor (the metrics without dSprites' discrete shape)."""

import json

import numpy as np
import pytest
import torch

from chyvae_ext.build import fixed_batches, open_dataset
from chyvae_ext.config import TrainConfig
from chyvae_ext.data import fixed as fixed_mod
from chyvae_ext.data import get_dataset
from chyvae_ext.data.base import MaterialisedImages
from chyvae_ext.data.fixed import cache_path, fixed_sample
from chyvae_ext.metrics import PROTOCOLS
from chyvae_ext.metrics.factor_vae import Protocol
from chyvae_ext.train import Trainer, main


@pytest.fixture(autouse=True)
def small_metric_protocol(monkeypatch):
    monkeypatch.setitem(
        PROTOCOLS,
        "chyvae",
        Protocol(votes_per_sample=8, train_votes=10, eval_votes=10, std_images=50, std_ddof=0, prune_below=0.0),
    )


@pytest.mark.parametrize("name", ["correlated_ellipses", "shapes2d"])
def test_fixed_set_is_the_generators_draws_from_the_seed(tmp_path, name, monkeypatch):
    monkeypatch.setattr(fixed_mod, "CHUNK", 7)  # several chunks: they must join into one draw
    gen = get_dataset(name)
    ds = fixed_sample(gen, 30, seed=3, cache_dir=tmp_path)
    factors = gen.sample_factors(30, np.random.default_rng(3))
    np.testing.assert_array_equal(ds.factors, factors)
    np.testing.assert_array_equal(ds.uint8_array(), gen.pixels(factors))
    assert ds.num_images == 30 and ds.channels == 1 and ds.factor_sizes == gen.factor_sizes
    np.testing.assert_array_equal(ds.images_at(np.array([4, 0])), ds.uint8_array()[[4, 0]] / np.float32(255))
    other = fixed_sample(gen, 30, seed=4, cache_dir=tmp_path)
    assert not np.array_equal(other.uint8_array(), ds.uint8_array())


def test_fixed_set_is_read_back_from_its_cache(tmp_path, monkeypatch):
    gen = get_dataset("correlated_ellipses")
    first = fixed_sample(gen, 25, cache_dir=tmp_path)
    assert cache_path(gen, 25, 0, tmp_path).is_file()

    def no_drawing(*args):
        raise AssertionError("drawn again although cached")

    monkeypatch.setattr(fixed_mod, "draw", no_drawing)
    again = fixed_sample(gen, 25, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.uint8_array(), first.uint8_array())
    np.testing.assert_array_equal(again.factors, first.factors)


def test_a_damaged_cache_file_is_drawn_again(tmp_path):
    gen = get_dataset("correlated_ellipses")
    first = fixed_sample(gen, 25, cache_dir=tmp_path).uint8_array().copy()
    path = cache_path(gen, 25, 0, tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=r"cached set .*-seed0-.*\.npz cannot be read .*: drawing it again"):
        again = fixed_sample(gen, 25, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.uint8_array(), first)
    assert np.load(path)["images"].shape == (25, 1, 64, 64)


def test_shape_factor_choice_gets_its_own_cache_file(tmp_path):
    with_shape = cache_path(get_dataset("shapes2d"), 10, 0, tmp_path)
    without = cache_path(get_dataset("shapes2d", include_shape=False), 10, 0, tmp_path)
    assert with_shape != without


def test_metrics_draw_from_the_generator_not_the_fixed_set(tmp_path):
    gen = get_dataset("correlated_ellipses")
    ds = fixed_sample(gen, 20, cache_dir=tmp_path)
    a = ds.sample_fixed_factor(2, 6, np.random.default_rng(9))
    b = gen.sample_fixed_factor(2, 6, np.random.default_rng(9))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(ds.sample_factors(5, np.random.default_rng(1)),
                                  gen.sample_factors(5, np.random.default_rng(1)))


def test_training_batches_come_from_the_fixed_set_and_held_out_from_the_generator(tmp_path, monkeypatch):
    monkeypatch.setenv("CHYVAE_EXT_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(model="betavae", dataset_size=12, steps=2, batch_size=8, precision="fp32", z_dim=4,
                         hidden=32, out=str(tmp_path / "run"), metrics="none")
    trainer = Trainer([config])
    stored = torch.from_numpy(trainer.dataset.uint8_array()).float().div(255).flatten(1)
    batch = next(trainer.members[0].batches).flatten(1)
    assert torch.cdist(batch, stored).min(dim=1).values.max().item() == 0.0  # every image is one of the 12
    fixed, held_out = fixed_batches(get_dataset("correlated_ellipses"), torch.device("cpu"))
    assert torch.equal(trainer.held_out, held_out) and torch.equal(trainer.fixed, fixed)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset_size"] == 12


def test_dataset_size_option_trains_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("CHYVAE_EXT_CACHE", str(tmp_path / "cache"))
    argv = ["--model", "chyvae", "--dataset-size", "40", "--steps", "4", "--batch-size", "8", "--z-dim", "4",
            "--hidden", "32", "--nu", "10", "--eval-every", "4", "--precision", "fp32", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["dataset_size"] == 40
    assert len(list((tmp_path / "cache").glob("correlated_ellipses-40-seed0-*.npz"))) == 1
    assert "factor_vae" in (tmp_path / "r" / "metrics.jsonl").read_text()  # metrics still run (from the generator)


@pytest.mark.parametrize(
    "size, message",
    [(0, "--dataset-size must be a positive integer, got 0"), (2.5, "--dataset-size must be a positive integer, got 2.5")],
)
def test_bad_dataset_size_is_refused_naming_the_option(tmp_path, capsys, size, message):
    (tmp_path / "c.yaml").write_text(f"dataset_size: {size}\n")
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_dataset_size_on_a_stored_set_is_refused(tmp_path, capsys):
    stored = MaterialisedImages(np.zeros((3, 1, 64, 64), np.uint8), name="three")
    with pytest.raises(TypeError, match=r"needs a procedural dataset with ground-truth factors, got three"):
        fixed_sample(stored, 2, cache_dir=tmp_path)
    np.savez(tmp_path / "e.npz", dataset=np.zeros((3, 64, 64), np.uint8))
    argv = ["--dataset", "correlated_ellipses", "--data-root", str(tmp_path / "e.npz"), "--dataset-size", "2",
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    assert "--dataset correlated_ellipses: dataset_size needs a procedural dataset" in capsys.readouterr().err


def test_fixed_sample_refuses_bad_size_and_seed(tmp_path):
    gen = get_dataset("correlated_ellipses")
    with pytest.raises(ValueError, match=r"dataset_size must be a positive integer, got -1"):
        fixed_sample(gen, -1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got 'a'"):
        fixed_sample(gen, 3, seed="a", cache_dir=tmp_path)


def test_a_source_without_8_bit_pixels_is_refused(tmp_path):
    gen = get_dataset("correlated_ellipses")
    gen.pixels = lambda factors: np.zeros((len(factors), 1, 64, 64), np.float32)
    with pytest.raises(TypeError, match=r"correlated_ellipses: a fixed set needs 8-bit images, its pixels are float32"):
        fixed_sample(gen, 3, cache_dir=tmp_path)


def test_no_shape_factor_leaves_shape_out_of_the_metrics_factors(tmp_path):
    argv = ["--dataset", "shapes2d", "--no-shape-factor", "--model", "betavae", "--steps", "2", "--batch-size", "4",
            "--z-dim", "4", "--hidden", "16", "--metrics", "none", "--precision", "fp32", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    config = TrainConfig(**json.loads((tmp_path / "r" / "config.json").read_text()))
    assert config.include_shape is False
    assert open_dataset(config, fixed=False).factor_names == ("scale", "orientation", "posX", "posY")
    assert open_dataset(TrainConfig(dataset="shapes2d")).factor_names[0] == "shape"


def test_no_shape_factor_is_refused_where_there_is_no_shape(tmp_path, capsys):
    assert main(["--no-shape-factor", "--out", str(tmp_path / "r")]) == 2
    assert "--no-shape-factor applies to dsprites and shapes2d only, got --dataset correlated_ellipses" in (
        capsys.readouterr().err
    )
    (tmp_path / "c.yaml").write_text("dataset: shapes2d\ninclude_shape: maybe\n")
    assert main(["--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "include_shape (--no-shape-factor) must be true or false, got 'maybe'" in capsys.readouterr().err
