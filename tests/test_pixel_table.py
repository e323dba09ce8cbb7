"""Pixels as a table (issue 30, item 1): a table's lookups are the set's own pixels, bit for bit, on
CorrelatedEllipses and shapes2d; the metrics score a model the same from the table; too large a table,
and a set whose images are not a function of its factors, are refused."""

import numpy as np
import pytest
import torch

from chyvae_ext.data import get_dataset
from chyvae_ext.data.table import PixelTable
from chyvae_ext.metrics.factor_vae import factor_vae_score
from chyvae_ext.metrics.information import mig


@pytest.fixture(scope="module")
def ellipses_table():
    return PixelTable(get_dataset("correlated_ellipses"))


@pytest.mark.parametrize("name", ["correlated_ellipses", "shapes2d"])
def test_table_lookups_equal_the_sets_own_pixels_bit_for_bit(name, ellipses_table):
    dataset = get_dataset(name)
    table = ellipses_table if name == "correlated_ellipses" else PixelTable(dataset)
    assert table.table.shape == (int(np.prod(dataset.factor_sizes)), 1, 64, 64)
    factors = dataset.sample_factors(3000, np.random.default_rng(7))
    assert np.array_equal(table.pixels(factors), dataset.pixels(factors))
    assert np.array_equal(table.images(factors), dataset.images(factors))
    corners = np.array([[0] * len(dataset.factor_sizes), [s - 1 for s in dataset.factor_sizes]])
    assert np.array_equal(table.pixels(corners), dataset.pixels(corners))
    assert table.pixels_on_device(factors[:5]).dtype == torch.uint8


def test_rows_are_the_ravelled_factor_classes(ellipses_table):
    factors = np.array([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [31, 31, 5, 39]])
    assert ellipses_table.rows(factors).tolist() == [0, 1, 40, 245759]
    with pytest.raises(ValueError, match=r"factor 'x' must be in \[0, 32\), got 32"):
        ellipses_table.rows(np.array([[32, 0, 0, 0]]))


def test_the_metrics_score_a_model_the_same_from_the_table(ellipses_table):
    dataset = get_dataset("correlated_ellipses")
    weights = torch.randn(64 * 64, 5, generator=torch.Generator().manual_seed(0))

    def encode(x):  # a fixed random projection: any encoder's codes come from the images alone
        return x.reshape(len(x), -1).float() @ weights

    small = dict(votes_per_sample=16, train_votes=50, eval_votes=50, std_images=200)
    want = factor_vae_score(encode, dataset, seed=2, **small)
    got = factor_vae_score(encode, ellipses_table, seed=2, **small)
    assert got["eval_accuracy"] == want["eval_accuracy"] and np.array_equal(got["votes"], want["votes"])
    assert mig(encode, ellipses_table, num_train=500, seed=1)["mig"] == mig(encode, dataset, num_train=500, seed=1)["mig"]


def test_a_table_too_large_or_of_random_images_is_refused():
    with pytest.raises(ValueError, match=r"a pixel table of correlated_ellipses holds 245,760 images, 0.94 GiB, more "
                                         r"than the 0.50 GiB allowed on cpu"):
        PixelTable(get_dataset("correlated_ellipses"), max_bytes=2**29)
    with pytest.raises(ValueError, match=r"without its shape factor draws the shape at random"):
        PixelTable(get_dataset("shapes2d", include_shape=False))
    with pytest.raises(TypeError, match=r"a pixel table needs a dataset with ground-truth factors"):
        PixelTable(object())


def test_building_a_table_says_what_it_renders():
    lines = []
    PixelTable(get_dataset("correlated_ellipses"), progress=lines.append, chunk=65536)
    assert lines == ["rendering correlated_ellipses's 245,760 images into a table on cpu (0.94 GiB)...",
                     "the table of correlated_ellipses is ready"]
