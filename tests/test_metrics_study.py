"""disentanglement_lib's other metrics (docs/math.md 7): SAP with SVMs, the BetaVAE score, modularity and
explicitness, the unsupervised scores. Known answers on representations built from the factors,
and two independent implementations of the library's procedures, written here from the papers and
the library's documentation (their own sampling, loops and bookkeeping), that our functions must
agree with within 0.03."""

import numpy as np
import pytest
import torch
from test_metrics import CodedFactors, factor_encoder

from chyvae_ext.data import GroundTruthDataset, get_dataset
from chyvae_ext.metrics import (
    METRICS,
    beta_vae_score,
    gaussian_scores,
    modularity_explicitness,
    modularity_from_mi,
    sap,
    score,
    unsupervised_scores,
)

SAP_SMALL = {"num_train": 2000, "num_test": 1000}
BVAE_SMALL = {"num_train": 600, "num_eval": 600}
MOD_SMALL = {"num_train": 3000, "num_test": 1500}


class BinaryFactors(GroundTruthDataset):
    """Four balanced binary factors carried in the first pixels."""

    name = "binary"
    factor_names = ("a", "b", "c", "d")
    factor_sizes = (2, 2, 2, 2)

    def sample_factors(self, n, rng):
        return rng.integers(0, 2, (n, 4))

    def images(self, factors):
        f = self.check_factors(factors)
        x = np.zeros((len(f), 1, 64, 64), np.float32)
        x[:, 0, 0, :4] = f
        return x


def noise_encoder(dims=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(len(x), dims, generator=gen)


def mixed_encoder(seed=0):
    """Factors a and b summed into one dimension; c with a little noise; d alone; one noise dimension."""
    gen = torch.Generator().manual_seed(seed)

    def encode(x):
        f = x[:, 0, 0, :4]
        n = torch.randn(len(x), 2, generator=gen)
        return torch.stack([f[:, 0] + f[:, 1], f[:, 2] + 0.1 * n[:, 0], f[:, 3], n[:, 1]], dim=1)

    return encode


def noisy_encoder(scale, seed=0):
    """Each factor in its own dimension, blurred by Gaussian noise of std ``scale`` (a mid-range score)."""
    gen = torch.Generator().manual_seed(seed)

    def encode(x):
        f = x[:, 0, 0, :4]
        return torch.cat([f + scale * torch.randn(f.shape, generator=gen), torch.randn(len(x), 1, generator=gen)], 1)

    return encode


# ---- SAP with linear SVMs (the study's form) ----------------------------------------------------


def test_sap_svm_on_binary_factors_reaches_its_maximum_and_noise_scores_zero():
    # A dimension that equals a balanced binary factor predicts it exactly (accuracy 1); any other
    # dimension is at chance (0.5), so the gap, SAP's maximum here, is 0.5. Noise: every gap ~ 0.
    good = sap(factor_encoder(noise_dims=2), BinaryFactors(), **SAP_SMALL)
    own = [2, 4, 1, 3]  # dimension j + 1 holds factor perm[j] (factor_encoder's permutation)
    assert [good["scores"][own[k], k] for k in range(4)] == [1.0] * 4
    assert abs(good["sap"] - 0.5) < 0.03
    noise = sap(noise_encoder(), BinaryFactors(), **SAP_SMALL)
    assert noise["sap"] < 0.03 and np.all(np.abs(noise["scores"] - 0.5) < 0.05)


def test_sap_svm_perfect_multiclass_code_wins_its_factor_and_beats_mixed_and_noise():
    ds = CodedFactors()
    good = sap(factor_encoder(noise_dims=2, constant_dims=1), ds, **SAP_SMALL)
    assert good["scores"].shape == (7, 4)
    # With C = 0.01 a one-feature SVM cannot give every one of 5-10 classes its interval, so even a
    # perfect code's accuracy is far below 1 (the library's SAP is small on multi-class factors);
    # still, each factor's own dimension is its best predictor.
    assert [int(np.argmax(good["scores"][:, k])) for k in range(4)] == [2, 4, 1, 3]
    mixed = sap(mixed_encoder(), ds, **SAP_SMALL)
    noise = sap(noise_encoder(), ds, **SAP_SMALL)
    assert good["sap"] > mixed["sap"] + 0.05 and mixed["sap"] > noise["sap"] + 0.05 and noise["sap"] < 0.03


def test_sap_continuous_factors_is_the_squared_correlation_with_ddof_1():
    out = sap(mixed_encoder(), CodedFactors(), num_train=1500, continuous_factors=True)
    # The same samples, recomputed with numpy's corrcoef: sample 1500 with the same seed.
    rng = np.random.default_rng(0)
    ds = CodedFactors()
    f = ds.sample_factors(1500, rng)
    codes = mixed_encoder()(torch.from_numpy(ds.images(f))).numpy().astype(np.float64)
    want = np.array([[np.corrcoef(codes[:, i], f[:, j])[0, 1] ** 2 for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(out["scores"], want, rtol=1e-9, atol=1e-12)
    top = np.sort(want, axis=0)
    assert out["sap"] == pytest.approx(float((top[-1] - top[-2]).mean()), rel=1e-9)


def _independent_sap_svm(encode, dataset, num_train, num_test, seed):
    """SAP as disentanglement_lib's study ran it (Kumar et al. 2018; the library's sap_score with
    continuous_factors=False): sample training and test codes; for every (latent i, factor j) fit
    LinearSVC(C=0.01, class_weight="balanced") on latent i alone, score the test accuracy; per
    factor, the difference between the two largest accuracies; the mean over factors."""
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(seed)

    def draw(n):
        factors = dataset.sample_factors(n, rng)
        return encode(torch.from_numpy(dataset.images(factors))).numpy(), factors

    mus, ys = draw(num_train)
    mus_test, ys_test = draw(num_test)
    gaps = []
    for j in range(ys.shape[1]):
        accuracies = []
        for i in range(mus.shape[1]):
            clf = LinearSVC(C=0.01, class_weight="balanced").fit(mus[:, [i]], ys[:, j])
            accuracies.append(np.mean(clf.predict(mus_test[:, [i]]) == ys_test[:, j]))
        best, second = sorted(accuracies, reverse=True)[:2]
        gaps.append(best - second)
    return float(np.mean(gaps))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sap_svm_agrees_with_an_independent_implementation_of_the_library_procedure():
    ds = CodedFactors()
    for encode_fn in (lambda: noisy_encoder(0.1, seed=3), mixed_encoder):
        ours = sap(encode_fn(), ds, seed=0)["sap"]  # the study's 10,000 and 5,000 samples
        theirs = _independent_sap_svm(encode_fn(), ds, 10000, 5000, seed=11)
        assert abs(ours - theirs) < 0.03, (ours, theirs)
        assert ours > 0.05  # a score away from the floor, so that agreement says something


def test_sap_same_seed_same_number_and_seed_matters():
    a = sap(noisy_encoder(0.2, seed=1), CodedFactors(), seed=5, **SAP_SMALL)
    b = sap(noisy_encoder(0.2, seed=1), CodedFactors(), seed=5, **SAP_SMALL)
    c = sap(noisy_encoder(0.2, seed=1), CodedFactors(), seed=6, **SAP_SMALL)
    assert a["sap"] == b["sap"] and np.array_equal(a["scores"], b["scores"])
    assert not np.array_equal(a["scores"], c["scores"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"continuous_factors": "yes"}, r"continuous_factors must be True or False, got 'yes'"),
        ({"svm_c": 0.0}, r"svm_c must be a finite number > 0, got 0.0"),
        ({"svm_c": float("nan")}, r"svm_c must be a finite number > 0, got nan"),
        ({"num_test": 1}, r"the number of samples must be an integer >= 2, got 1"),
    ],
)
def test_sap_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sap(factor_encoder(), CodedFactors(), **kwargs)


# ---- the BetaVAE score -------------------------------------------------------------------------


def test_beta_vae_score_perfect_is_one_noise_is_chance_mixed_is_lower():
    ds = CodedFactors()
    good = beta_vae_score(factor_encoder(noise_dims=2, constant_dims=1), ds, **BVAE_SMALL)
    assert good["train_accuracy"] == 1.0 and good["eval_accuracy"] == 1.0
    assert good["coefficients"].shape == (4, 7)
    noise = beta_vae_score(noise_encoder(), ds, **BVAE_SMALL)
    assert abs(noise["eval_accuracy"] - 0.25) < 0.06  # chance: 1 / K with K = 4 factors
    mixed = beta_vae_score(mixed_encoder(), ds, **BVAE_SMALL)
    # Fixing a or b leaves their shared dimension varying: the two are hard to tell apart.
    assert 0.4 < mixed["eval_accuracy"] < 0.95


def _independent_beta_vae_score(encode, dataset, num_train, num_eval, seed, batch_size=64):
    """The BetaVAE score as Higgins et al. (2017) define it and disentanglement_lib's study ran it:
    one training point at a time, a factor index drawn uniformly, two batches of factors sharing that
    factor, the mean absolute difference of their codes as the feature; LogisticRegression with its
    defaults; accuracy on fresh points."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)

    def one_point():
        k = int(rng.integers(len(dataset.factor_sizes)))
        first = dataset.sample_factors(batch_size, rng)
        second = dataset.sample_factors(batch_size, rng)
        second[:, k] = first[:, k]
        a = encode(torch.from_numpy(dataset.images(first))).numpy()
        b = encode(torch.from_numpy(dataset.images(second))).numpy()
        return np.mean(np.abs(a - b), axis=0), k

    train = [one_point() for _ in range(num_train)]
    evaluation = [one_point() for _ in range(num_eval)]
    clf = LogisticRegression().fit(np.stack([p for p, _ in train]), [k for _, k in train])
    return float(clf.score(np.stack([p for p, _ in evaluation]), [k for _, k in evaluation]))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_beta_vae_score_agrees_with_an_independent_implementation_of_the_library_procedure():
    ds = CodedFactors()
    for encode_fn in (lambda: noisy_encoder(0.35, seed=2), mixed_encoder):
        ours = beta_vae_score(encode_fn(), ds, num_train=1500, num_eval=3000, seed=0)["eval_accuracy"]
        theirs = _independent_beta_vae_score(encode_fn(), ds, 1500, 3000, seed=21)
        assert abs(ours - theirs) < 0.03, (ours, theirs)
        assert 0.35 < ours < 0.97  # mid-range, so that agreement says something


def test_beta_vae_score_same_seed_same_number_and_seed_matters():
    a = beta_vae_score(noisy_encoder(0.5, seed=1), CodedFactors(), seed=3, **BVAE_SMALL)
    b = beta_vae_score(noisy_encoder(0.5, seed=1), CodedFactors(), seed=3, **BVAE_SMALL)
    c = beta_vae_score(noisy_encoder(0.5, seed=1), CodedFactors(), seed=4, **BVAE_SMALL)
    assert a["eval_accuracy"] == b["eval_accuracy"] and np.array_equal(a["coefficients"], b["coefficients"])
    assert not np.array_equal(a["coefficients"], c["coefficients"])


def test_beta_vae_score_encodes_batch_pairs_in_chunks_with_the_same_result():
    calls = []
    base = factor_encoder(noise_dims=0)

    def encode(x):
        calls.append(len(x))
        return base(x)

    a = beta_vae_score(encode, CodedFactors(), num_train=40, num_eval=20, batch_size=8, chunk_images=64)
    assert max(calls) == 64 and sum(calls) == 2 * (40 + 20) * 8  # two sets of 8 images per point
    b = beta_vae_score(factor_encoder(noise_dims=0), CodedFactors(), num_train=40, num_eval=20, batch_size=8)
    assert a["eval_accuracy"] == b["eval_accuracy"] > 0.5
    assert np.array_equal(a["coefficients"], b["coefficients"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"num_train": 1}, r"num_train must be an integer >= 2, got 1"),
        ({"num_eval": 0}, r"num_eval must be a positive integer, got 0"),
        ({"chunk_images": 2.5}, r"chunk_images must be a positive integer, got 2.5"),
    ],
)
def test_beta_vae_score_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        beta_vae_score(factor_encoder(), CodedFactors(), **kwargs)
    with pytest.raises(TypeError, match=r"dataset must have ground-truth factors"):
        beta_vae_score(factor_encoder(), get_dataset("correlated_ellipses", size=10))


# ---- modularity and explicitness ---------------------------------------------------------------


def test_modularity_from_mi_formula():
    mi = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.5, 0.5]])
    # Row by row: no information -> 0; one factor -> 1; two equal -> 1 - (1 - 1) ... written out:
    # delta = (sum of squares - max square) / (max square * (K - 1)).
    want = [0.0, 1.0, 1.0 - (2.0 - 1.0) / (1.0 * 2), 1.0 - (1.5 - 1.0) / (1.0 * 2)]
    np.testing.assert_allclose(modularity_from_mi(mi), want, rtol=1e-12)


def test_modularity_explicitness_perfect_noise_and_mixed():
    ds = CodedFactors()
    good = modularity_explicitness(factor_encoder(noise_dims=0), ds, **MOD_SMALL)
    assert good["modularity"] > 0.99 and good["explicitness_test"] > 0.99 and good["explicitness_train"] > 0.99
    assert good["mutual_information"].shape == (4, 4)
    # Constant and noise dimensions: a constant one holds no information (modularity 0, as the
    # library sets it); the factors' own dimensions stay at 1.
    extra = modularity_explicitness(factor_encoder(noise_dims=2, constant_dims=1), ds, **MOD_SMALL)
    per_code = extra["per_code_modularity"]
    assert per_code[5] == 0.0 and np.all(per_code[1:5] > 0.99)
    assert extra["explicitness_test"] > 0.99  # noise does not hide a factor from a linear model
    noise = modularity_explicitness(noise_encoder(), ds, **MOD_SMALL)
    # Chance: explicitness 0.5 (a ROC-AUC); modularity is not near 0 for noise (the MI estimates'
    # bias grows with the number of classes), about 0.6 here.
    assert abs(noise["explicitness_test"] - 0.5) < 0.03 and 0.4 < noise["modularity"] < 0.8
    mixed = modularity_explicitness(mixed_encoder(), ds, **MOD_SMALL)
    assert mixed["per_code_modularity"][0] < 0.9  # the dimension that holds a and b
    assert mixed["modularity"] < good["modularity"] - 0.1
    assert mixed["explicitness_test"] < good["explicitness_test"] - 0.1


def test_explicitness_is_the_macro_one_vs_rest_auc_of_a_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    ds = CodedFactors()
    out = modularity_explicitness(noisy_encoder(0.3, seed=4), ds, num_train=800, num_test=400, seed=2)
    rng = np.random.default_rng(2)
    enc = noisy_encoder(0.3, seed=4)
    f = ds.sample_factors(800, rng)
    c = enc(torch.from_numpy(ds.images(f))).numpy().astype(np.float64)
    f_test = ds.sample_factors(400, rng)
    c_test = enc(torch.from_numpy(ds.images(f_test))).numpy().astype(np.float64)
    mean, std = c.mean(0), c.std(0)
    want = []
    for j in range(4):
        clf = LogisticRegression().fit((c - mean) / std, f[:, j])
        proba = clf.predict_proba((c_test - mean) / std)
        onehot = (f_test[:, j][:, None] == clf.classes_[None, :]).astype(int)
        want.append(roc_auc_score(onehot, proba, average="macro"))
    np.testing.assert_allclose(out["per_factor_explicitness"], want, rtol=1e-9)
    assert out["explicitness_test"] == pytest.approx(np.mean(want), rel=1e-9)


def test_modularity_explicitness_same_seed_same_number_and_bad_arguments():
    a = modularity_explicitness(noisy_encoder(0.3), CodedFactors(), seed=1, num_train=500, num_test=200)
    b = modularity_explicitness(noisy_encoder(0.3), CodedFactors(), seed=1, num_train=500, num_test=200)
    c = modularity_explicitness(noisy_encoder(0.3), CodedFactors(), seed=2, num_train=500, num_test=200)
    assert a["modularity"] == b["modularity"] and a["explicitness_test"] == b["explicitness_test"]
    assert a["modularity"] != c["modularity"]
    with pytest.raises(ValueError, match=r"num_bins must be an integer >= 2, got 1"):
        modularity_explicitness(factor_encoder(), CodedFactors(), num_bins=1)
    with pytest.raises(ValueError, match=r"the number of samples must be an integer >= 2, got 0"):
        modularity_explicitness(factor_encoder(), CodedFactors(), num_test=0)


# ---- the unsupervised scores -------------------------------------------------------------------


def test_gaussian_scores_against_closed_forms_and_scipy_sqrtm():
    from scipy.linalg import sqrtm

    rho = 0.6
    two = gaussian_scores(np.array([[1.0, rho], [rho, 1.0]]))
    assert two["gaussian_total_correlation"] == pytest.approx(-0.5 * np.log(1 - rho**2), rel=1e-12)
    w = 4.0 - 2.0 * (np.sqrt(1 + rho) + np.sqrt(1 - rho))  # A = C here; its eigenvalues are 1 +- rho
    assert two["gaussian_wasserstein_correlation"] == pytest.approx(w, rel=1e-10)
    assert two["gaussian_wasserstein_correlation_norm"] == pytest.approx(w / 2.0, rel=1e-10)
    rng = np.random.default_rng(0)
    m = rng.standard_normal((5, 5)) * [0.3, 1.0, 2.0, 0.7, 1.5]
    cov = m @ m.T + 0.1 * np.eye(5)
    got = gaussian_scores(cov)
    want_w = 2 * np.trace(cov) - 2 * np.trace(sqrtm(cov * np.diag(cov)[:, None])).real
    assert got["gaussian_wasserstein_correlation"] == pytest.approx(want_w, rel=1e-8)
    want_tc = 0.5 * (np.log(np.diag(cov)).sum() - np.log(np.linalg.det(cov)))
    assert got["gaussian_total_correlation"] == pytest.approx(want_tc, rel=1e-10)
    # A constant dimension is left out rather than making log C_ii = -inf.
    padded = np.zeros((6, 6))
    padded[:5, :5] = cov
    assert gaussian_scores(padded) == pytest.approx(got, rel=1e-12)
    assert gaussian_scores(np.zeros((3, 3)))["gaussian_total_correlation"] == 0.0


def test_unsupervised_scores_independent_codes_near_zero_correlated_codes_match_theory():
    ds = CodedFactors()
    indep = unsupervised_scores(factor_encoder(noise_dims=2, constant_dims=1), ds, num_train=4000)
    assert indep["gaussian_total_correlation"] < 0.01 and indep["gaussian_wasserstein_correlation_norm"] < 0.01
    assert indep["mutual_info_score"] < 0.05 and indep["covariance"].shape == (7, 7)
    gen = torch.Generator().manual_seed(0)

    def correlated(x):  # two standard normal codes with correlation 0.8, from noise alone
        a, b = torch.randn(len(x), 2, generator=gen).unbind(1)
        return torch.stack([a, 0.8 * a + 0.6 * b], 1)

    out = unsupervised_scores(correlated, ds, num_train=8000)
    assert out["gaussian_total_correlation"] == pytest.approx(-0.5 * np.log(1 - 0.64), abs=0.03)
    assert out["mutual_info_score"] > 0.3  # the discretised codes share about 0.5 nats
    mixed = unsupervised_scores(lambda x: x[:, 0, 0, :2] @ torch.tensor([[1.0, 1.0], [1.0, -0.5]]), ds)
    assert mixed["gaussian_total_correlation"] > 0.05  # two factors in both dimensions: correlated codes


def test_unsupervised_scores_same_seed_same_number_and_bad_arguments():
    a = unsupervised_scores(noisy_encoder(0.3, seed=1), CodedFactors(), num_train=500, seed=1)
    b = unsupervised_scores(noisy_encoder(0.3, seed=1), CodedFactors(), num_train=500, seed=1)
    assert a["gaussian_total_correlation"] == b["gaussian_total_correlation"]
    assert a["mutual_info_score"] == b["mutual_info_score"]
    with pytest.raises(ValueError, match=r"num_bins must be an integer >= 2, got 0"):
        unsupervised_scores(factor_encoder(), CodedFactors(), num_bins=0)
    one = unsupervised_scores(lambda x: x[:, 0, 0, :1], CodedFactors(), num_train=100)
    assert one["mutual_info_score"] == 0.0 and one["gaussian_total_correlation"] == 0.0


# ---- by name, as training, evaluate and sweeps call them ---------------------------------------


def test_score_runs_the_new_metrics_by_name(monkeypatch):
    import chyvae_ext.metrics.suite as suite

    assert {"beta_vae", "modularity_explicitness", "unsupervised"} <= set(METRICS)
    small = {"beta_vae_score": BVAE_SMALL, "modularity_explicitness": MOD_SMALL, "unsupervised_scores": {}}
    for name, kw in small.items():
        original = getattr(suite, name)
        monkeypatch.setattr(suite, name, lambda *a, _f=original, _kw=kw, **k: _f(*a, **(k | _kw)))
    lines = []
    summary, details = score(
        factor_encoder(noise_dims=0), CodedFactors(), ["beta_vae", "modularity_explicitness", "unsupervised"],
        progress=lines.append,
    )
    assert summary["beta_vae"] == 1.0 and summary["beta_vae_train"] == 1.0
    assert summary["modularity"] > 0.99 and summary["explicitness_test"] > 0.99
    assert abs(summary["gaussian_tc"]) < 0.01 and summary["mutual_info_score"] < 0.05
    assert set(details) == {"beta_vae", "modularity_explicitness", "unsupervised"}
    assert isinstance(details["unsupervised"]["covariance"], list)
    assert any(line.startswith("modularity_explicitness: modularity 1.0000") for line in lines), lines


def test_training_and_evaluate_score_the_new_metrics_by_name(tmp_path):
    import json

    from chyvae_ext.evaluate import main as evaluate_main
    from chyvae_ext.train import main as train_main

    out = tmp_path / "run"
    args = ["--model", "betatcvae", "--dataset", "shapes2d", "--steps", "2", "--batch-size", "8", "--z-dim", "4",
            "--hidden", "16", "--precision", "fp32", "--log-every", "1", "--eval-every", "2", "--ckpt-every", "2",
            "--metrics", "unsupervised", "--out", str(out)]
    assert train_main(args) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert {"gaussian_tc", "wasserstein_correlation", "mutual_info_score"} <= set(evals[-1])
    assert evaluate_main([str(out), "--metrics", "unsupervised", "--no-pictures"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["metrics"]["gaussian_tc"] == pytest.approx(evals[-1]["gaussian_tc"], rel=1e-6)
