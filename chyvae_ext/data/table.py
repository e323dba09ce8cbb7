"""Pixels as a table (issue 30, item 1): every image of a ground-truth set whose factor space is small
enough, rendered once into one uint8 tensor and looked up by factor class.

CorrelatedEllipses has 32 x 32 x 6 x 40 = 245,760 factor classes (0.94 GiB of uint8 images), shapes2d
and dSprites 737,280 (2.8 GiB). Rendered once, on the device that trains or scores, a batch is one gather
instead of a render on the host: the images are the set's own ``pixels()``, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from .._memory import device_memory
from .base import GroundTruthDataset, to_unit_float

IMAGE_BYTES = 64 * 64  # a uint8 channel


class PixelTable(GroundTruthDataset):
    """``dataset``'s every image in one uint8 tensor ``table`` (classes, C, 64, 64) on ``device``, row
    ``np.ravel_multi_index(factors.T, factor_sizes)``; the factors, their draws and everything else are the
    dataset's own. ``max_bytes`` (default: half the device's memory) refuses a table too large, naming its
    size. ``progress`` receives a line before and after the rendering."""

    def __init__(self, dataset: GroundTruthDataset, device: str | torch.device = "cpu", *, chunk: int = 16384,
                 max_bytes: int | None = None, progress=None):
        if not isinstance(dataset, GroundTruthDataset):
            raise TypeError(f"a pixel table needs a dataset with ground-truth factors, got {type(dataset).__name__}")
        if getattr(dataset, "include_shape", True) is False:
            raise ValueError(f"{dataset.name} without its shape factor draws the shape at random for every image: "
                             "its images are not a function of its factors, so no table holds them")
        self.inner = dataset
        self.name, self.channels = f"{dataset.name}[table]", dataset.channels
        self.factor_names, self.factor_sizes = dataset.factor_names, tuple(dataset.factor_sizes)
        self.device = torch.device(device)
        classes = int(np.prod(self.factor_sizes))
        size = classes * self.channels * IMAGE_BYTES
        limit = max_bytes if max_bytes is not None else (device_memory(str(self.device)) or 2 * size) // 2
        if size > limit:
            raise ValueError(f"a pixel table of {dataset.name} holds {classes:,} images, {size / 2**30:.2f} GiB, more "
                             f"than the {limit / 2**30:.2f} GiB allowed on {self.device}")
        chunk = check_int("chunk", chunk, 1)
        if progress is not None:
            progress(f"rendering {dataset.name}'s {classes:,} images into a table on {self.device} "
                     f"({size / 2**30:.2f} GiB)...")
        self.table = torch.empty((classes, self.channels, 64, 64), dtype=torch.uint8, device=self.device)
        for start in range(0, classes, chunk):
            rows = np.arange(start, min(classes, start + chunk))
            factors = np.stack(np.unravel_index(rows, self.factor_sizes), axis=1).astype(np.int64)
            self.table[start : start + len(rows)] = torch.from_numpy(self._render(factors)).to(self.device)
        if progress is not None:
            progress(f"the table of {dataset.name} is ready")

    def _render(self, factors: np.ndarray) -> np.ndarray:
        pixels = self.inner.pixels(factors)
        if pixels.dtype != np.uint8:
            raise TypeError(f"a pixel table needs 8-bit images; {self.inner.name}'s pixels are {pixels.dtype}")
        return pixels

    def rows(self, factors: np.ndarray) -> np.ndarray:
        """The table's rows of ``factors`` (n, K) class indices."""
        f = self.check_factors(factors)
        return np.ravel_multi_index(tuple(f.T), self.factor_sizes)

    def pixels_on_device(self, factors: np.ndarray) -> torch.Tensor:
        """The images of ``factors`` as uint8 (n, C, 64, 64) on the table's device: one gather."""
        rows = torch.from_numpy(self.rows(factors)).to(self.device, non_blocking=True)
        return self.table[rows]

    def pixels(self, factors: np.ndarray) -> np.ndarray:
        return self.pixels_on_device(factors).cpu().numpy()

    def images(self, factors: np.ndarray) -> np.ndarray:
        return to_unit_float(self.pixels(factors))

    def random_images(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.images(self.sample_factors(n, rng))

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.inner.sample_factors(n, rng)

    def sample_fixed_factor_classes(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.inner.sample_fixed_factor_classes(k, n, rng)
