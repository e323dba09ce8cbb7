"""The BetaVAE score (Higgins et al., ICLR 2017), as disentanglement_lib's study computed it.

One point: a factor k drawn uniformly; two sets of ``batch_size`` factor vectors drawn from the
dataset, factor k of the first copied into the second row by row; the feature is the mean over
the pairs of |code(x1) - code(x2)| (a d-vector) and the label is k. A logistic regression
(scikit-learn's defaults) is fitted on ``num_train`` points and scored on ``num_eval`` fresh ones.
A code that holds factor k in its own dimensions gives pairs that agree there, so the classifier
reads k off the smallest coordinates; chance is 1 / K.

The study's constants: batch 64, 10,000 training and 5,000 evaluation points (1.92 million images
encoded: minutes on a GPU, far longer on a CPU; lower ``num_train``/``num_eval`` for quick looks).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int
from ..data.base import GroundTruthDataset
from .common import check_ground_truth, encode_batches


def _points(encode, dataset: GroundTruthDataset, n: int, batch_size: int, rng, chunk_images: int):
    """n (feature, label) points, drawn one after another (so the numbers do not depend on
    ``chunk_images``); the images of several points are encoded together."""
    k_factors = len(dataset.factor_sizes)
    features, labels = [], []
    per_chunk = max(1, chunk_images // batch_size)
    for start in range(0, n, per_chunk):
        firsts, seconds = [], []
        for _ in range(min(per_chunk, n - start)):
            k = int(rng.integers(k_factors))
            f1 = dataset.sample_factors(batch_size, rng)
            f2 = dataset.sample_factors(batch_size, rng)
            f2[:, k] = f1[:, k]
            firsts.append(f1)
            seconds.append(f2)
            labels.append(k)
        c1 = encode_batches(encode, dataset.pixels(np.concatenate(firsts)), chunk_images)
        c2 = encode_batches(encode, dataset.pixels(np.concatenate(seconds)), chunk_images)
        features.append(np.abs(c1 - c2).reshape(len(firsts), batch_size, -1).mean(1))
    return np.concatenate(features), np.array(labels)


def beta_vae_score(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    seed: int = 0,
    chunk_images: int = 4096,
) -> dict:
    """The BetaVAE score. Returns ``train_accuracy``, ``eval_accuracy`` (the score) and the fitted
    classifier's ``coefficients`` (K, d)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    check_ground_truth(dataset)
    for name, v, least in (("batch_size", batch_size, 1), ("num_train", num_train, 2), ("num_eval", num_eval, 1)):
        check_int(name, v, least)
    check_int("chunk_images", chunk_images, 1)
    rng = np.random.default_rng(seed)
    x_train, y_train = _points(encode, dataset, num_train, batch_size, rng, chunk_images)
    x_eval, y_eval = _points(encode, dataset, num_eval, batch_size, rng, chunk_images)
    if len(np.unique(y_train)) < 2:  # one factor, or too few points to draw two: nothing to tell apart
        return {
            "train_accuracy": float(np.mean(y_train == y_train[0])),
            "eval_accuracy": float(np.mean(y_eval == y_train[0])),
            "coefficients": np.zeros((1, x_train.shape[1])),
        }
    clf = LogisticRegression(random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # lbfgs's 100 iterations, as the study ran it
        clf.fit(x_train, y_train)
    return {
        "train_accuracy": float(clf.score(x_train, y_train)),
        "eval_accuracy": float(clf.score(x_eval, y_eval)),
        "coefficients": clf.coef_,
    }
