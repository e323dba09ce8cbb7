"""``python -m chyvae_ext.data preview NAME [--root PATH] --out grid.png``: look at a dataset.

Writes a grid of random samples to --out and, for datasets with ground-truth factors, a second
grid next to it (``<out>_factors.png``) where each row varies one factor over its whole range
with the other factors held at one random draw.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .._checks import ArgumentParser
from . import DATASETS, DataError, GroundTruthDataset, get_dataset


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """float images (n, C, 64, 64) in [0, 1] to one uint8 HxWx3 RGB grid."""
    n, c, h, w = images.shape
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 128, dtype=np.uint8)
    for i in range(min(n, rows * cols)):
        r, k = divmod(i, cols)
        img = np.rint(images[i] * 255).astype(np.uint8).transpose(1, 2, 0)
        if c == 1:
            img = np.repeat(img, 3, axis=2)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = img
    return grid


def factor_grid(ds: GroundTruthDataset, rng: np.random.Generator, cols: int = 10) -> np.ndarray:
    """One row per factor: that factor at ``cols`` evenly spaced classes, the rest fixed."""
    base = ds.sample_factors(1, rng)[0]
    rows = []
    for k, size in enumerate(ds.factor_sizes):
        f = np.repeat(base[None], cols, axis=0)
        f[:, k] = np.rint(np.linspace(0, size - 1, cols)).astype(np.int64)
        rows.append(ds.images(f))
    return tile(np.concatenate(rows), len(rows), cols)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="python -m chyvae_ext.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    preview = sub.add_parser("preview", help="write a grid of samples (and of factor traversals) as PNG")
    preview.add_argument("name", choices=sorted(DATASETS))
    preview.add_argument("--root", help="file or folder the dataset is read from")
    preview.add_argument("--out", required=True, type=Path, help="PNG to write")
    preview.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    preview.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    try:
        ds = get_dataset(args.name, args.root)
        rng = np.random.default_rng(args.seed)
        cols = int(np.ceil(np.sqrt(args.n)))
        write_png(args.out, tile(ds.random_images(args.n, rng), int(np.ceil(args.n / cols)), cols))
        print(f"wrote {args.out}")
        if isinstance(ds, GroundTruthDataset):
            out = args.out.with_name(args.out.stem + "_factors.png")
            write_png(out, factor_grid(ds, rng))
            print(f"wrote {out} (rows: {', '.join(ds.factor_names)})")
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
