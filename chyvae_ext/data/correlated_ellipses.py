"""CorrelatedEllipses, the paper's dataset with correlated generative factors (docs/math.md 3).

Factors (x, y, scale, rotation) are drawn jointly Gaussian with correlation 0.5 between x and y
and between scale and rotation, clipped to [-1, 1] and mapped to [0, 1]; each is then snapped to
its grid (32 x 32 positions, 6 scales, 40 rotations) and drawn as a filled ellipse on a 256 x 256
canvas, area-resized to 64 x 64, following the published generator (crslab/correlated-ellipses).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from .._checks import check_int
from .base import IMAGE_SIZE, GroundTruthDataset, MaterialisedImages, check_rng, to_unit_float
from .files import load_npz_images

COVARIANCE = np.array([[1.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]])
X_GRID = np.linspace(0.0, 1.0, 32)
SCALE_GRID = np.linspace(0.5, 1.0, 6)
ANGLE_GRID = np.linspace(0.0, 360.0, 40)
CANVAS = 256
DEFAULT_SIZE = 200_000


def sample_values(n: int, rng: np.random.Generator) -> np.ndarray:
    """n continuous factor vectors in [0, 1]^4 (x, y, scale, rotation), float64 (n, 4)."""
    f = rng.multivariate_normal(np.zeros(4), COVARIANCE, size=check_int("n", n))
    return (np.clip(f, -1.0, 1.0) + 1.0) / 2.0


def _bin(v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The class of v on grid: grid[digitize(v, grid) - 1] is the value drawn."""
    return np.clip(np.digitize(v, grid) - 1, 0, len(grid) - 1)


def values_to_classes(values: np.ndarray) -> np.ndarray:
    """Continuous values in [0, 1]^4 to grid classes, int64 (n, 4)."""
    v = np.asarray(values, dtype=np.float64)
    return np.stack(
        [
            _bin(v[:, 0], X_GRID),
            _bin(v[:, 1], X_GRID),
            _bin(v[:, 2] / 2 + 0.5, SCALE_GRID),
            _bin(v[:, 3] * 360, ANGLE_GRID),
        ],
        axis=1,
    ).astype(np.int64)


def _draw_literal(classes: np.ndarray) -> np.ndarray:
    """The recipe as published: one 256 x 256 canvas per image, area-resized to 64 x 64."""
    out = np.empty((len(classes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    for i, (cx, cy, cs, ca) in enumerate(classes):
        x, y, s, angle = X_GRID[cx], X_GRID[cy], SCALE_GRID[cs], ANGLE_GRID[ca]
        canvas.fill(0)
        centre = (int(round(x * 156 + 50)), int(round(y * 156 + 50)))
        axes = (int(round(s * 50)), int(round(s * 25)))
        cv2.ellipse(canvas, centre, axes, float(angle), 0, 360, 255, -1)
        out[i] = cv2.resize(canvas, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return out


# The same pixels, about 12x faster. The filled ellipse has an integer centre, so moving the centre
# by 4 canvas pixels moves the drawing by exactly 4 pixels, and the 4x area resize averages aligned
# 4 x 4 blocks: an image is a pre-resized patch (one per scale, angle and centre mod 4) pasted at
# centre // 4, cropped where the canvas ends. A test checks it equals _draw_literal bit for bit.
_PATCH_CENTRE, _PATCH = 56, 112  # canvas pixels; the centre is a multiple of 4, the patch covers 2 x 51
_PATCHES: np.ndarray | None = None


def _patches() -> np.ndarray:
    """uint8 (scale, angle, cy % 4, cx % 4, 28, 28): every pre-resized ellipse, built once (~0.1 s)."""
    global _PATCHES
    if _PATCHES is None:
        side = _PATCH // 4
        patches = np.zeros((len(SCALE_GRID), len(ANGLE_GRID), 4, 4, side, side), dtype=np.uint8)
        canvas = np.zeros((_PATCH, _PATCH), dtype=np.uint8)
        for cs, s in enumerate(SCALE_GRID):
            axes = (int(round(s * 50)), int(round(s * 25)))
            for ca, angle in enumerate(ANGLE_GRID):
                for ry in range(4):
                    for rx in range(4):
                        canvas.fill(0)
                        centre = (_PATCH_CENTRE + rx, _PATCH_CENTRE + ry)
                        cv2.ellipse(canvas, centre, axes, float(angle), 0, 360, 255, -1)
                        patches[cs, ca, ry, rx] = cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)
        _PATCHES = patches
    return _PATCHES


def _draw(classes: np.ndarray) -> np.ndarray:
    patches = _patches()
    side = patches.shape[-1]
    cx = np.rint(X_GRID[classes[:, 0]] * 156 + 50).astype(np.int64)
    cy = np.rint(X_GRID[classes[:, 1]] * 156 + 50).astype(np.int64)
    top, left = cy // 4 - _PATCH_CENTRE // 4, cx // 4 - _PATCH_CENTRE // 4  # may reach a little past the edges
    pad = max(0, -int(min(top.min(initial=0), left.min(initial=0))))
    pad = max(pad, int(max(top.max(initial=0), left.max(initial=0))) + side - IMAGE_SIZE)
    frame = np.zeros((len(classes), IMAGE_SIZE + 2 * pad, IMAGE_SIZE + 2 * pad), dtype=np.uint8)
    # Every side x side window of every frame, as a writeable view: one indexed assignment pastes
    # image i's patch at (top_i, left_i) for all i at once (3x faster than a loop over images).
    windows = np.lib.stride_tricks.sliding_window_view(frame, (side, side), axis=(1, 2), writeable=True)
    windows[np.arange(len(classes)), top + pad, left + pad] = patches[classes[:, 2], classes[:, 3], cy % 4, cx % 4]
    return np.ascontiguousarray(frame[:, pad : pad + IMAGE_SIZE, pad : pad + IMAGE_SIZE])


def render(values: np.ndarray) -> np.ndarray:
    """The published recipe: continuous factor values in [0, 1]^4 (n, 4) to uint8 images (n, 64, 64)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 4:
        raise ValueError(f"values must have shape (n, 4), got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("values must be finite and lie in [0, 1], got non-finite entries")
    if v.size and (v.min() < 0 or v.max() > 1):
        raise ValueError(f"values must lie in [0, 1], got range [{v.min()}, {v.max()}]")
    return _draw_literal(values_to_classes(v))


class CorrelatedEllipses(GroundTruthDataset):
    """Procedural CorrelatedEllipses: factors drawn on demand from the correlated Gaussian.

    ``sample_fixed_factor`` fixes a factor the way the paper's metric code does: it draws n
    correlated factor vectors and copies the first one's value of factor k into all of them.
    """

    name = "correlated_ellipses"
    channels = 1
    factor_names = ("x", "y", "scale", "rotation")
    factor_sizes = (32, 32, 6, 40)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return values_to_classes(sample_values(n, check_rng(rng)))

    def pixels(self, factors: np.ndarray) -> np.ndarray:
        return _draw(self.check_factors(factors))[:, None]

    def images(self, factors: np.ndarray) -> np.ndarray:
        return to_unit_float(self.pixels(factors))

    def materialise(self, size: int = DEFAULT_SIZE, *, seed: int = 0) -> MaterialisedImages:
        """A fixed set of ``size`` images, the same for the same seed (the paper trains on 200,000)."""
        rng = np.random.default_rng(seed)
        factors = self.sample_factors(check_int("size", size), rng)
        return MaterialisedImages(_draw(factors)[:, None], name=f"{self.name}[{size}, seed {seed}]", factors=factors)


def load_published(path: str | os.PathLike) -> MaterialisedImages:
    """The published CorrelatedEllipses npz (key ``dataset``: uint8 (N, 64, 64))."""
    images = load_npz_images(
        path,
        key="dataset",
        dataset="correlated_ellipses",
        source="the generator at github.com/crslab/correlated-ellipses, or CorrelatedEllipses().materialise()",
    )
    return MaterialisedImages(images, name=f"correlated_ellipses[{os.fspath(path)}]")
