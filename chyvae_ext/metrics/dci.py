"""DCI: disentanglement, completeness and informativeness (Eastwood & Williams, ICLR 2018),
as disentanglement_lib computes it (``evaluation/metrics/dci.py``).

For each factor k a gradient-boosted tree classifier (scikit-learn's
``GradientBoostingClassifier``) predicts the factor's class from the code; the absolute feature
importances form column k of the (d, K) importance matrix R.

- Disentanglement: per code dimension i, 1 - H_K(P_i.) with P_ij = R_ij / sum_j R_ij and the
  entropy in base K; averaged with weights rho_i = sum_j R_ij / sum R.
- Completeness: per factor j, 1 - H_d(P~_.j) with P~_ij = R_ij / sum_i R_ij, entropy in base d;
  averaged with weights sum_i R_ij / sum R.
- Informativeness: the classifiers' accuracy on held-out samples, averaged over factors (and the
  same on the training samples).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int
from ..data.base import GroundTruthDataset
from .common import check_ground_truth, encode_batches


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy in ``base`` of each row of non-negative weights (normalised here); an all-zero row has entropy 1."""
    p = p + 1e-11  # as disentanglement_lib: keeps all-zero rows finite (their entropy is then maximal)
    p = p / p.sum(axis=1, keepdims=True)
    return -(p * np.log(p)).sum(axis=1) / np.log(base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of a (d, K) non-negative importance matrix."""
    r = np.asarray(importance, dtype=np.float64)
    if r.ndim != 2 or (r < 0).any() or not np.isfinite(r).all():
        raise ValueError(f"importance must be a finite non-negative (d, K) matrix, got shape {r.shape}")
    d, k = r.shape
    total = r.sum()
    if total == 0:
        return 0.0, 0.0
    dis = 1.0 - _entropy_rows(r, k) if k > 1 else np.ones(d)
    comp = 1.0 - _entropy_rows(r.T, d) if d > 1 else np.ones(k)
    return float((dis * r.sum(1) / total).sum()), float((comp * r.sum(0) / total).sum())


def dci(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    num_train: int = 10000,
    num_test: int = 5000,
    n_estimators: int = 100,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """DCI with gradient-boosted trees. Returns ``disentanglement``, ``completeness``,
    ``informativeness_test``, ``informativeness_train`` and the (d, K) ``importance`` matrix.

    disentanglement_lib's defaults: 10,000 training and 5,000 test samples, 100 trees per factor.
    Factors with many classes make it slow (one tree per class and boosting round).
    """
    from sklearn.ensemble import GradientBoostingClassifier

    check_ground_truth(dataset)
    for name, v, least in (("num_train", num_train, 2), ("num_test", num_test, 1), ("n_estimators", n_estimators, 1)):
        check_int(name, v, least)
    rng = np.random.default_rng(seed)
    f_train = dataset.sample_factors(num_train, rng)
    c_train = encode_batches(encode, dataset.pixels(f_train), batch_size)
    f_test = dataset.sample_factors(num_test, rng)
    c_test = encode_batches(encode, dataset.pixels(f_test), batch_size)
    d, k = c_train.shape[1], f_train.shape[1]
    importance = np.zeros((d, k))
    acc_train, acc_test = np.zeros(k), np.zeros(k)
    for j in range(k):
        if len(np.unique(f_train[:, j])) < 2:  # one class: nothing to predict, every code is useless
            acc_train[j] = acc_test[j] = float(np.mean(f_test[:, j] == f_train[0, j]))
            continue
        clf = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
        clf.fit(c_train, f_train[:, j])
        importance[:, j] = np.abs(clf.feature_importances_)
        acc_train[j] = float(np.mean(clf.predict(c_train) == f_train[:, j]))
        acc_test[j] = float(np.mean(clf.predict(c_test) == f_test[:, j]))
    dis, comp = dci_from_importance(importance)
    return {
        "disentanglement": dis,
        "completeness": comp,
        "informativeness_test": float(acc_test.mean()),
        "informativeness_train": float(acc_train.mean()),
        "importance": importance,
    }
