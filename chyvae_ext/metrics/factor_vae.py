"""The disentanglement metric of Kim & Mnih (2018), as CHyVAE's paper uses it (docs/math.md 4).

One vote: pick a factor k uniformly; draw L observations with factor k fixed and the others as
the dataset draws them; encode them (posterior means); divide each latent dimension by its global
empirical standard deviation; the vote is (the dimension of least variance, k). A majority-vote
classifier maps each dimension to the factor it voted for most; the score is its accuracy on
fresh votes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from .._checks import check_int
from ..data.base import GroundTruthDataset
from .common import check_ground_truth, encode_batches


@dataclasses.dataclass(frozen=True)
class Protocol:
    votes_per_sample: int  # L
    train_votes: int
    eval_votes: int
    std_images: int  # images for the global standard deviation
    std_ddof: int
    prune_below: float  # dimensions with a global std below this are inactive (0: only zero-std ones)


PROTOCOLS = {
    # The paper's code: L = 200, 800 + 800 votes, std over 5000 training images (ddof 0), no pruning.
    "chyvae": Protocol(200, 800, 800, 5000, 0, 0.0),
    # disentanglement_lib: L = 64, 10000 + 5000 votes, variance over 10000 images, prune std < 0.05.
    "kim_mnih": Protocol(64, 10000, 5000, 10000, 0, 0.05),
}


def _votes(
    encode,
    dataset: GroundTruthDataset,
    n_votes: int,
    p: Protocol,
    scale: np.ndarray,
    active: np.ndarray,
    rng: np.random.Generator,
    batch_size: int,
) -> np.ndarray:
    """(n_votes, 2) int: (dimension of least normalised variance, factor); dimension -1 when none is active."""
    votes = np.empty((n_votes, 2), dtype=np.int64)
    per_pass = max(1, batch_size // p.votes_per_sample)  # several votes per encoder pass
    for start in range(0, n_votes, per_pass):
        ks = rng.integers(0, dataset.num_factors, min(per_pass, n_votes - start))
        # One render for the whole pass; the same draws, in the same order, as one
        # sample_fixed_factor per vote.
        factors = np.concatenate([dataset.sample_fixed_factor_classes(int(k), p.votes_per_sample, rng) for k in ks])
        reps = encode_batches(encode, dataset.pixels(factors), batch_size).reshape(len(ks), p.votes_per_sample, -1)
        var = np.var(reps / scale, axis=1, ddof=1)
        var[:, ~active] = np.inf
        dims = np.where(active.any(), np.argmin(var, axis=1), -1)
        votes[start : start + len(ks)] = np.stack([dims, ks], axis=1)
    return votes


def factor_vae_score(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: GroundTruthDataset,
    *,
    protocol: str = "chyvae",
    seed: int = 0,
    batch_size: int = 1000,
    **overrides,
) -> dict:
    """Kim & Mnih's disentanglement score under ``protocol`` ("chyvae" or "kim_mnih").

    ``encode`` maps float images (n, C, 64, 64) to posterior means (n, d). Any protocol constant
    can be overridden by name (votes_per_sample, train_votes, eval_votes, std_images, std_ddof,
    prune_below). Returns eval_accuracy, train_accuracy, the (d, K) vote matrix, the active
    dimensions and the protocol used. The same encoder, data and seed give the same score.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    check_ground_truth(dataset)
    fields = {f.name for f in dataclasses.fields(Protocol)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {', '.join(unknown)}; settings: {', '.join(sorted(fields))}")
    p = dataclasses.replace(PROTOCOLS[protocol], **overrides)
    for name in ("votes_per_sample", "train_votes", "eval_votes", "std_images"):
        check_int(name, getattr(p, name), 2 if name in ("votes_per_sample", "std_images") else 1)
    check_int("batch_size", batch_size, 1)
    rng = np.random.default_rng(seed)
    reps = encode_batches(encode, dataset.pixels(dataset.sample_factors(p.std_images, rng)), batch_size)
    std = np.std(reps, axis=0, ddof=p.std_ddof)
    active = (std > 0) & (std >= p.prune_below)
    scale = np.where(active, std, 1.0)  # inactive dimensions are never the argmin: no 0/0
    d, n_factors = reps.shape[1], dataset.num_factors
    result = {"active_dims": np.flatnonzero(active), "protocol": dataclasses.asdict(p) | {"name": protocol}}
    if not active.any():  # every vote would name no dimension: nothing to encode, both accuracies are 0
        return {"eval_accuracy": 0.0, "train_accuracy": 0.0, "votes": np.zeros((d, n_factors), np.int64)} | result
    train = _votes(encode, dataset, p.train_votes, p, scale, active, rng, batch_size)
    counts = np.zeros((d, n_factors), dtype=np.int64)
    ok = train[:, 0] >= 0
    np.add.at(counts, (train[ok, 0], train[ok, 1]), 1)
    classifier = np.argmax(counts, axis=1)
    train_acc = counts.max(axis=1).sum() / p.train_votes
    test = _votes(encode, dataset, p.eval_votes, p, scale, active, rng, batch_size)
    hits = (test[:, 0] >= 0) & (classifier[np.maximum(test[:, 0], 0)] == test[:, 1])
    return {"eval_accuracy": float(hits.mean()), "train_accuracy": float(train_acc), "votes": counts} | result
