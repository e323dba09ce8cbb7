"""What every metric here shares: the dataset check and batched encoding."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.base import GroundTruthDataset


def check_ground_truth(dataset: object) -> GroundTruthDataset:
    if not isinstance(dataset, GroundTruthDataset):
        raise TypeError(f"dataset must have ground-truth factors (a GroundTruthDataset), got {type(dataset).__name__}")
    return dataset


def encode_batches(encode: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
    """encode() applied batch by batch to float images; float64 (n, d)."""
    out = []
    for start in range(0, len(images), batch_size):
        rep = encode(torch.from_numpy(images[start : start + batch_size]))
        out.append(rep.detach().float().cpu().numpy() if torch.is_tensor(rep) else np.asarray(rep, np.float64))
    return np.concatenate(out).astype(np.float64)
