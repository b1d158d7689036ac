"""The tiny world's drawing kit: the palette, scene objects and vectorised shape, blob and paint primitives."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from grto_lib.sample import Sample

COLOURS = {
    "red": (220, 45, 45),
    "green": (50, 165, 70),
    "blue": (45, 90, 220),
    "yellow": (240, 205, 40),
    "purple": (145, 70, 190),
    "orange": (245, 135, 30),
}
"""The palette of the shapes world: colour word -> RGB."""
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")

AREA_RATIO = 1.4
"""Superlatives of size ("the largest ..."): the answer's area differs from every other by this factor."""


@dataclass
class SceneObject:
    """One object of a synthetic scene, as drawn."""

    kind: str
    """Shape word ("circle", ...), or for earthreason "field", "river", "lake", "road", "building", or "blob"
    (the COD target)."""
    colour: str
    """Colour word ("red", "green", "brown", ...), or "" when the object has no nameable colour."""
    rgb: tuple
    """The RGB it was drawn with, before blending and noise."""
    mask: np.ndarray
    """H x W bool: the object's visible pixels (later objects occlude earlier ones)."""
    salient: bool = True
    """False for camouflaged objects (the COD target)."""

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def center(self) -> tuple[float, float]:
        """Centroid ``(x, y)`` of the visible mask, in pixel-centre coordinates."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


@dataclass
class Scene:
    """A synthetic sample together with the objects it was drawn from."""

    sample: Sample
    objects: list[SceneObject]
    target: int
    """Index of the object the query refers to; ``sample.mask`` equals ``objects[target].mask``."""
    query_kind: str
    """How the query was made: "explicit" (every ``shapes`` query), a ``REASONSEG_KINDS`` or ``EARTHREASON_KINDS``
    key, or "camouflage" (``cod``)."""


# --------------------------------------------------------------------------------------------------------------
# Drawing primitives (vectorised over a local window of the image)


def window(cx: float, cy: float, r: float, hw: tuple[int, int]):
    """Slices of the image covering the disc of radius ``r`` at ``(cx, cy)``, and local offsets dx, dy of the
    pixel centres from ``(cx, cy)``."""
    h, w = hw
    x0, x1 = max(int(math.floor(cx - r)) - 1, 0), min(int(math.ceil(cx + r)) + 2, w)
    y0, y1 = max(int(math.floor(cy - r)) - 1, 0), min(int(math.ceil(cy + r)) + 2, h)
    dy, dx = np.ogrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), dx + 0.5 - cx, dy + 0.5 - cy


def shape_mask(kind: str, cx: float, cy: float, r: float, hw: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a shape of the shapes world that fits in the disc of radius ``r`` around ``(cx, cy)``."""
    win, dx, dy = window(cx, cy, r, hw)
    d2 = dx * dx + dy * dy
    if kind == "circle":
        local = d2 <= r * r
    elif kind == "ring":
        local = (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    elif kind == "square":
        local = (np.abs(dx) <= 0.7 * r) & (np.abs(dy) <= 0.7 * r)
    elif kind == "triangle":  # equilateral, pointing up, circumradius r
        local = (dy <= r / 2) & (math.sqrt(3) * np.abs(dx) - dy <= r)
    elif kind == "cross":
        arm, reach = 0.36 * r, 0.93 * r  # reach^2 + arm^2 <= r^2: the arm ends stay inside the disc
        local = ((np.abs(dx) <= arm) & (np.abs(dy) <= reach)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= reach))
    elif kind == "star":  # five points, inner radius 0.45 r; polar equation of the edge between two vertices
        alpha, inner = math.pi / 5, 0.45 * r
        t = np.mod(np.arctan2(dy, dx) + math.pi / 2, 2 * alpha)
        t = np.where(t > alpha, 2 * alpha - t, t)
        edge = r * inner * math.sin(alpha) / (r * np.sin(t) - inner * np.sin(t - alpha))
        local = np.sqrt(d2) <= edge
    else:
        raise ValueError(f"unknown shape {kind!r}; allowed: {SHAPES}")
    mask = np.zeros(hw, dtype=bool)
    mask[win] = local
    return mask


@functools.lru_cache(maxsize=None)
def unit_area(kind: str) -> float:
    """Area of a shape of radius 1 (measured at radius 50)."""
    return float(shape_mask(kind, 50.5, 50.5, 50.0, (101, 101)).sum()) / 50.0**2


def blob_mask(cx, cy, r, rng, hw) -> np.ndarray:
    """An irregular, star-convex blob: radius ``r * (1 + sum_k a_k cos(k theta + phi_k))``, k = 2..4."""
    ks = np.arange(2, 5)
    amps, phases = rng.uniform(0.05, 0.18, 3), rng.uniform(0, 2 * math.pi, 3)
    win, dx, dy = window(cx, cy, r * 1.6, hw)
    theta = np.arctan2(dy, dx)[..., None]
    radius = r * (1 + (amps * np.cos(ks * theta + phases)).sum(-1))
    mask = np.zeros(hw, dtype=bool)
    mask[win] = dx * dx + dy * dy <= radius**2
    return mask


@functools.lru_cache(maxsize=8)
def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(yy, xx)``: coordinates of the pixel centres of a ``size`` square (read-only, cached)."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate a mask by ``px`` pixels (square structuring element)."""
    return ndimage.maximum_filter(mask, size=2 * px + 1) if px > 0 else mask


def paint(image: np.ndarray, mask: np.ndarray, rgb) -> None:
    image[mask] = rgb


def finish(image: np.ndarray, rng, noise: float) -> np.ndarray:
    """Add Gaussian pixel noise of std ``noise`` and convert to uint8."""
    if noise > 0:
        image = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def visible_parts(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when drawn in order (later masks occlude earlier ones)."""
    out, covered = [], np.zeros_like(masks[0])
    for m in reversed(masks):
        out.append(m & ~covered)
        covered |= m
    return out[::-1]
