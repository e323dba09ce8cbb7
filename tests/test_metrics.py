"""The FactorVAE metric on representations whose answer is known."""

import numpy as np
import pytest
import torch

from chyvae_ext.data import GroundTruthDataset, get_dataset
from chyvae_ext.metrics import PROTOCOLS, factor_vae_score

SMALL = {"votes_per_sample": 32, "train_votes": 300, "eval_votes": 300, "std_images": 1000}


class CodedFactors(GroundTruthDataset):
    """Images that carry their factor classes in the first pixels, so an encoder can read them back."""

    name = "coded"
    factor_names = ("a", "b", "c", "d")
    factor_sizes = (5, 8, 6, 10)

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(0, k, n) for k in self.factor_sizes], axis=1)

    def images(self, factors):
        f = self.check_factors(factors)
        x = np.zeros((len(f), 1, 64, 64), np.float32)
        x[:, 0, 0, :4] = f / np.array(self.factor_sizes, np.float32)
        return x


def factor_encoder(noise_dims=2, constant_dims=0, seed=0):
    """Factors scaled and permuted, plus pure-noise and constant dimensions."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 0.5, 7.0, 1.5])
    perm = torch.tensor([2, 0, 3, 1])

    def encode(x):
        f = x[:, 0, 0, :4] * scales
        noise = torch.randn(len(x), noise_dims, generator=gen)
        const = torch.full((len(x), constant_dims), 4.2)
        return torch.cat([noise[:, :1], f[:, perm], const, noise[:, 1:]], dim=1)

    return encode


def test_perfect_representation_scores_one():
    out = factor_vae_score(factor_encoder(), CodedFactors(), **SMALL)
    assert out["eval_accuracy"] == 1.0 and out["train_accuracy"] == 1.0
    assert out["votes"].shape == (6, 4)
    # Each factor's votes all land on the dimension that holds it (dimension j + 1 holds factor perm[j]).
    assert [int(np.argmax(out["votes"][:, k])) for k in range(4)] == [2, 4, 1, 3]


def test_pure_noise_scores_near_chance():
    def noise(x):
        return torch.randn(len(x), 6, generator=gen)

    gen = torch.Generator().manual_seed(1)
    out = factor_vae_score(noise, CodedFactors(), votes_per_sample=32, train_votes=800, eval_votes=800, std_images=1000)
    assert abs(out["eval_accuracy"] - 0.25) < 0.08


def test_constant_dimension_is_inactive_not_nan():
    out = factor_vae_score(factor_encoder(constant_dims=2), CodedFactors(), **SMALL)
    assert out["eval_accuracy"] == 1.0
    assert list(out["active_dims"]) == [0, 1, 2, 3, 4, 7]  # the two constant dimensions (5, 6) are inactive
    assert out["votes"][5:7].sum() == 0


def test_all_dimensions_constant_gives_zero_not_nan():
    out = factor_vae_score(lambda x: torch.zeros(len(x), 3), CodedFactors(), **SMALL)
    assert out["eval_accuracy"] == 0.0 and out["train_accuracy"] == 0.0 and len(out["active_dims"]) == 0


def test_same_seed_same_score_and_seed_matters():
    ds = get_dataset("shapes2d")

    def encode(x):  # deterministic, so that only the seed decides
        return x.mean(dim=(2, 3)).repeat(1, 3) + torch.linspace(0, 1, 3)

    kw = {"votes_per_sample": 8, "train_votes": 40, "eval_votes": 40, "std_images": 200}
    a = factor_vae_score(encode, ds, seed=3, **kw)
    b = factor_vae_score(encode, ds, seed=3, **kw)
    assert a["eval_accuracy"] == b["eval_accuracy"] and np.array_equal(a["votes"], b["votes"])
    c = factor_vae_score(encode, ds, seed=4, **kw)
    assert not np.array_equal(a["votes"], c["votes"])


def test_protocol_constants_are_the_spec():
    c, k = PROTOCOLS["chyvae"], PROTOCOLS["kim_mnih"]
    assert (c.votes_per_sample, c.train_votes, c.eval_votes, c.std_images, c.std_ddof, c.prune_below) == (
        200,
        800,
        800,
        5000,
        0,
        0.0,
    )
    assert (k.votes_per_sample, k.train_votes, k.eval_votes, k.std_images, k.prune_below) == (
        64,
        10000,
        5000,
        10000,
        0.05,
    )
    out = factor_vae_score(factor_encoder(), CodedFactors(), protocol="kim_mnih", **SMALL)
    assert out["protocol"]["name"] == "kim_mnih" and out["protocol"]["prune_below"] == 0.05
    assert out["protocol"]["votes_per_sample"] == 32  # overridden


def test_kim_mnih_prunes_small_std_dimensions():
    def encode(x):
        f = x[:, 0, 0, :4] * 10
        tiny = 0.01 * torch.randn(len(x), 1, generator=gen)  # global std 0.01 < 0.05
        return torch.cat([f, tiny], dim=1)

    gen = torch.Generator().manual_seed(0)
    out = factor_vae_score(encode, CodedFactors(), protocol="kim_mnih", **SMALL)
    assert list(out["active_dims"]) == [0, 1, 2, 3] and out["votes"][4].sum() == 0
    kept = factor_vae_score(encode, CodedFactors(), protocol="chyvae", **SMALL)
    assert list(kept["active_dims"]) == [0, 1, 2, 3, 4]  # the paper's protocol prunes nothing
    assert out["eval_accuracy"] == kept["eval_accuracy"] == 1.0  # normalised, the noise never wins


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"protocol": "higgins"}, ValueError, r"protocol must be one of \['chyvae', 'kim_mnih'\], got 'higgins'"),
        ({"votes": 3}, ValueError, r"unknown protocol setting\(s\) votes"),
        ({"votes_per_sample": 1}, ValueError, r"votes_per_sample must be at least 2, got 1"),
        ({"batch_size": 0}, ValueError, r"batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        factor_vae_score(factor_encoder(), CodedFactors(), **kwargs)


def test_dataset_without_factors_is_refused():
    ds = get_dataset("correlated_ellipses", size=10)
    with pytest.raises(TypeError, match=r"dataset must have ground-truth factors"):
        factor_vae_score(factor_encoder(), ds)


# ---- MIG and SAP ------------------------------------------------------------------------------


def test_mig_and_sap_on_known_representations():
    from chyvae_ext.metrics import mig, sap

    ds = CodedFactors()
    good = mig(factor_encoder(), ds, num_train=4000)
    assert good["mutual_information"].shape == (6, 4)
    assert good["mig"] > 0.85  # each factor in one dimension, recoverable exactly; noise holds none
    noise_gen = torch.Generator().manual_seed(0)
    noise = mig(lambda x: torch.randn(len(x), 6, generator=noise_gen), ds, num_train=4000)
    assert noise["mig"] < 0.05
    s_good, s_noise = (
        sap(factor_encoder(), ds, num_train=4000),
        sap(lambda x: torch.randn(len(x), 6), ds, num_train=4000),
    )
    assert s_good["sap"] > 0.9 and s_noise["sap"] < 0.05


def test_mig_matches_an_independent_computation():
    """MI from sklearn-free first principles: for a code that equals the factor, I = H(factor)."""
    from chyvae_ext.metrics import mig

    out = mig(lambda x: x[:, 0, 0, :4] * 1.0, CodedFactors(), num_train=3000, num_bins=20)
    for j, size in enumerate(CodedFactors.factor_sizes):
        assert np.isclose(out["mutual_information"][j, j], out["factor_entropy"][j], rtol=1e-9)
        assert abs(out["factor_entropy"][j] - np.log(size)) < 0.02  # uniform factor: H = log(size)


def test_mig_sap_constant_dimension_and_bad_arguments():
    from chyvae_ext.metrics import mig, sap

    enc = factor_encoder(constant_dims=1)
    assert np.isfinite(mig(enc, CodedFactors(), num_train=500)["mig"])
    assert np.isfinite(sap(enc, CodedFactors(), num_train=500)["sap"])
    with pytest.raises(ValueError, match=r"num_bins must be an integer >= 2, got 1"):
        mig(enc, CodedFactors(), num_bins=1)
    with pytest.raises(ValueError, match=r"the number of samples must be an integer >= 2, got 1"):
        sap(enc, CodedFactors(), num_train=1)
    with pytest.raises(TypeError, match=r"dataset must have ground-truth factors"):
        mig(enc, get_dataset("correlated_ellipses", size=10))
