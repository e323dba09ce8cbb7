"""Modularity and explicitness (Ridgeway & Zemel, NeurIPS 2018), as disentanglement_lib computes them.

- Modularity: the (d, K) mutual information I between each code dimension, discretised into
  ``num_bins`` equal-width bins, and each factor, on ``num_train`` samples. Per dimension,
  m_i = max_k I_ik^2 and delta_i = (sum_k I_ik^2 - m_i) / (m_i (K - 1)); its modularity is
  1 - delta_i (0 for a dimension with no information, m_i = 0); the score is the mean over
  dimensions. A dimension that holds one factor scores 1, one that holds two equally 1 - 1/(K - 1).
  Pure noise is not near 0: its small, biased MI estimates give about 0.6 (they grow with the
  factor's number of classes), so compare against that, not 0.
- Explicitness: the codes standardised with the training mean and std; per factor, a logistic
  regression (scikit-learn's defaults) on all dimensions predicts its class; its one-vs-rest ROC-AUC,
  macro-averaged over the classes, on the ``num_train`` training and ``num_test`` test samples; the
  score is the mean over factors. Chance is 0.5, a perfect code 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int
from ..data.base import GroundTruthDataset
from .information import _discretise, _mutual_information, _sample


def modularity_from_mi(mutual_information: np.ndarray) -> np.ndarray:
    """Per-dimension modularity of a (d, K) mutual-information matrix (K >= 2)."""
    sq = np.asarray(mutual_information, dtype=np.float64) ** 2
    m = sq.max(axis=1)
    delta = (sq.sum(axis=1) - m) / np.where(m > 0, m * (sq.shape[1] - 1), 1.0)
    return np.where(m > 0, 1.0 - delta, 0.0)


def _macro_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """One-vs-rest ROC-AUC averaged over the classes present with both labels in y."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(y == c, proba[:, i]) for i, c in enumerate(classes) if 0 < np.sum(y == c) < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def modularity_explicitness(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    num_train: int = 10000,
    num_test: int = 5000,
    num_bins: int = 20,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """Returns ``modularity``, ``explicitness_train``, ``explicitness_test``, the per-dimension
    modularity, the per-factor test explicitness (NaN for a factor with one class, left out of the
    mean) and the (d, K) mutual-information matrix."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    check_int("num_bins", num_bins, 2)
    rng = np.random.default_rng(seed)
    codes, factors = _sample(encode, dataset, num_train, rng, batch_size)
    codes_test, factors_test = _sample(encode, dataset, num_test, rng, batch_size)
    binned = _discretise(codes, num_bins)
    d, k = codes.shape[1], factors.shape[1]
    mi = np.array([[_mutual_information(binned[:, i], factors[:, j]) for j in range(k)] for i in range(d)])
    per_code = modularity_from_mi(mi) if k > 1 else (mi[:, 0] > 0).astype(np.float64)

    mean, std = codes.mean(0), codes.std(0)
    std = np.where(std > 0, std, 1.0)
    z, z_test = (codes - mean) / std, (codes_test - mean) / std
    exp_train, exp_test = np.full(k, np.nan), np.full(k, np.nan)
    for j in range(k):
        if len(np.unique(factors[:, j])) < 2:
            continue
        clf = LogisticRegression()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # lbfgs's 100 iterations, as the library's
            clf.fit(z, factors[:, j])
        exp_train[j] = _macro_auc(factors[:, j], clf.predict_proba(z), clf.classes_)
        exp_test[j] = _macro_auc(factors_test[:, j], clf.predict_proba(z_test), clf.classes_)
    known = ~np.isnan(exp_test)
    return {
        "modularity": float(per_code.mean()),
        "explicitness_train": float(np.nanmean(exp_train)) if known.any() else float("nan"),
        "explicitness_test": float(np.nanmean(exp_test)) if known.any() else float("nan"),
        "per_code_modularity": per_code,
        "per_factor_explicitness": exp_test,
        "mutual_information": mi,
    }
