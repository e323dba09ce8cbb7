"""shapes2d: an offline set with dSprites' factors and value grids, drawn with OpenCV.

Same factors, sizes, values and index order as dSprites (docs/math.md 3): color (1), shape (square, ellipse, heart),
scale (6, linspace(0.5, 1)), orientation (40, linspace(0, 2 pi)), posX and posY (32 each,
linspace(0, 1)). Images are binary 64 x 64, rendered on demand. Its pixels are NOT dSprites'
pixels: the shapes' outlines, sizes and placement are this package's own choice, so scores on it
are comparable with each other, not with numbers published on dSprites.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from .base import IMAGE_SIZE, MaterialisedImages
from .dsprites import NUM_IMAGES, DSpritesLike, index_to_classes

SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

# Geometry in pixels: a shape at scale 1 spans about 20 px; centres stay inside [10, 54].
_HALF_SIZE = 10.0
_MARGIN = 10.0
_SHIFT = 4  # fixed-point bits for sub-pixel vertices in cv2.fillPoly


def _outline(shape: int, n: int = 64) -> np.ndarray:
    """Unit outline (n, 2) of the shape, centred, extent about [-1, 1]."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    if shape == 0:  # square
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * 0.85
    if shape == 1:  # ellipse, 2:1
        return np.stack([np.cos(t), 0.5 * np.sin(t)], axis=1)
    x = 16 * np.sin(t) ** 3  # heart
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


_OUTLINES = [_outline(s) for s in range(3)]


def render_classes(factors: np.ndarray) -> np.ndarray:
    """uint8 (n, 64, 64) images, 0 or 255, for factor classes (n, 6)."""
    out = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    span = IMAGE_SIZE - 2 * _MARGIN
    for i, (_, shape, scale, orient, px, py) in enumerate(factors):
        theta = ORIENTATIONS[orient]
        c, s = np.cos(theta), np.sin(theta)
        pts = _OUTLINES[shape] @ np.array([[c, s], [-s, c]]) * (_HALF_SIZE * SCALES[scale])
        pts += (_MARGIN + span * POSITIONS[px], _MARGIN + span * POSITIONS[py])
        poly = np.rint((pts - 0.5) * (1 << _SHIFT)).astype(np.int32)[None]
        cv2.fillPoly(out[i], poly, 255, lineType=cv2.LINE_8, shift=_SHIFT)
    return out


class Shapes2D(DSpritesLike):
    """The procedural dSprites-compatible set: factors uniform over dSprites' grid, rendered on demand."""

    name = "shapes2d"

    def render_full(self, classes: np.ndarray) -> np.ndarray:
        return render_classes(classes)

    def materialise(self, path: str | os.PathLike | None = None) -> MaterialisedImages:
        """All 737,280 images in dSprites' order (2.9 GB of uint8, rendered on the host),
        saved to ``path`` as an npz with key ``imgs`` when given."""
        classes = index_to_classes(np.arange(NUM_IMAGES))
        images = render_classes(classes)
        if path is not None:
            np.savez(path, imgs=images)
        return MaterialisedImages(images[:, None], name=self.name, factors=classes)
