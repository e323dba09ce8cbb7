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


def test_all_dimensions_pruned_scores_zero_without_encoding_votes():
    calls = []

    def encode(x):
        calls.append(len(x))
        return 0.01 * torch.randn(len(x), 3, generator=gen)  # every global std < 0.05

    gen = torch.Generator().manual_seed(0)
    out = factor_vae_score(encode, CodedFactors(), protocol="kim_mnih", **SMALL)
    assert out["eval_accuracy"] == out["train_accuracy"] == 0.0 and len(out["active_dims"]) == 0
    assert out["votes"].shape == (3, CodedFactors().num_factors) and out["votes"].sum() == 0
    assert sum(calls) == SMALL["std_images"]  # only the images for the standard deviation were encoded


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"protocol": "higgins"}, ValueError, r"protocol must be one of \['chyvae', 'kim_mnih'\], got 'higgins'"),
        ({"votes": 3}, ValueError, r"unknown protocol setting\(s\) votes"),
        ({"votes_per_sample": 1}, ValueError, r"votes_per_sample must be an integer >= 2, got 1"),
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
    s_good, s_noise = (  # the squared-correlation form; the SVM form is tested in test_metrics_study.py
        sap(factor_encoder(), ds, num_train=4000, continuous_factors=True),
        sap(lambda x: torch.randn(len(x), 6), ds, num_train=4000, continuous_factors=True),
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
    assert np.isfinite(sap(enc, CodedFactors(), num_train=500, continuous_factors=True)["sap"])
    with pytest.raises(ValueError, match=r"num_bins must be an integer >= 2, got 1"):
        mig(enc, CodedFactors(), num_bins=1)
    with pytest.raises(ValueError, match=r"the number of samples must be an integer >= 2, got 1"):
        sap(enc, CodedFactors(), num_train=1)
    with pytest.raises(TypeError, match=r"dataset must have ground-truth factors"):
        mig(enc, get_dataset("correlated_ellipses", size=10))


# ---- DCI --------------------------------------------------------------------------------------


def test_dci_from_importance_against_scipy_entropy():
    """The weighted-entropy formulas of Eastwood & Williams, recomputed with scipy.stats.entropy."""
    from scipy.stats import entropy

    from chyvae_ext.metrics import dci_from_importance

    r = np.random.default_rng(0).random((6, 4))
    dis, comp = dci_from_importance(r)
    d_per = 1 - entropy(r.T + 1e-11, base=4)  # columns of r.T: one code dimension each
    c_per = 1 - entropy(r + 1e-11, base=6)
    assert np.isclose(dis, (d_per * r.sum(1) / r.sum()).sum(), rtol=1e-12)
    assert np.isclose(comp, (c_per * r.sum(0) / r.sum()).sum(), rtol=1e-12)
    # A permutation matrix (padded with useless dimensions) is perfectly disentangled and complete.
    perfect = np.vstack([np.eye(4)[[2, 0, 3, 1]], np.zeros((2, 4))])
    assert np.allclose(dci_from_importance(perfect), (1.0, 1.0), atol=1e-8)
    assert np.allclose(dci_from_importance(np.ones((4, 4))), (0.0, 0.0), atol=1e-8)
    assert dci_from_importance(np.zeros((3, 2))) == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"importance must be a finite non-negative \(d, K\) matrix"):
        dci_from_importance(-r)


def test_dci_on_known_representations():
    from chyvae_ext.metrics import dci

    kw = {"num_train": 1500, "num_test": 500, "n_estimators": 10}
    good = dci(factor_encoder(), CodedFactors(), **kw)
    assert good["importance"].shape == (6, 4)
    assert good["disentanglement"] > 0.9 and good["completeness"] > 0.9
    assert good["informativeness_test"] > 0.95
    gen = torch.Generator().manual_seed(0)
    noise = dci(lambda x: torch.randn(len(x), 6, generator=gen), CodedFactors(), **kw)
    assert noise["disentanglement"] < 0.3 and noise["completeness"] < 0.3
    assert noise["informativeness_test"] < 0.3  # chance is 1/5 .. 1/10 per factor
    again = dci(factor_encoder(), CodedFactors(), **kw)
    assert again["disentanglement"] == good["disentanglement"]  # same seed, same score
    const = dci(factor_encoder(constant_dims=1), CodedFactors(), **kw)
    assert np.isfinite(const["disentanglement"]) and const["importance"][5].sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_train": 1}, r"num_train must be an integer >= 2, got 1"),
        ({"num_test": 0}, r"num_test must be a positive integer, got 0"),
        ({"n_estimators": 2.5}, r"n_estimators must be a positive integer, got 2.5"),
    ],
)
def test_dci_bad_arguments(kwargs, match):
    from chyvae_ext.metrics import dci

    with pytest.raises(ValueError, match=match):
        dci(factor_encoder(), CodedFactors(), **kwargs)


# ---- the suite used by training and evaluate -----------------------------------------------------


def test_parse_metrics():
    from chyvae_ext.metrics import METRICS, parse_metrics

    assert parse_metrics("factor_vae, mig,mig") == ["factor_vae", "mig"]
    assert parse_metrics("all") == list(METRICS) and parse_metrics("none") == []
    assert parse_metrics(["sap"]) == ["sap"]
    for bad in ("fvae", "", "none,mig"):
        with pytest.raises(ValueError, match=r"metrics must be a comma-separated list of factor_vae, mig, sap, dci"):
            parse_metrics(bad)


def test_make_encoder_matches_the_model():
    from chyvae_ext.metrics import make_encoder
    from chyvae_ext.models import BetaVAE, CHyVAE

    x = torch.from_numpy(get_dataset("shapes2d").random_images(50, np.random.default_rng(0)))
    for model in (CHyVAE(10, 1, 32), BetaVAE(10, 1, 32)):
        with torch.no_grad():
            want = model.eval().encode(x)
        fp32 = make_encoder(model, precision="fp32", chunk=16)(x)
        assert fp32.dtype == torch.float32 and torch.allclose(fp32, want, rtol=1e-5, atol=1e-6)
        bf16 = make_encoder(model, precision="bf16")(x)
        assert torch.allclose(bf16, want, rtol=0.05, atol=0.05)  # bf16 has 8 bits of mantissa
        assert next(model.parameters()).dtype == torch.float32  # the model itself is untouched
    with pytest.raises(ValueError, match=r"precision must be fp32 or bf16, got 'fp16'"):
        make_encoder(model, precision="fp16")


def test_score_runs_the_named_metrics():
    from chyvae_ext.metrics import score

    summary, details = score(factor_encoder(), CodedFactors(), ["factor_vae", "sap"], protocol="chyvae")
    assert set(summary) == {"factor_vae", "factor_vae_train", "sap"} and summary["factor_vae"] == 1.0
    assert details["factor_vae"]["seconds"] > 0 and isinstance(details["factor_vae"]["votes"], list)
    with pytest.raises(ValueError, match=r"unknown metric 'x'"):
        score(factor_encoder(), CodedFactors(), ["x"])


def test_uint8_pixels_path_gives_the_float_path_score():
    """Metrics read uint8 pixels and convert them per batch; a dataset that only offers float
    images (the generic path) must give the same votes and scores for the same seed."""
    from chyvae_ext.metrics import dci, mig, sap

    class FloatOnly(GroundTruthDataset):
        """CorrelatedEllipses seen only through the abstract interface (pixels() is images())."""

        inner = get_dataset("correlated_ellipses")
        name, factor_names, factor_sizes = inner.name, inner.factor_names, inner.factor_sizes

        def sample_factors(self, n, rng):
            return self.inner.sample_factors(n, rng)

        def images(self, factors):
            return self.inner.images(factors)

    proj = torch.randn(64 * 64, 6, generator=torch.Generator().manual_seed(0))

    def encode(x):
        assert x.dtype == torch.float32 and float(x.max()) <= 1.0
        return x.reshape(len(x), -1) @ proj

    a = factor_vae_score(encode, get_dataset("correlated_ellipses"), **SMALL)
    b = factor_vae_score(encode, FloatOnly(), **SMALL)
    assert a["eval_accuracy"] == b["eval_accuracy"] and np.array_equal(a["votes"], b["votes"])
    ds, float_only = get_dataset("correlated_ellipses"), FloatOnly()
    assert mig(encode, ds, num_train=500)["mig"] == mig(encode, float_only, num_train=500)["mig"]
    assert sap(encode, ds, num_train=500, continuous_factors=True)["sap"] == sap(
        encode, float_only, num_train=500, continuous_factors=True
    )["sap"]
    small = {"num_train": 200, "num_test": 100, "n_estimators": 5}
    assert dci(encode, ds, **small)["disentanglement"] == dci(encode, float_only, **small)["disentanglement"]


def test_as_float_images():
    from chyvae_ext.metrics.common import as_float_images

    u = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    x = as_float_images(u)
    assert x.dtype == torch.float32
    assert np.array_equal(x.numpy().view(np.uint32), np.divide(u, np.float32(255), dtype=np.float32).view(np.uint32))
    f = np.random.default_rng(0).random((2, 1, 4, 4), dtype=np.float32)
    assert np.array_equal(as_float_images(f).numpy(), f)
