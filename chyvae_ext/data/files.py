"""Reading image sets from npz files, HDF5 files and folders, with errors that say what is wrong.

Everything returns uint8 arrays (N, C, 64, 64). Folders are decoded, preprocessed and cached as
uint8 npy under the cache directory on the first pass.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np

from .._cache import default_cache_dir
from .base import IMAGE_SIZE, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def check_file(path: str | os.PathLike, *, dataset: str, source: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{dataset}: no file at {p}. Obtain it from {source} and pass its path.")
    if not p.is_file():
        raise DataError(f"{dataset}: {p} is not a file")
    return p


def to_nchw_uint8(array: np.ndarray, *, where: str) -> np.ndarray:
    """(N, 64, 64), (N, 64, 64, C) or (N, C, 64, 64) with C in {1, 3}, uint8 or float in [0, 1]."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    elif not (a.ndim == 4 and a.shape[2:] == (IMAGE_SIZE, IMAGE_SIZE) and a.shape[1] in (1, 3)):
        raise DataError(
            f"{where}: expected images of shape (N, 64, 64), (N, 64, 64, C) or (N, C, 64, 64) with C in (1, 3), "
            f"got {a.shape}"
        )
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        return np.ascontiguousarray(a.astype(np.uint8) * 255)
    if np.issubdtype(a.dtype, np.floating):
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise DataError(f"{where}: float images must lie in [0, 1], got range [{np.nanmin(a)}, {np.nanmax(a)}]")
        return np.ascontiguousarray(np.rint(a * 255).astype(np.uint8))
    raise DataError(f"{where}: expected uint8, bool or float images, got dtype {a.dtype}")


def open_npz(path: Path, *, dataset: str):
    """The npz at ``path``, opened without pickle: an object array in it is refused when read
    (:func:`read_npz_key`), never unpickled (a pickle can run any code)."""
    try:
        return np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{dataset}: cannot read {path} as an npz file (unreadable or truncated): {exc}") from exc


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, None where it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def npz_header(npz, key: str, *, path: Path, dataset: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype the member ``key`` of an npz declares in its .npy header, read without
    loading (or unpickling) the array."""
    try:
        with npz.zip.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (KeyError, zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"{dataset}: cannot read the header of key {key!r} of {path} (truncated or corrupt): {exc}"
        ) from exc
    return tuple(shape), dtype


def read_npz_key(npz, key: str, *, path: Path, dataset: str, check=None) -> np.ndarray:
    """The array under ``key``, after its header is checked: an object array (pickled Python objects)
    is refused, and so is an array larger than this machine's memory; ``check(shape, dtype)`` may
    refuse more from the header (it raises DataError) before anything is loaded."""
    if key not in npz.files:
        raise DataError(f"{dataset}: {path} has no key {key!r}; its keys are {sorted(npz.files)}")
    shape, dtype = npz_header(npz, key, path=path, dataset=dataset)
    if dtype.hasobject:
        raise DataError(f"{dataset}: key {key!r} of {path} holds Python objects (dtype {dtype}); refused: "
                        "reading it would unpickle them, and a pickle can run code")
    if check is not None:
        check(shape, dtype)
    size = int(np.prod(shape, dtype=np.float64) * dtype.itemsize)
    memory = physical_memory_bytes()
    if memory is not None and size > memory:
        raise DataError(f"{dataset}: key {key!r} of {path} declares shape {shape} of {dtype} ({size / 2**30:.1f} GiB), "
                        f"more than this machine's memory ({memory / 2**30:.1f} GiB); refused before loading")
    try:
        return npz[key]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{dataset}: cannot read key {key!r} of {path} (truncated or corrupt): {exc}") from exc


def load_npz_images(
    path: str | os.PathLike, *, key: str, dataset: str = "npz", source: str = "its publisher"
) -> np.ndarray:
    """uint8 (N, C, 64, 64) images stored under ``key`` of an npz file."""
    p = check_file(path, dataset=dataset, source=source)
    with open_npz(p, dataset=dataset) as npz:
        return to_nchw_uint8(read_npz_key(npz, key, path=p, dataset=dataset), where=f"{dataset}: {p}[{key!r}]")


def load_hdf5_images(
    path: str | os.PathLike, *, key: str, dataset: str = "hdf5", source: str = "its publisher"
) -> np.ndarray:
    """uint8 (N, C, 64, 64) images stored in dataset ``key`` of an HDF5 file."""
    import h5py

    p = check_file(path, dataset=dataset, source=source)
    try:
        with h5py.File(p, "r") as f:
            if key not in f:
                raise DataError(f"{dataset}: {p} has no HDF5 dataset {key!r}; it has {sorted(f.keys())}")
            data = f[key][()]
    except OSError as exc:
        raise DataError(f"{dataset}: cannot read {p} as an HDF5 file (unreadable or truncated): {exc}") from exc
    return to_nchw_uint8(data, where=f"{dataset}: {p}[{key!r}]")


def preprocess(image: np.ndarray, *, color: str, crop: str) -> np.ndarray:
    """A decoded BGR/gray image to (C, 64, 64) uint8: centre square crop ('centre') or a squash ('none')."""
    if crop == "centre":
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    if color == "gray":
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image[None]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)


def list_images(root: Path, *, dataset: str) -> list[Path]:
    if not root.exists():
        raise DataError(f"{dataset}: no folder at {root}")
    if not root.is_dir():
        raise DataError(f"{dataset}: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{dataset}: {root} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def load_folder_images(
    root: str | os.PathLike,
    *,
    color: str = "rgb",
    crop: str = "centre",
    dataset: str = "folder",
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """All images under ``root`` (recursively, sorted by path), preprocessed to uint8 (N, C, 64, 64).

    The result is cached as an npy file under ``cache_dir`` (default :func:`default_cache_dir`),
    keyed by the file list, sizes, modification times and options; nothing else is written.
    """
    if color not in ("rgb", "gray"):
        raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
    if crop not in ("centre", "none"):
        raise ValueError(f"crop must be 'centre' or 'none', got {crop!r}")
    root = Path(root)
    files = list_images(root, dataset=dataset)
    digest = hashlib.sha256(f"{color}|{crop}".encode())
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / f"{dataset}-{digest.hexdigest()[:20]}.npy"
    if cached.exists():
        return np.load(cached, mmap_mode="r")
    flag = cv2.IMREAD_GRAYSCALE if color == "gray" else cv2.IMREAD_COLOR
    out = np.empty((len(files), 1 if color == "gray" else 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, f in enumerate(files):
        image = cv2.imread(str(f), flag)
        if image is None:
            raise DataError(f"{dataset}: cannot decode {f} as an image")
        out[i] = preprocess(image, color=color, crop=crop)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, cached)
    return out
