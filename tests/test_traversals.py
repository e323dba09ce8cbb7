"""Traversals: ranges from the spread of the posterior means, rows sorted by and labelled with it."""

import pytest
import torch
from PIL import Image

from chyvae_ext.plots import latent_spread, save_traversals, traversal_images


class Codes(torch.nn.Module):
    """encode: the first d pixels of each image; decode: images whose logits equal z, as a 1 x d image (a
    model's decode gives images in [0, 1])."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.w = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the dtype and device

    def encode(self, x):
        return x.flatten(1)[:, : self.d]

    def decode(self, z):
        return torch.sigmoid(z.view(len(z), 1, 1, self.d).float())


def images_with_codes(codes):
    x = torch.zeros(len(codes), 1, 8, 8)
    x.view(len(codes), -1)[:, : codes.shape[1]] = codes
    return x


def test_spread_is_the_quantiles_and_variance_of_the_posterior_means():
    codes = torch.randn(200, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 0.1, 3.0, 0.0])
    spread = latent_spread(Codes(4), images_with_codes(codes), low=0.05, high=0.95)
    torch.testing.assert_close(spread["low"], torch.quantile(codes, 0.05, dim=0))
    torch.testing.assert_close(spread["high"], torch.quantile(codes, 0.95, dim=0))
    torch.testing.assert_close(spread["variance"], codes.var(dim=0))


def test_traversal_sets_one_latent_across_its_range_and_keeps_the_others():
    mu = torch.tensor([[0.5, -1.0, 2.0]])
    low, high = torch.tensor([-2.0, -1.0, 0.0]), torch.tensor([2.0, 3.0, 1.0])
    t = traversal_images(Codes(3), images_with_codes(mu), low, high, steps=5)
    z = torch.logit(t.view(3, 5, 3).double()).float()
    for k in range(3):
        torch.testing.assert_close(z[k, :, k], torch.linspace(low[k], high[k], 5), atol=1e-4, rtol=1e-4)
        others = [j for j in range(3) if j != k]
        torch.testing.assert_close(z[k][:, others], mu[0, others].expand(5, 2), atol=1e-4, rtol=1e-4)


def test_rows_are_sorted_by_the_variance_of_the_means(tmp_path):
    codes = torch.randn(100, 4, generator=torch.Generator().manual_seed(1)) * torch.tensor([0.1, 2.0, 0.0, 1.0])
    order = save_traversals(Codes(4), images_with_codes(codes[:1]), images_with_codes(codes),
                            tmp_path / "t.png", tmp_path / "t.gif", steps=6)
    assert order == [1, 3, 0, 2]
    png = Image.open(tmp_path / "t.png")
    assert png.size == (118 + 6 * (4 + 2) + 2, 4 * (1 + 2) + 2)  # the label margin, then 6 columns and 4 rows
    assert Image.open(tmp_path / "t.gif").n_frames == 6 + 4


@pytest.mark.parametrize("low, high", [(0.5, 0.5), (-0.1, 0.9), (0.2, 1.5)])
def test_bad_quantiles_are_refused(low, high):
    with pytest.raises(ValueError, match=rf"quantiles must satisfy 0 <= low < high <= 1, got low={low}, high={high}"):
        latent_spread(Codes(2), torch.zeros(5, 1, 8, 8), low=low, high=high)


def test_spread_needs_two_images_and_ranges_need_one_value_per_latent():
    with pytest.raises(ValueError, match=r"the spread needs at least 2 images, got 1"):
        latent_spread(Codes(2), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"low and high must have shape \(2,\), got \(3,\) and \(2,\)"):
        traversal_images(Codes(2), torch.zeros(1, 1, 8, 8), torch.zeros(3), torch.ones(2))
