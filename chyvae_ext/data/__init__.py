"""Datasets: dSprites, the offline shapes2d, CorrelatedEllipses, 3DFaces, 3DChairs, CelebA and
generic image folders / npz / HDF5 files, all as 64 x 64 images in [0, 1] (docs/math.md 3).

``get_dataset(name, root=None, **options)`` is the one entry point; ``python -m chyvae_ext.data
preview NAME --out grid.png`` draws samples.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from .base import DataError, GroundTruthDataset, ImageDataset, MaterialisedImages
from .correlated_ellipses import CorrelatedEllipses, load_published
from .dsprites import DSprites
from .files import load_folder_images, load_hdf5_images, load_npz_images
from .shapes2d import Shapes2D
from .table import PixelTable

__all__ = [
    "DATASETS",
    "DataError",
    "DSprites",
    "CorrelatedEllipses",
    "GroundTruthDataset",
    "ImageDataset",
    "MaterialisedImages",
    "PixelTable",
    "Shapes2D",
    "get_dataset",
]


def _images_from(root, *, dataset: str, color: str, crop: str, key: str | None, cache_dir, source: str):
    """Images from a folder, an npz (``key``, default 'images') or an HDF5 file (``key``)."""
    if root is None:
        raise DataError(f"{dataset}: root is required: a folder of images, an .npz or an .h5/.hdf5 file ({source})")
    p = Path(root)
    if p.is_dir() or not p.exists() and not p.suffix:
        return load_folder_images(p, color=color, crop=crop, dataset=dataset, cache_dir=cache_dir)
    if p.suffix.lower() == ".npz":
        return load_npz_images(p, key=key or "images", dataset=dataset, source=source)
    if p.suffix.lower() in (".h5", ".hdf5"):
        return load_hdf5_images(p, key=key or "images", dataset=dataset, source=source)
    raise DataError(f"{dataset}: root must be a folder, an .npz or an .h5/.hdf5 file, got {p}")


def _image_set(dataset: str, color: str, crop: str, source: str):
    def make(root=None, *, key: str | None = None, cache_dir: str | os.PathLike | None = None) -> MaterialisedImages:
        images = _images_from(
            root, dataset=dataset, color=color, crop=crop, key=key, cache_dir=cache_dir, source=source
        )
        want = 1 if color == "gray" else 3
        if images.shape[1] != want:
            raise DataError(f"{dataset}: expected {want}-channel images, got {images.shape[1]} channels from {root}")
        return MaterialisedImages(images, name=f"{dataset}[{os.fspath(root)}]")

    make.__doc__ = f"{dataset}: {color}, {'centre-cropped then resized' if crop == 'centre' else 'resized'} to 64 x 64."
    return make


def _generic(dataset: str):
    def make(
        root=None,
        *,
        color: str = "rgb",
        crop: str = "centre",
        key: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> MaterialisedImages:
        images = _images_from(
            root, dataset=dataset, color=color, crop=crop, key=key, cache_dir=cache_dir, source="your own data"
        )
        return MaterialisedImages(images, name=f"{dataset}[{os.fspath(root)}]")

    return make


def _dsprites(root=None, *, include_shape: bool = True) -> DSprites:
    if root is None:
        raise DataError(
            "dsprites: root is required: the path of dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz "
            "(download it from https://github.com/deepmind/dsprites-dataset); "
            "'shapes2d' is an offline look-alike"
        )
    p = Path(root)
    if p.is_dir():
        p = p / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    return DSprites(p, include_shape=include_shape)


def _shapes2d(root=None, *, include_shape: bool = True) -> Shapes2D:
    if root is not None:
        raise DataError("shapes2d is procedural: it takes no root")
    return Shapes2D(include_shape=include_shape)


def _correlated_ellipses(root=None, *, size: int | None = None, seed: int = 0):
    if root is not None:
        return load_published(root)
    ds = CorrelatedEllipses()
    return ds if size is None else ds.materialise(size, seed=seed)


DATASETS = {
    "dsprites": _dsprites,
    "shapes2d": _shapes2d,
    "correlated_ellipses": _correlated_ellipses,
    "3dfaces": _image_set("3dfaces", "gray", "centre", "the Basel face model renders of Paysan et al. 2009"),
    "3dchairs": _image_set("3dchairs", "rgb", "none", "the 3D chairs of Aubry et al. 2014"),
    "celeba": _image_set("celeba", "rgb", "centre", "CelebA, mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    "folder": _generic("folder"),
    "npz": _generic("npz"),
    "hdf5": _generic("hdf5"),
}


def get_dataset(name: str, root: str | os.PathLike | None = None, **options) -> ImageDataset:
    """The dataset called ``name``, read from ``root`` where it needs files.

    Names: dsprites (root: the official npz/HDF5 or its folder; include_shape), shapes2d
    (include_shape), correlated_ellipses (procedural, or ``size``/``seed`` for a materialised set,
    or root: the published npz), 3dfaces, 3dchairs, celeba (root: a folder, npz or HDF5; key,
    cache_dir), folder/npz/hdf5 (root; color 'rgb'|'gray', crop 'centre'|'none', key, cache_dir).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    factory = DATASETS[name]
    accepted = [p for p in inspect.signature(factory).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(accepted) or 'none'}")
    return factory(root, **options)
