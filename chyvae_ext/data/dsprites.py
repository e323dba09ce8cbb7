"""dSprites (Matthey et al. 2017) from a user's copy of the official file, and the factor handling
it shares with the offline look-alike :mod:`chyvae_ext.data.shapes2d`.

The official npz, ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``, has keys ``imgs`` (737280 x
64 x 64 uint8), ``latents_values``, ``latents_classes`` and a pickled ``metadata``. Images are
indexed by ``classes . [737280, 245760, 40960, 1024, 32, 1]``. The ground-truth factors exposed
are those that vary: shape, scale, orientation, posX, posY (color has one value), or the four
continuous ones with ``include_shape=False``, shape then varying at random as in the metric code.
"""

from __future__ import annotations

import os
from abc import abstractmethod

import numpy as np

from .._checks import check_int
from .base import IMAGE_SIZE, DataError, GroundTruthDataset, check_rng, to_unit_float
from .files import check_file, open_npz, read_npz_key

ALL_FACTOR_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
ALL_FACTOR_SIZES = (1, 3, 6, 40, 32, 32)
INDEX_BASES = np.array([737280, 245760, 40960, 1024, 32, 1], dtype=np.int64)
NUM_IMAGES = 737280
SOURCE = "https://github.com/deepmind/dsprites-dataset (dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz)"


def classes_to_index(classes: np.ndarray) -> np.ndarray:
    """Row index into ``imgs`` of full (n, 6) class vectors."""
    return np.asarray(classes, dtype=np.int64) @ INDEX_BASES


def index_to_classes(index: np.ndarray) -> np.ndarray:
    """Full (n, 6) class vectors of row indices."""
    index = np.asarray(index, dtype=np.int64)
    return (index[:, None] // INDEX_BASES[None, :]) % np.array(ALL_FACTOR_SIZES)[None, :]


class DSpritesLike(GroundTruthDataset):
    """dSprites' factors: uniform over the grid; color dropped, shape optional."""

    channels = 1

    def __init__(self, *, include_shape: bool = True, hidden_seed: int = 0):
        if not isinstance(include_shape, bool):
            raise TypeError(f"include_shape must be a bool, got {type(include_shape).__name__}")
        self.include_shape = include_shape
        first = 1 if include_shape else 2
        self.factor_names = ALL_FACTOR_NAMES[first:]
        self.factor_sizes = ALL_FACTOR_SIZES[first:]
        # Draws the factors that are not exposed (shape when include_shape=False) in images().
        self._hidden = np.random.default_rng(hidden_seed)

    def full_classes(self, factors: np.ndarray) -> np.ndarray:
        """(n, 6) class vectors for exposed factors (n, K); hidden factors drawn at random."""
        f = self.check_factors(factors)
        n = len(f)
        hidden = [np.zeros(n, np.int64)]
        if not self.include_shape:
            hidden.append(self._hidden.integers(0, 3, n))
        return np.concatenate([np.stack(hidden, axis=1), f], axis=1)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        rng = check_rng(rng)
        n = check_int("n", n)
        return np.stack([rng.integers(0, k, n) for k in self.factor_sizes], axis=1).astype(np.int64)

    def pixels(self, factors: np.ndarray) -> np.ndarray:
        return self.render_full(self.full_classes(factors))[:, None]

    def images(self, factors: np.ndarray) -> np.ndarray:
        return to_unit_float(self.pixels(factors))

    @abstractmethod
    def render_full(self, classes: np.ndarray) -> np.ndarray:
        """uint8 (n, 64, 64) images for full (n, 6) class vectors."""


class DSprites(DSpritesLike):
    """The official dSprites, read from ``path`` (npz, or its HDF5 twin with ``imgs`` and
    ``latents/classes``). Images are loaded once, decompressed, and kept in memory (2.9 GB)."""

    name = "dsprites"

    def __init__(self, path: str | os.PathLike, *, include_shape: bool = True, hidden_seed: int = 0):
        super().__init__(include_shape=include_shape, hidden_seed=hidden_seed)
        p = check_file(path, dataset="dsprites", source=SOURCE)
        if p.suffix.lower() in (".h5", ".hdf5"):
            imgs, classes = _read_hdf5(p)
        else:
            imgs, classes = _read_npz(p)
        _validate(imgs, classes, p)
        self.path = p
        self._imgs = imgs * np.uint8(255) if imgs.max(initial=0) <= 1 else imgs  # official: 0/1
        self.num_images = NUM_IMAGES

    def render_full(self, classes: np.ndarray) -> np.ndarray:
        return self._imgs[classes_to_index(classes)]

    def uint8_array(self) -> np.ndarray:
        return self._imgs[:, None]

    def images_at(self, index: np.ndarray) -> np.ndarray:
        return to_unit_float(self._imgs[np.asarray(index)])[:, None]


def _read_npz(p) -> tuple[np.ndarray, np.ndarray]:
    """imgs and latents_classes, checked from their headers before they are loaded; without pickle
    (the official file's pickled ``metadata`` is never read)."""
    with open_npz(p, dataset="dsprites") as npz:
        for key in ("imgs", "latents_classes", "latents_values", "metadata"):
            if key not in npz.files:
                raise DataError(
                    f"dsprites: {p} has no key {key!r} (keys: {sorted(npz.files)}); "
                    f"expected the official file from {SOURCE}"
                )
        imgs = read_npz_key(npz, "imgs", path=p, dataset="dsprites", check=lambda s, d: _check_imgs(s, d, p))
        classes = read_npz_key(npz, "latents_classes", path=p, dataset="dsprites",
                               check=lambda s, d: _check_classes(s, d, p))
    return imgs, classes


def _check_imgs(shape: tuple, dtype: np.dtype, p) -> None:
    if dtype != np.uint8 or shape != (NUM_IMAGES, IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"dsprites: {p}: imgs must be uint8 ({NUM_IMAGES}, 64, 64), got {dtype} {shape}")


def _check_classes(shape: tuple, dtype: np.dtype, p) -> None:
    if shape != (NUM_IMAGES, 6) or not np.issubdtype(dtype, np.integer):
        raise DataError(f"dsprites: {p}: latents_classes must be integer ({NUM_IMAGES}, 6), got {dtype} {shape}")


def _read_hdf5(p) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            for key in ("imgs", "latents/classes"):
                if key not in f:
                    raise DataError(
                        f"dsprites: {p} has no HDF5 dataset {key!r}; expected the official HDF5 from {SOURCE}"
                    )
            return f["imgs"][()], f["latents/classes"][()]
    except OSError as exc:
        raise DataError(f"dsprites: cannot read {p} as an HDF5 file (unreadable or truncated): {exc}") from exc


def _validate(imgs: np.ndarray, classes: np.ndarray, p) -> None:
    _check_imgs(imgs.shape, imgs.dtype, p)
    _check_classes(classes.shape, classes.dtype, p)
    sizes = tuple(int(s) for s in classes.max(axis=0) + 1)
    if sizes != ALL_FACTOR_SIZES:
        raise DataError(f"dsprites: {p}: factor sizes must be {ALL_FACTOR_SIZES}, got {sizes}")
    if not np.array_equal(classes_to_index(classes), np.arange(NUM_IMAGES)):
        raise DataError(
            f"dsprites: {p}: images are not in the official order (index = classes . {INDEX_BASES.tolist()})"
        )
