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


class LazyPixels:
    """The pixels of ``factors`` (n, K), not rendered yet: what :meth:`SharedEncodings.dataset` hands the
    metrics in place of ``dataset.pixels(factors)``, so that the images are rendered only when an encoder
    needs them (an ensemble's first member), never for a member whose codes are known already. It slices
    as the arrays it stands for; :meth:`render` gives them."""

    def __init__(self, dataset: GroundTruthDataset, factors: np.ndarray):
        self.dataset, self.factors = dataset, factors

    def __len__(self) -> int:
        return len(self.factors)

    def __getitem__(self, index) -> LazyPixels:
        return LazyPixels(self.dataset, self.factors[index])

    def render(self) -> np.ndarray:
        return self.dataset.pixels(self.factors)


def as_float_images(batch: np.ndarray) -> torch.Tensor:
    """Images for an encoder: float32 ones as they are; uint8 pixels (``GroundTruthDataset.pixels``)
    divided by 255 in float32, which gives the same bits as the dataset's ``images`` (IEEE division is
    correctly rounded either way), only converted one batch at a time by torch's threads."""
    if isinstance(batch, LazyPixels):
        return batch  # rendered by the encoder that needs it
    x = torch.from_numpy(batch)
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def encode_batches(encode: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
    """encode() applied batch by batch to images (float32, or uint8 pixels); float64 (n, d)."""
    out = []
    for start in range(0, len(images), batch_size):
        rep = encode(as_float_images(images[start : start + batch_size]))
        out.append(rep.detach().float().cpu().numpy() if torch.is_tensor(rep) else np.asarray(rep, np.float64))
    return np.concatenate(out).astype(np.float64)
