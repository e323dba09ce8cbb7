"""MIG (Chen et al. 2018) and SAP (Kumar et al. 2018), as disentanglement_lib computes them.

Both take a representation function and a dataset with ground-truth factors, like
:func:`chyvae_ext.metrics.factor_vae_score`, and draw their samples from a seeded generator.

- MIG: each code dimension is discretised into ``num_bins`` equal-width bins over its range; the
  mutual information I(code_i; factor_k) is computed from the joint histogram; for each factor,
  the gap between the largest and second-largest I(code_i; factor_k), divided by the factor's
  entropy H(factor_k), is averaged over factors.
- SAP: for each factor, a score per code dimension; the gap between the two largest scores is
  averaged over factors. With ``continuous_factors=False`` (the default, disentanglement_lib's
  study), the score is the test accuracy of a linear SVM (``LinearSVC(C=0.01,
  class_weight="balanced")``) that predicts the factor's class from that one dimension, trained on
  10,000 samples and scored on 5,000 others. With ``continuous_factors=True``, it is the squared
  correlation between the dimension and the factor (the R^2 of a one-dimensional linear fit), on
  the 10,000 training samples. Constant dimensions (variance <= 1e-12) score 0 in that form; an SVM
  on one gives the accuracy of one class, as the library's does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int, check_positive
from ..data.base import GroundTruthDataset
from .common import check_ground_truth, encode_batches


def _sample(encode, dataset: GroundTruthDataset, n: int, rng: np.random.Generator, batch_size: int):
    check_ground_truth(dataset)
    check_int("the number of samples", n, 2)
    factors = dataset.sample_factors(n, rng)
    codes = encode_batches(encode, dataset.pixels(factors), batch_size)
    return codes, factors


def _discretise(codes: np.ndarray, num_bins: int) -> np.ndarray:
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, i], bins=num_bins)
        out[:, i] = np.digitize(codes[:, i], edges[1:-1])
    return out


def _mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats from the empirical joint distribution of two integer label arrays."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def _top_gap(scores: np.ndarray) -> np.ndarray:
    """Per column of a (d, K) score matrix: largest minus second-largest (the largest when d = 1)."""
    top = np.sort(scores, axis=0)[::-1]
    return top[0] - (top[1] if len(top) > 1 else 0.0)


def _entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mig(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    num_train: int = 10000,
    num_bins: int = 20,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """Mutual Information Gap. Returns ``mig`` (mean over factors), per-factor gaps and the (d, K) MI matrix."""
    check_int("num_bins", num_bins, 2)
    codes, factors = _sample(encode, dataset, num_train, np.random.default_rng(seed), batch_size)
    binned = _discretise(codes, num_bins)
    d, k = codes.shape[1], factors.shape[1]
    mi = np.array([[_mutual_information(binned[:, i], factors[:, j]) for j in range(k)] for i in range(d)])
    entropy = np.array([_entropy(factors[:, j]) for j in range(k)])
    gaps = np.where(entropy > 0, _top_gap(mi) / np.where(entropy > 0, entropy, 1.0), 0.0)
    return {"mig": float(gaps.mean()), "per_factor": gaps, "mutual_information": mi, "factor_entropy": entropy}


def sap(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    continuous_factors: bool = False,
    num_train: int = 10000,
    num_test: int = 5000,
    svm_c: float = 0.01,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """Separated Attribute Predictability. Returns ``sap`` (mean over factors), the per-factor gaps and
    the (d, K) score matrix (SVM test accuracies, or squared correlations when ``continuous_factors``).

    ``num_test`` and ``svm_c`` are used only with ``continuous_factors=False``."""
    if not isinstance(continuous_factors, bool):
        raise ValueError(f"continuous_factors must be True or False, got {continuous_factors!r}")
    rng = np.random.default_rng(seed)
    codes, factors = _sample(encode, dataset, num_train, rng, batch_size)
    if continuous_factors:
        scores = _squared_correlations(codes, factors)
    else:
        check_positive("svm_c", svm_c)
        codes_test, factors_test = _sample(encode, dataset, num_test, rng, batch_size)
        scores = _svm_accuracies(codes, factors, codes_test, factors_test, svm_c)
    gaps = _top_gap(scores)
    return {"sap": float(gaps.mean()), "per_factor": gaps, "scores": scores}


def _squared_correlations(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    c = codes - codes.mean(0)
    f = factors.astype(np.float64) - factors.mean(0)
    cov = c.T @ f / (len(c) - 1)
    var_c, var_f = (c**2).sum(0) / (len(c) - 1), (f**2).sum(0) / (len(c) - 1)
    denom = np.outer(var_c, var_f)
    ok = (var_c > 1e-12)[:, None] & (denom > 0)
    return np.where(ok, cov**2 / np.where(ok, denom, 1.0), 0.0)


def _svm_accuracies(codes, factors, codes_test, factors_test, c: float) -> np.ndarray:
    """S_ij: test accuracy of a linear SVM predicting factor j from code i alone."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    d, k = codes.shape[1], factors.shape[1]
    scores = np.zeros((d, k))
    for j in range(k):
        y, y_test = factors[:, j], factors_test[:, j]
        if len(np.unique(y)) < 2:  # one class: every dimension predicts it, none separates it
            scores[:, j] = np.mean(y_test == y[0])
            continue
        for i in range(d):
            clf = LinearSVC(C=c, class_weight="balanced")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # liblinear on unscaled codes; as the study ran it
                clf.fit(codes[:, i : i + 1], y)
            scores[i, j] = np.mean(clf.predict(codes_test[:, i : i + 1]) == y_test)
    return scores
