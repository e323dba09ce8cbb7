"""The interface between datasets, training and the disentanglement metrics.

A dataset hands out images as float32 arrays (n, C, 64, 64) in [0, 1]. A dataset with known
generative factors also implements :class:`GroundTruthDataset`: it can draw factors the way the
dataset draws them, render (or look up) the observations for given factors, and draw batches that
share one factor, which is all the metrics need (the split follows disentanglement_lib).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch

from .._checks import check_int

IMAGE_SIZE = 64


class DataError(ValueError):
    """A dataset file, folder or option is missing or not what it must be."""


def check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1]: pixels / 255, rounded once (the one conversion every set uses)."""
    return np.divide(pixels, np.float32(255), dtype=np.float32)


class ImageDataset(ABC):
    """A finite or procedural set of 64 x 64 images with values in [0, 1].

    Subclasses implement :meth:`random_images`; a materialised set also sets ``num_images`` and
    implements :meth:`images_at`.
    """

    name: str = "dataset"
    channels: int = 1
    num_images: int | None = None  # None: procedural, drawn on demand

    @abstractmethod
    def random_images(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n random images, float32 (n, C, 64, 64) in [0, 1]."""

    def images_at(self, index: np.ndarray) -> np.ndarray:
        """The materialised images at ``index``, float32 (n, C, 64, 64) in [0, 1]."""
        raise TypeError(f"{self.name} is procedural: it has no stored images to index")

    def uint8_array(self) -> np.ndarray | None:
        """All images as uint8 (N, C, 64, 64) when the set is materialised, else None."""
        return None

    def batches(
        self,
        batch_size: int,
        *,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Endless random minibatches, float32 (batch_size, C, 64, 64) on ``device``.

        A materialised set is moved once to ``device`` as uint8 (to GPU memory when it fits, else
        to pinned host memory), and each batch is one random gather plus a conversion there. A
        procedural set renders each batch on the CPU. ``generator`` (a CPU torch.Generator) makes
        the order reproducible.
        """
        batch_size = check_int("batch_size", batch_size, 1)
        device = torch.device(device)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        data = self.uint8_array()
        if data is None:
            while True:
                seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen))
                images = self.random_images(batch_size, np.random.default_rng(seed))
                yield torch.from_numpy(images).to(device, non_blocking=True)
        store = _device_store(data, device)
        n = store.shape[0]
        while True:
            index = torch.randint(0, n, (batch_size,), generator=gen)
            batch = store[index.to(store.device)]
            yield batch.to(device, non_blocking=True).float().div_(255.0)


class StackedBatches:
    """Endless (M, batch_size, C, 64, 64) float batches of a materialised set for M members, member i's
    exactly those ``dataset.batches(batch_size, device=device, generator=generators[i])`` gives, from one
    store on the device shared by every member, gathered by one indexing for all of them.

    Each member's indices are drawn ``chunk`` steps at a time (one draw of chunk * batch_size: the same
    numbers, and the same generator state after them, as chunk draws of batch_size) and copied to the
    device once per chunk, not once per step. The generators run ahead within a chunk: :meth:`settle`
    puts each back to the state per-step draws would have left it in (call it before saving them) and
    makes the next batch start a new chunk from there, so that checkpoints and resumes stay exact.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, generators: list[torch.Generator], *,
                 device: str | torch.device = "cpu", chunk: int = 256, store: torch.Tensor | None = None):
        data = dataset.uint8_array()
        if data is None:
            raise ValueError(f"StackedBatches needs a materialised set (its images as an array), got {dataset.name}")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.chunk = check_int("chunk", chunk, 1)
        self.device = torch.device(device)
        self.store = store if store is not None else _device_store(data, self.device)
        self.generators = list(generators)
        self._index: torch.Tensor | None = None  # (M, chunk, batch_size) on the store's device
        self._starts: list[torch.Tensor] = []
        self._pos = self._len = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._pos == self._len:
            self._draw()
        index = self._index[:, self._pos]
        self._pos += 1
        batch = self.store[index]  # (M, batch_size, C, 64, 64) uint8: one gather for every member
        return batch.to(self.device, non_blocking=True).float().div_(255.0)

    def _draw(self) -> None:
        n, size = self.store.shape[0], self.chunk * self.batch_size
        self._starts = [g.get_state() for g in self.generators]
        drawn = torch.stack([torch.randint(0, n, (size,), generator=g) for g in self.generators])
        drawn = drawn.view(len(self.generators), self.chunk, self.batch_size)
        if self.store.device.type == "cuda":
            drawn = drawn.pin_memory().to(self.store.device, non_blocking=True)  # one copy a chunk, no wait
        self._index, self._pos, self._len = drawn, 0, self.chunk

    def settle(self) -> None:
        """Each generator as per-step draws leave it after the batches given so far; the next batch draws
        a new chunk from there."""
        if self._index is None or self._pos == self._len:
            return
        n = self.store.shape[0]
        for g, start in zip(self.generators, self._starts, strict=True):
            g.set_state(start)
            if self._pos:
                torch.randint(0, n, (self._pos * self.batch_size,), generator=g)
        self._index, self._pos, self._len = None, 0, 0


def _device_store(data: np.ndarray, device: torch.device) -> torch.Tensor:
    host = torch.from_numpy(np.ascontiguousarray(data))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if host.numel() < free // 2:
            return host.to(device)
        return host.pin_memory()
    return host


class GroundTruthDataset(ImageDataset):
    """A dataset whose images are generated from known discrete factors."""

    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()

    @property
    def num_factors(self) -> int:
        return len(self.factor_sizes)

    @abstractmethod
    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n factor vectors as class indices, int64 (n, K), drawn as the dataset draws them."""

    @abstractmethod
    def images(self, factors: np.ndarray) -> np.ndarray:
        """The observations of ``factors`` (n, K) class indices: float32 (n, C, 64, 64) in [0, 1]."""

    def check_factors(self, factors: object) -> np.ndarray:
        f = np.asarray(factors)
        if f.ndim != 2 or f.shape[1] != self.num_factors or not np.issubdtype(f.dtype, np.integer):
            raise ValueError(
                f"factors must be an integer array of shape (n, {self.num_factors}) for {self.name}, "
                f"got dtype {f.dtype} shape {f.shape}"
            )
        sizes = np.asarray(self.factor_sizes)
        if f.size and ((f < 0).any() or (f >= sizes).any()):
            bad = np.argwhere((f < 0) | (f >= sizes))[0]
            raise ValueError(
                f"factor {self.factor_names[bad[1]]!r} must be in [0, {sizes[bad[1]]}), got {f[bad[0], bad[1]]}"
            )
        return f.astype(np.int64, copy=False)

    def pixels(self, factors: np.ndarray) -> np.ndarray:
        """The observations of ``factors`` as the dataset stores them: uint8 (n, C, 64, 64) for 8-bit
        datasets, whose ``images`` are exactly these pixels / 255 in float32; otherwise ``images``.
        Metrics take this path: a quarter of the memory traffic until the encoder converts them."""
        return self.images(factors)

    def sample_fixed_factor_classes(self, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n factor vectors (int64 (n, K)) sharing factor k, the others drawn as the dataset draws them."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.num_factors:
            raise ValueError(f"k must be a factor index in [0, {self.num_factors}) for {self.name}, got {k!r}")
        n = check_int("n", n)
        factors = self.sample_factors(n, check_rng(rng))
        if n:
            factors[:, k] = factors[0, k]
        return factors

    def sample_fixed_factor(self, k: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n observations sharing factor k, the other factors drawn as the dataset draws them.

        Returns (images float32 (n, C, 64, 64), factors int64 (n, K)).
        """
        factors = self.sample_fixed_factor_classes(k, n, rng)
        return self.images(factors), factors

    def random_images(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.images(self.sample_factors(check_int("n", n), check_rng(rng)))


class StoredImages:
    """The image access of a set held in memory as uint8 (N, C, 64, 64) in ``self._images``: mixed into
    :class:`MaterialisedImages` and :class:`chyvae_ext.data.fixed.FixedSample` (listed before their dataset base)."""

    _images: np.ndarray
    num_images: int

    def uint8_array(self) -> np.ndarray:
        return self._images

    def images_at(self, index: np.ndarray) -> np.ndarray:
        return to_unit_float(self._images[np.asarray(index)])

    def random_images(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.images_at(check_rng(rng).integers(0, self.num_images, size=check_int("n", n)))


class MaterialisedImages(StoredImages, ImageDataset):
    """uint8 images (N, C, 64, 64) held in memory, with their factor classes when known."""

    def __init__(self, images: np.ndarray, *, name: str, factors: np.ndarray | None = None):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{name}: images must be uint8 (N, C, 64, 64), got {images.dtype} {images.shape}")
        if images.shape[0] == 0:
            raise DataError(f"{name}: no images")
        self._images = images
        self.name = name
        self.channels = images.shape[1]
        self.num_images = images.shape[0]
        self.factors = factors
