"""disentanglement_lib's unsupervised scores: how far the codes are from independent, without the
factors (they are used only to draw the images).

On ``num_train`` codes with covariance C (ddof = 1):
- Gaussian total correlation: 0.5 (sum_i log C_ii - log det C), the TC of a Gaussian with C; 0 for
  independent dimensions.
- Gaussian Wasserstein correlation: 2 tr C - 2 tr sqrtm(A), A_ij = C_ij C_ii: the squared
  2-Wasserstein distance between N(0, C) and N(0, diag C), as the library computes it; also divided
  by tr C. tr sqrtm(A) is the sum of the square roots of the eigenvalues of D^1/2 C D^1/2
  (D = diag C), which A is similar to.
- Mutual-information score: the mean of the off-diagonal entries of the (d, d) mutual information
  between the codes discretised into ``num_bins`` equal-width bins.

Dimensions with variance <= 1e-12 (constant codes) are independent of the rest and are left out of
the Gaussian scores (whose log C_ii would be -inf); in the MI matrix they hold 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int
from ..data.base import GroundTruthDataset
from .information import _discretise, _mutual_information, _sample


def gaussian_scores(cov: np.ndarray) -> dict:
    """The Gaussian total and Wasserstein correlations of a covariance matrix (constant dimensions
    left out)."""
    c = np.asarray(cov, dtype=np.float64)
    active = np.diag(c) > 1e-12
    c = c[np.ix_(active, active)]
    if len(c) == 0:
        return {"gaussian_total_correlation": 0.0, "gaussian_wasserstein_correlation": 0.0,
                "gaussian_wasserstein_correlation_norm": 0.0}
    var = np.diag(c)
    tc = 0.5 * (np.log(var).sum() - np.linalg.slogdet(c)[1])
    root = np.sqrt(var)
    eig = np.linalg.eigvalsh(root[:, None] * c * root[None, :])
    w = 2.0 * var.sum() - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum()
    return {"gaussian_total_correlation": float(tc), "gaussian_wasserstein_correlation": float(w),
            "gaussian_wasserstein_correlation_norm": float(w / var.sum())}


def unsupervised_scores(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    num_train: int = 10000,
    num_bins: int = 20,
    seed: int = 0,
    batch_size: int = 1000,
) -> dict:
    """Returns ``gaussian_total_correlation``, ``gaussian_wasserstein_correlation`` (and ``_norm``),
    ``mutual_info_score``, the codes' ``covariance`` and their (d, d) ``mutual_information``."""
    check_int("num_bins", num_bins, 2)
    codes, _ = _sample(encode, dataset, num_train, np.random.default_rng(seed), batch_size)
    d = codes.shape[1]
    cov = np.atleast_2d(np.cov(codes, rowvar=False, ddof=1))
    binned = _discretise(codes, num_bins)
    mi = np.zeros((d, d))
    for i in range(d):
        for j in range(i + 1, d):
            mi[i, j] = mi[j, i] = _mutual_information(binned[:, i], binned[:, j])
    mi_score = float(mi.sum() / (d * d - d)) if d > 1 else 0.0
    return gaussian_scores(cov) | {"mutual_info_score": mi_score, "covariance": cov, "mutual_information": mi}
