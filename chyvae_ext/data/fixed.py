"""A fixed set of N images drawn once from a procedural dataset, cached on disk (``--dataset-size``).

The paper trains on a fixed set of 200,000 CorrelatedEllipses images rather than an endless stream.
:func:`fixed_sample` draws N factor vectors from ``seed`` with the dataset's own ``sample_factors``,
renders them once, and caches the uint8 images and their factors as one npz under the cache
directory (``$CHYVAE_EXT_CACHE``, else ``~/.cache/chyvae_ext``), so every run asking for the same
set reads the same images. Training batches come from the fixed set; the metrics and the held-out
images still come from the generator (``generator``), as the paper's metric code draws them.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .._checks import check_int
from .base import GroundTruthDataset, MaterialisedImages, StoredImages
from .files import default_cache_dir

CHUNK = 10_000  # images rendered per call while drawing a set (bounded float memory)


class FixedSample(StoredImages, GroundTruthDataset):
    """``size`` images of ``generator`` drawn once from ``seed``: batches from them, metrics from ``generator``."""

    def __init__(self, generator: GroundTruthDataset, images: np.ndarray, factors: np.ndarray, *, seed: int):
        self.generator = generator
        self.seed = seed
        self.name = f"{generator.name}[{len(images)} fixed, seed {seed}]"
        self.channels = generator.channels
        self.factor_names = generator.factor_names
        self.factor_sizes = generator.factor_sizes
        self.num_images = len(images)
        self.factors = factors
        self._images = images  # what training draws (StoredImages)

    # The generator: what the metrics draw.
    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.generator.sample_factors(n, rng)

    def pixels(self, factors: np.ndarray) -> np.ndarray:
        return self.generator.pixels(factors)

    def images(self, factors: np.ndarray) -> np.ndarray:
        return self.generator.images(factors)

    def sample_fixed_factor_classes(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.generator.sample_fixed_factor_classes(k, n, rng)


def cache_path(generator: GroundTruthDataset, size: int, seed: int, cache_dir: str | os.PathLike | None) -> Path:
    """Where the set is cached: keyed by the dataset's name, its factors, the size and the seed."""
    key = f"{generator.name}|{','.join(generator.factor_names)}|{size}|{seed}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{generator.name}-{size}-seed{seed}-{digest}.npz"


def draw(generator: GroundTruthDataset, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (size, C, 64, 64), int64 factors (size, K)): ``size`` draws from ``seed``."""
    factors = generator.sample_factors(size, np.random.default_rng(seed))
    images = np.empty((size, generator.channels, 64, 64), dtype=np.uint8)
    for start in range(0, size, CHUNK):
        pixels = generator.pixels(factors[start : start + CHUNK])
        if pixels.dtype != np.uint8:
            raise TypeError(f"{generator.name}: a fixed set needs 8-bit images, its pixels are {pixels.dtype}")
        images[start : start + CHUNK] = pixels
    return images, factors


def fixed_sample(
    dataset, size: int, *, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> FixedSample:
    """A fixed set of ``size`` images of the procedural ``dataset``, drawn from ``seed`` (cached on disk).

    Refuses a dataset that is already a stored set, or has no ground-truth factors to draw from.
    """
    size = check_int("dataset_size", size, 1)
    seed = check_int("seed", seed)
    if not isinstance(dataset, GroundTruthDataset) or isinstance(dataset, MaterialisedImages):
        raise TypeError(
            f"dataset_size needs a procedural dataset with ground-truth factors, got {dataset.name} "
            f"({type(dataset).__name__})"
        )
    if dataset.num_images is not None:
        raise TypeError(
            f"dataset_size needs a procedural dataset, but {dataset.name} is a stored set of "
            f"{dataset.num_images} images"
        )
    path = cache_path(dataset, size, seed, cache_dir)
    if path.is_file():
        try:
            with np.load(path) as npz:
                images, factors = npz["images"], npz["factors"]
            if images.shape[0] == size and factors.shape == (size, dataset.num_factors):
                return FixedSample(dataset, images, factors, seed=seed)
            problem = f"holds {images.shape[0]} images and factors of shape {factors.shape}"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            problem = f"cannot be read ({exc})"
        warnings.warn(f"cached set {path} {problem}: drawing it again", stacklevel=2)
    images, factors = draw(dataset, size, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, factors=factors)
    os.replace(tmp, path)
    return FixedSample(dataset, images, factors, seed=seed)
