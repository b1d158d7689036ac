"""Datasets: synthetic worlds for every setting, and loaders for the real releases.

``load_dataset(name, split, root=None, **options)`` is the one entry point. With ``root=None`` it returns a
synthetic, deterministic generator; with a folder it reads the real release format.

Synthetic worlds (``image_size`` pixels square, default 128; sizes below are quoted at 128 px and scale with it):

- ``shapes``: the easy, generic grounding world the stand-in models are pretrained on. A light, slightly noisy
  background with 1-3 non-overlapping shapes (circle, square, triangle, star, ring, cross; 12-50 px across),
  each in a different colour of the palette (red, green, blue, yellow, purple, orange). Explicit queries:
  "the red circle", or "the red shape" / "the circle" (the latter only when no other circle is present).
- ``reasonseg``: the same visual world with 2-4 shapes, and queries that need reasoning: implicit attributes
  ("the shape you could roll", "the shape the colour of grass"), superlatives ("the largest shape",
  "the leftmost shape") and relations ("the shape left of the blue one", "the shape nearest the green square"),
  mixed with 25 % explicit queries. Every query has exactly one answer: scenes are resampled until it does.
- ``cod``: camouflage. A background of 8 px blocks drawn from a scene palette; the target is a blob striped in
  a palette colour and blended 50/50 with the background; 0-2 salient, solid shapes are distractors. The query
  is always :data:`COD_QUERY`, as in real camouflaged-object detection.
- ``earthreason``: aerial-like scenes: khaki terrain, green and brown fields (crop-row rectangles), grey roads,
  a blue wavy river, sometimes a lake, dark buildings. Queries about landmarks and their relations
  ("the building nearest the river", "the field crossed by the road", "the largest building", "the lake").

Sample ``i`` of a split is a pure function of ``(name, split, seed, i)``: it is drawn from its own random
generator seeded with ``SeedSequence([seed, name code, split code, i])``, so ``ds[i]`` is O(1), any order of
access gives the same samples and the splits (different split codes) never share a sample.

The scene behind a synthetic sample (every object's visible mask, colour and kind, and which one is the target)
is available from ``SyntheticDataset.scene(i)``; tests use it to check that query-blind rules fail.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from scipy import ndimage

from grto_lib.sample import Sample

NAMES = ("shapes", "reasonseg", "cod", "earthreason")
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
"""Number of synthetic samples per split when the ``size`` option is not given."""
MIN_IMAGE_SIZE = 64
COD_QUERY = "the camouflaged object"
"""The fixed instruction of every COD sample (synthetic and real)."""

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

_NAME_CODE = {name: k for k, name in enumerate(NAMES)}
_SPLIT_CODE = {split: k for k, split in enumerate(SPLITS)}


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


def _window(cx: float, cy: float, r: float, hw: tuple[int, int]):
    """Slices of the image covering the disc of radius ``r`` at ``(cx, cy)``, and local offsets dx, dy of the
    pixel centres from ``(cx, cy)``."""
    h, w = hw
    x0, x1 = max(int(math.floor(cx - r)) - 1, 0), min(int(math.ceil(cx + r)) + 2, w)
    y0, y1 = max(int(math.floor(cy - r)) - 1, 0), min(int(math.ceil(cy + r)) + 2, h)
    dy, dx = np.ogrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), dx + 0.5 - cx, dy + 0.5 - cy


def shape_mask(kind: str, cx: float, cy: float, r: float, hw: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a shape of the shapes world that fits in the disc of radius ``r`` around ``(cx, cy)``."""
    win, dx, dy = _window(cx, cy, r, hw)
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
def _unit_area(kind: str) -> float:
    """Area of a shape of radius 1 (measured at radius 50)."""
    return float(shape_mask(kind, 50.5, 50.5, 50.0, (101, 101)).sum()) / 50.0**2


def _blob_mask(cx, cy, r, rng, hw) -> np.ndarray:
    """An irregular, star-convex blob: radius ``r * (1 + sum_k a_k cos(k theta + phi_k))``, k = 2..4."""
    ks = np.arange(2, 5)
    amps, phases = rng.uniform(0.05, 0.18, 3), rng.uniform(0, 2 * math.pi, 3)
    win, dx, dy = _window(cx, cy, r * 1.6, hw)
    theta = np.arctan2(dy, dx)[..., None]
    radius = r * (1 + (amps * np.cos(ks * theta + phases)).sum(-1))
    mask = np.zeros(hw, dtype=bool)
    mask[win] = dx * dx + dy * dy <= radius**2
    return mask


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(yy, xx)``: coordinates of the pixel centres of a ``size`` square (read-only, cached)."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Dilate a mask by ``px`` pixels (square structuring element)."""
    return ndimage.maximum_filter(mask, size=2 * px + 1) if px > 0 else mask


def _paint(image: np.ndarray, mask: np.ndarray, rgb) -> None:
    image[mask] = rgb


def _finish(image: np.ndarray, rng, noise: float) -> np.ndarray:
    """Add Gaussian pixel noise of std ``noise`` and convert to uint8."""
    if noise > 0:
        image = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask when drawn in order (later masks occlude earlier ones)."""
    out, covered = [], np.zeros_like(masks[0])
    for m in reversed(masks):
        out.append(m & ~covered)
        covered |= m
    return out[::-1]


# --------------------------------------------------------------------------------------------------------------
# The shapes world (shared by "shapes" and "reasonseg")


@dataclass
class _Shape:
    kind: str
    colour: str
    cx: float
    cy: float
    r: float
    area: int = 0
    mask: np.ndarray | None = field(default=None, repr=False)


def _place_shapes(rng, n: int, size: int, r_range=(6, 25), margin=3.0) -> list[_Shape] | None:
    """``n`` non-overlapping shapes (bounding discs ``margin`` px apart) of distinct colours; None if no room."""
    s = size / 128
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    shapes: list[_Shape] = []
    for colour in colours:
        for _ in range(30):
            r = rng.uniform(*r_range) * s
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            if all(math.hypot(cx - o.cx, cy - o.cy) >= r + o.r + margin * s for o in shapes):
                shapes.append(_Shape(str(rng.choice(SHAPES)), str(colour), float(cx), float(cy), float(r)))
                break
        else:
            return None
    for o in shapes:
        o.mask = shape_mask(o.kind, o.cx, o.cy, o.r, (size, size))
        o.area = int(o.mask.sum())
    return shapes


def _render_shapes(shapes: list[_Shape], size: int, rng) -> np.ndarray:
    """Light background with a slight tint, the shapes in their palette colours, mild noise."""
    background = rng.uniform(225, 250) + rng.uniform(-8, 8, 3)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = background
    for o in shapes:
        _paint(image, o.mask, COLOURS[o.colour])
    return _finish(image, rng, noise=4.0)


def _shape_objects(shapes: list[_Shape]) -> list[SceneObject]:
    return [SceneObject(o.kind, o.colour, COLOURS[o.colour], o.mask) for o in shapes]


def _explicit_phrase(target: _Shape, shapes: list[_Shape], rng) -> str:
    """"the red circle", or "the red shape" / "the circle" (the latter only if the shape kind is unique)."""
    unique_kind = sum(o.kind == target.kind for o in shapes) == 1
    options = [f"the {target.colour} {target.kind}", f"the {target.colour} {target.kind}", f"the {target.colour} shape"]
    if unique_kind:
        options.append(f"the {target.kind}")
    return str(rng.choice(options))


def _gen_shapes(rng, size: int):
    while (shapes := _place_shapes(rng, int(rng.integers(1, 4)), size)) is None:
        pass
    t = int(rng.integers(len(shapes)))
    query = _explicit_phrase(shapes[t], shapes, rng)
    return _render_shapes(shapes, size, rng), query, _shape_objects(shapes), t, "explicit"


# --- reasoning queries over the shapes world

IMPLICIT_SHAPE = {
    "the shape you could roll": ("circle", "ring"),
    "the round shape": ("circle", "ring"),
    "the shape like a coin": ("circle",),
    "the shape like a full moon": ("circle",),
    "the shape with a hole": ("ring",),
    "the shape like a donut": ("ring",),
    "the shape with three corners": ("triangle",),
    "the shape like a slice of pizza": ("triangle",),
    "the shape like a warning sign": ("triangle",),
    "the shape with four equal sides": ("square",),
    "the shape like a dice": ("square",),
    "the shape with five points": ("star",),
    "the shape you see in the night sky": ("star",),
    "the shape like a plus sign": ("cross",),
    "the shape like a first aid sign": ("cross",),
}
"""Implicit shape descriptions -> the shape kinds that fit them (a scene must hold exactly one such shape)."""

IMPLICIT_COLOUR = {
    "red": ("a tomato", "a strawberry"),
    "green": ("grass", "a leaf"),
    "blue": ("the sky", "the sea"),
    "yellow": ("a banana", "the sun"),
    "purple": ("a grape", "a plum"),
    "orange": ("a carrot", "a pumpkin"),
}
"""Colour word -> things of that colour, used as "the shape the colour of {thing}"."""

SUPERLATIVES = ("largest", "smallest", "leftmost", "rightmost", "topmost", "lowest")
RELATIONS = ("left of", "right of", "above", "below", "nearest", "farthest from")
_AREA_RATIO = 1.4  # "largest"/"smallest": the answer's area differs from every other by this factor
_DIST_RATIO = 1.3  # "nearest"/"farthest": likewise for centre distances
_POS_MARGIN = 8.0  # px at 128: positional comparisons need this gap

REASONSEG_KINDS = {"explicit": 0.25, "implicit_shape": 0.2, "implicit_colour": 0.1, "superlative": 0.15,
                   "relation": 0.3}
"""Query kinds of the synthetic reasonseg world and their probabilities."""


def _reference_phrases(ref: _Shape, shapes: list[_Shape]) -> list[str]:
    """Unambiguous ways to name a reference object."""
    out = [f"the {ref.colour} one", f"the {ref.colour} {ref.kind}"]
    if sum(o.kind == ref.kind for o in shapes) == 1:
        out.append(f"the {ref.kind}")
    return out


def _superlative_answer(word: str, shapes: list[_Shape], margin: float) -> int | None:
    if word in ("largest", "smallest"):
        values = np.array([o.area for o in shapes], dtype=float)
        values = values if word == "largest" else 1 / values
        order = np.argsort(-values)
        return int(order[0]) if values[order[0]] >= _AREA_RATIO * values[order[1]] else None
    coord = {"leftmost": lambda o: -o.cx, "rightmost": lambda o: o.cx, "topmost": lambda o: -o.cy,
             "lowest": lambda o: o.cy}[word]
    values = np.array([coord(o) for o in shapes])
    order = np.argsort(-values)
    return int(order[0]) if values[order[0]] >= values[order[1]] + margin else None


def _relation_answer(rel: str, ref: int, shapes: list[_Shape], margin: float) -> int | None:
    """The unique shape in relation ``rel`` to ``shapes[ref]``, or None when there is none or several.

    "left of": the only shape whose centre is more than ``margin`` left of the reference's, all others being more
    than ``margin`` right of it (likewise right/above/below). "nearest"/"farthest from": centre distance, the
    answer beating every other by the factor ``_DIST_RATIO``.
    """
    r = shapes[ref]
    others = [k for k in range(len(shapes)) if k != ref]
    if rel in ("nearest", "farthest from"):
        d = np.array([math.hypot(shapes[k].cx - r.cx, shapes[k].cy - r.cy) for k in others])
        d = d if rel == "farthest from" else 1 / d
        order = np.argsort(-d)
        if len(others) == 1 or d[order[0]] >= _DIST_RATIO * d[order[1]]:
            return others[int(order[0])]
        return None
    offset = {"left of": lambda o: r.cx - o.cx, "right of": lambda o: o.cx - r.cx,
              "above": lambda o: r.cy - o.cy, "below": lambda o: o.cy - r.cy}[rel]
    values = [offset(shapes[k]) for k in others]
    hits = [k for k, v in zip(others, values) if v > margin]
    if len(hits) == 1 and all(v < -margin for k, v in zip(others, values) if k != hits[0]):
        return hits[0]
    return None


def _reasonseg_query(kind: str, shapes: list[_Shape], rng, size: int):
    """A query of ``kind`` with exactly one answer in ``shapes``: ``(query, target index)``, or None."""
    n, margin = len(shapes), _POS_MARGIN * size / 128
    if kind == "explicit":
        t = int(rng.integers(n))
        return _explicit_phrase(shapes[t], shapes, rng), t
    if kind == "implicit_shape":
        for t in rng.permutation(n):
            phrases = [p for p, kinds in IMPLICIT_SHAPE.items() if shapes[t].kind in kinds]
            p = str(rng.choice(phrases))
            if sum(o.kind in IMPLICIT_SHAPE[p] for o in shapes) == 1:
                return p, int(t)
        return None
    if kind == "implicit_colour":
        t = int(rng.integers(n))
        return f"the shape the colour of {rng.choice(IMPLICIT_COLOUR[shapes[t].colour])}", t
    if kind == "superlative":
        word = str(rng.choice(SUPERLATIVES))
        t = _superlative_answer(word, shapes, margin)
        return None if t is None else (f"the {word} shape", t)
    rel, ref = str(rng.choice(RELATIONS)), int(rng.integers(n))
    t = _relation_answer(rel, ref, shapes, margin)
    if t is None:
        return None
    return f"the shape {rel} {rng.choice(_reference_phrases(shapes[ref], shapes))}", t


def _gen_reasonseg(rng, size: int):
    kinds = list(REASONSEG_KINDS)
    kind = str(rng.choice(kinds, p=list(REASONSEG_KINDS.values())))
    for attempt in range(200):
        if attempt == 100:
            kind = "explicit"  # always answerable; practically never reached
        shapes = _place_shapes(rng, int(rng.integers(2, 5)), size)
        if shapes is None:
            continue
        found = _reasonseg_query(kind, shapes, rng, size)
        if found is not None:
            query, t = found
            return _render_shapes(shapes, size, rng), query, _shape_objects(shapes), t, kind
    raise RuntimeError("could not generate a reasonseg scene")  # unreachable: explicit queries always succeed


# --------------------------------------------------------------------------------------------------------------
# Camouflage


def _gen_cod(rng, size: int):
    s = size / 128
    block = max(size // 16, 1)
    base = rng.uniform(50, 200, 3)
    palette = np.clip(base + rng.normal(0, 22, (4, 3)), 0, 255).astype(np.float32)
    nb = -(-size // block)
    grid = palette[rng.integers(0, len(palette), (nb, nb))]
    image = np.repeat(np.repeat(grid, block, 0), block, 1)[:size, :size].copy()

    # target: a striped blob in a palette colour, 50/50 blend with the background
    r = rng.uniform(10, 20) * s
    cx, cy = rng.uniform(1.25 * r + 1, size - 1.25 * r - 1, 2)
    target = _blob_mask(cx, cy, r, rng, (size, size))
    colour = palette[rng.integers(len(palette))]
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, 8) * s
    yy, xx = _pixel_centres(size)
    stripes = (np.floor((xx * math.cos(angle) + yy * math.sin(angle)) / (period / 2)) % 2).astype(bool)
    stripe_rgb = np.where(stripes[..., None], colour, colour * 0.75)
    image[target] = 0.5 * image[target] + 0.5 * stripe_rgb[target]

    # distractors: solid, salient shapes from the shapes world, away from the target, with areas 0.5-2x the
    # target's (so that "the largest object" is not a shortcut)
    discs, objects = [(cx, cy, 1.25 * r)], [SceneObject("blob", "", tuple(int(v) for v in colour), target, False)]
    n_distractors = int(rng.choice(3, p=[0.15, 0.45, 0.4]))
    for colour_name in rng.choice(list(COLOURS), size=n_distractors, replace=False):
        kind = str(rng.choice(SHAPES))
        rd = math.sqrt(target.sum() * math.exp(rng.uniform(-math.log(2), math.log(2))) / _unit_area(kind))
        for _ in range(30):
            dx, dy = rng.uniform(rd + 1, size - rd - 1, 2)
            if all(math.hypot(dx - ox, dy - oy) >= rd + orr + 3 * s for ox, oy, orr in discs):
                m = shape_mask(kind, dx, dy, rd, (size, size))
                _paint(image, m, COLOURS[colour_name])
                discs.append((dx, dy, rd))
                objects.append(SceneObject(kind, str(colour_name), COLOURS[colour_name], m))
                break
    return _finish(image, rng, noise=5.0), COD_QUERY, objects, 0, "camouflage"


# --------------------------------------------------------------------------------------------------------------
# Aerial scenes

EARTH_RGB = {
    "terrain": (170, 160, 115),
    "green": (70, 140, 55),
    "brown": (140, 100, 60),
    "river": (55, 105, 185),
    "lake": (45, 95, 175),
    "road": (128, 128, 128),
    "building": (70, 60, 60),
}

EARTHREASON_KINDS = {"building_near": 0.25, "building_far": 0.1, "building_size": 0.15, "field_road": 0.1,
                     "field_river": 0.07, "field_colour": 0.08, "field_size": 0.07, "field_near": 0.08,
                     "landmark": 0.1}
"""Query kinds of the synthetic earthreason world and their probabilities."""
_GAP = 4.0  # px at 128: the answer to "nearest"/"farthest" beats the runner-up by this distance


@dataclass
class _Aerial:
    fields: list = field(default_factory=list)  # (mask, colour word)
    river: np.ndarray | None = None
    lake: np.ndarray | None = None
    roads: list = field(default_factory=list)
    buildings: list = field(default_factory=list)


def _line_mask(size, x0, y0, x1, y1, width):
    """Pixels within ``width / 2`` of the infinite line through two points."""
    yy, xx = _pixel_centres(size)
    nx, ny = y1 - y0, -(x1 - x0)
    norm = math.hypot(nx, ny)
    return np.abs((xx - x0) * nx + (yy - y0) * ny) / norm <= width / 2


def _aerial_layout(rng, size: int) -> _Aerial:
    s = size / 128
    scene = _Aerial()
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(2, 6))):
        for _ in range(20):
            w, h = rng.uniform(18, 48, 2) * s
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            rect = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            pad = int(3 * s)
            if not occupied[max(rect[1] - pad, 0):rect[3] + pad, max(rect[0] - pad, 0):rect[2] + pad].any():
                m = np.zeros((size, size), dtype=bool)
                m[rect[1]:rect[3], rect[0]:rect[2]] = True
                occupied |= m
                scene.fields.append((m, str(rng.choice(["green", "brown"]))))
                break
    yy, xx = _pixel_centres(size)
    if rng.random() < 0.75:
        amp, wavelength, phase = rng.uniform(3, 10) * s, rng.uniform(50, 120) * s, rng.uniform(0, 2 * math.pi)
        centre, width = rng.uniform(0.2, 0.8) * size, rng.uniform(6, 10) * s
        along, across = (xx, yy) if rng.random() < 0.5 else (yy, xx)
        scene.river = np.abs(across - centre - amp * np.sin(2 * math.pi * along / wavelength + phase)) <= width / 2
    if rng.random() < 0.4:
        for _ in range(20):
            rx, ry = rng.uniform(8, 18, 2) * s
            cx, cy = rng.uniform(rx, size - rx), rng.uniform(ry, size - ry)
            lake = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
            near = _grow(lake, max(int(3 * s), 1))
            if not (near & occupied).any() and (scene.river is None or not (near & scene.river).any()):
                scene.lake = lake
                break
    for _ in range(int(rng.choice([1, 2], p=[0.6, 0.4]))):
        for _ in range(20):
            x0, y0, x1, y1 = rng.uniform(0, size, 4)
            if rng.random() < 0.6:  # mostly axis-aligned roads
                if rng.random() < 0.5:
                    x1 = x0
                else:
                    y1 = y0
            if math.hypot(x1 - x0, y1 - y0) < 0.3 * size:
                continue
            road = _line_mask(size, x0, y0, x1, y1, rng.uniform(3, 5) * s)
            if scene.lake is not None and (road & scene.lake).any():
                continue
            scene.roads.append(road)
            break
    blocked = occupied.copy()
    for m in [scene.river, scene.lake, *scene.roads]:
        if m is not None:
            blocked |= m
    blocked = _grow(blocked, max(int(2 * s), 1))
    for _ in range(int(rng.integers(3, 8))):
        for _ in range(30):
            w, h = rng.uniform(4, 13, 2) * s
            x0, y0 = int(rng.uniform(1, size - w - 1)), int(rng.uniform(1, size - h - 1))
            x1, y1 = x0 + max(int(w), 2), y0 + max(int(h), 2)
            if not blocked[y0 - 1:y1 + 1, x0 - 1:x1 + 1].any():
                m = np.zeros((size, size), dtype=bool)
                m[y0:y1, x0:x1] = True
                blocked[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = True
                scene.buildings.append(m)
                break
    return scene


def _aerial_objects(scene: _Aerial) -> list[SceneObject]:
    """Objects in drawing order (fields, lake, river, roads, buildings) with their visible masks."""
    raw = [("field", colour, EARTH_RGB[colour], m) for m, colour in scene.fields]
    if scene.lake is not None:
        raw.append(("lake", "blue", EARTH_RGB["lake"], scene.lake))
    if scene.river is not None:
        raw.append(("river", "blue", EARTH_RGB["river"], scene.river))
    raw += [("road", "grey", EARTH_RGB["road"], m) for m in scene.roads]
    raw += [("building", "", EARTH_RGB["building"], m) for m in scene.buildings]
    visible = _visible([m for *_, m in raw])
    return [SceneObject(k, c, rgb, v) for (k, c, rgb, _), v in zip(raw, visible)]


def _render_aerial(objects: list[SceneObject], rng, size: int) -> np.ndarray:
    s = size / 128
    coarse = rng.normal(0, 8, (size // 16 + 1, size // 16 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    image = np.asarray(EARTH_RGB["terrain"], dtype=np.float32) + texture[..., None]
    rows = (np.arange(size) // max(int(2 * s), 1)) % 2 == 0
    for o in objects:
        _paint(image, o.mask, o.rgb)
        if o.kind == "field":  # crop rows: every other row slightly darker
            image[o.mask & rows[:, None]] *= 0.88
        if o.kind == "building":  # a light roof edge so buildings read as blocks
            ys, xs = np.nonzero(o.mask)
            image[ys.min(), xs.min():xs.max() + 1] = (150, 140, 135)
    return _finish(image, rng, noise=4.0)


def _unique_extreme(values: np.ndarray, largest: bool, gap: float = 0.0, ratio: float = 1.0) -> int | None:
    """Index of the unique maximum (or minimum) of ``values`` beating the runner-up by ``gap`` and ``ratio``."""
    if len(values) == 0:
        return None
    v = values if largest else -values
    order = np.argsort(-v)
    if len(values) == 1:
        return int(order[0])
    best, second = values[order[0]], values[order[1]]
    ok = v[order[0]] - v[order[1]] >= gap and (max(best, second) >= ratio * min(best, second))
    return int(order[0]) if ok else None


def _earth_query(kind: str, objs: list[SceneObject], rng, size: int):
    """A query of ``kind`` with exactly one answer among ``objs``: ``(query, target index)``, or None."""
    s = size / 128
    idx = {k: [i for i, o in enumerate(objs) if o.kind == k] for k in ("field", "lake", "river", "road", "building")}
    landmarks = [k for k in ("river", "lake") if idx[k]] + (["road"] if len(idx["road"]) == 1 else [])
    buildings, fields = idx["building"], idx["field"]

    def distances(targets, landmark_mask):
        dist = ndimage.distance_transform_edt(~landmark_mask)
        return np.array([dist[objs[t].mask].min() for t in targets])

    if kind in ("building_near", "building_far", "field_near"):
        targets = fields if kind == "field_near" else buildings
        if not landmarks or len(targets) < 2:
            return None
        lm = str(rng.choice(landmarks))
        d = distances(targets, objs[idx[lm][0]].mask)
        t = _unique_extreme(d, largest=kind == "building_far", gap=_GAP * s)
        if t is None:
            return None
        what = "field" if kind == "field_near" else "building"
        rel = "farthest from" if kind == "building_far" else "nearest"
        return f"the {what} {rel} the {lm}", targets[t]
    if kind == "building_size":
        word = str(rng.choice(["largest", "smallest"]))
        if len(buildings) < 2:
            return None
        t = _unique_extreme(np.array([objs[b].area for b in buildings], float), word == "largest", ratio=_AREA_RATIO)
        return None if t is None else (f"the {word} building", buildings[t])
    if kind == "field_size":
        if len(fields) < 2:
            return None
        t = _unique_extreme(np.array([objs[f].area for f in fields], float), True, ratio=1.3)
        return None if t is None else ("the largest field", fields[t])
    if kind == "field_colour":
        colour = str(rng.choice(["green", "brown"]))
        hits = [f for f in fields if objs[f].colour == colour]
        return (f"the {colour} field", hits[0]) if len(hits) == 1 and len(fields) >= 2 else None
    if kind in ("field_road", "field_river"):
        crossing = [objs[r].mask for r in idx["road" if kind == "field_road" else "river"]]
        if not crossing:
            return None
        union = np.logical_or.reduce(crossing)
        # crossed: the road/river passes through the field's rectangle (it occludes part of the field)
        hits = [f for f in fields if union[_bbox_slices(objs[f].mask)].any()]
        if len(hits) != 1:
            return None
        if kind == "field_river":
            return "the field the river flows through", hits[0]
        return f"the field crossed by {'the' if len(idx['road']) == 1 else 'a'} road", hits[0]
    if kind == "landmark":
        if not landmarks:
            return None
        lm = str(rng.choice(landmarks))
        return f"the {lm}", idx[lm][0]
    raise ValueError(kind)


def _bbox_slices(mask: np.ndarray):
    """The tight bounding box of a mask as a pair of slices (a field's rectangle, occluded parts included)."""
    ys, xs = np.nonzero(mask)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def _gen_earthreason(rng, size: int):
    kind = str(rng.choice(list(EARTHREASON_KINDS), p=list(EARTHREASON_KINDS.values())))
    for attempt in range(400):
        if attempt >= 200:
            kind = "landmark"
        objects = _aerial_objects(_aerial_layout(rng, size))
        if any(o.area == 0 for o in objects):
            continue
        found = _earth_query(kind, objects, rng, size)
        if found is not None:
            query, t = found
            return _render_aerial(objects, rng, size), query, objects, t, kind
    raise RuntimeError("could not generate an earthreason scene")


_GENERATORS = {"shapes": _gen_shapes, "reasonseg": _gen_reasonseg, "cod": _gen_cod, "earthreason": _gen_earthreason}


# --------------------------------------------------------------------------------------------------------------
# The synthetic dataset


class SyntheticDataset(Sequence):
    """``size`` samples of a synthetic world, each generated on access from its own seeded RNG (see module doc)."""

    def __init__(self, name: str, split: str, size: int, image_size: int = 128, seed: int = 0):
        self.name, self.split, self.size, self.image_size, self.seed = name, split, size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.size))]
        return self.scene(i).sample

    def scene(self, i: int) -> Scene:
        """Sample ``i`` with the objects it was drawn from."""
        i = int(i)
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.name}/{self.split} of size {self.size}")
        i %= self.size
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _NAME_CODE[self.name], _SPLIT_CODE[self.split], i]))
        image, query, objects, t, kind = _GENERATORS[self.name](rng, self.image_size)
        sample = Sample(image=image, query=query, mask=objects[t].mask.copy(), ignore=None,
                        id=f"{self.name}/{self.split}/{i:05d}")
        return Scene(sample, objects, t, kind)

    def __repr__(self) -> str:
        return (f"SyntheticDataset(name={self.name!r}, split={self.split!r}, size={self.size}, "
                f"image_size={self.image_size}, seed={self.seed})")


# --------------------------------------------------------------------------------------------------------------
# Vocabulary


def query_corpus() -> list[str]:
    """Every query the synthetic generators can emit (templates fully expanded), sorted, without duplicates."""
    out = {COD_QUERY}
    for colour in COLOURS:
        out.add(f"the {colour} shape")
        for kind in SHAPES:
            out.add(f"the {colour} {kind}")
    out.update(f"the {kind}" for kind in SHAPES)
    out.update(IMPLICIT_SHAPE)
    out.update(f"the shape the colour of {thing}" for things in IMPLICIT_COLOUR.values() for thing in things)
    out.update(f"the {word} shape" for word in SUPERLATIVES)
    refs = [f"the {c} one" for c in COLOURS] + [f"the {c} {k}" for c in COLOURS for k in SHAPES]
    refs += [f"the {k}" for k in SHAPES]
    out.update(f"the shape {rel} {ref}" for rel in RELATIONS for ref in refs)
    for lm in ("river", "lake", "road"):
        out.add(f"the {lm}")
        out.update(f"the {what} {rel} the {lm}" for what, rel in
                   [("building", "nearest"), ("building", "farthest from"), ("field", "nearest")])
    out.update({"the largest building", "the smallest building", "the largest field", "the green field",
                "the brown field", "the field the river flows through", "the field crossed by the road",
                "the field crossed by a road"})
    return sorted(out)


# --------------------------------------------------------------------------------------------------------------
# Real release formats

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class _Entry:
    """One sample of a real dataset, before its pixels are read."""

    image: Path
    query: str
    id: str
    target: Path
    """The ground truth: a mask image, or for ReasonSeg the LISA json."""


class FolderDataset(Sequence):
    """Samples of a real release. The folder listing, the pairing of files and the queries are validated when the
    dataset is built; pixels are read on access (``ds[i]``), and a bad file raises there, naming it.
    :meth:`check` reads every sample once to surface such errors up front."""

    def __init__(self, name: str, split: str, root: Path, entries: list[_Entry], allow_empty: bool):
        self.name, self.split, self.root, self.entries, self.allow_empty = name, split, root, entries, allow_empty

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        e = self.entries[i]
        image = _read_image(e.image)
        if e.target.suffix.lower() == ".json":
            mask, ignore = _lisa_mask(e.target, image.shape[:2])
        else:
            mask = _read_mask(e.target, threshold=128 if self.name == "cod" else 0)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"mask {e.target} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {e.image} is "
                                 f"{image.shape[1]}x{image.shape[0]}")
            ignore = None
        if not mask.any() and not self.allow_empty:
            raise ValueError(f"empty ground-truth mask in {e.target} (image {e.image}); pass allow_empty=True to keep "
                             f"such samples (LISA scores an empty prediction on an empty target as IoU 1)")
        return Sample(image=image, query=e.query, mask=mask, ignore=ignore, id=e.id)

    def check(self) -> None:
        """Read every sample once; raises on the first bad file."""
        for i in range(len(self)):
            self[i]

    def __repr__(self) -> str:
        return f"FolderDataset(name={self.name!r}, split={self.split!r}, root={str(self.root)!r}, n={len(self)})"


def _read_image(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB (grayscale, palette and RGBA images converted; EXIF orientation applied, as
    ``cv2.imread`` does)."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _read_mask(path: Path, threshold: int) -> np.ndarray:
    """Boolean mask from a mask image: grey level > ``threshold`` is target."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L")) > threshold
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """``stem -> path`` of the files in ``folder`` with one of ``suffixes`` (case-insensitive); raises on a stem that
    appears twice (e.g. ``a.jpg`` and ``a.png``)."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes:
            if p.stem in out:
                raise ValueError(f"two files with stem {p.stem!r} in {folder}: {out[p.stem].name} and {p.name}")
            out[p.stem] = p
    return out


def _pair(images: dict[str, Path], others: dict[str, Path], image_dir: Path, other_dir: Path, what: str) -> None:
    """Raise unless both folders hold exactly the same stems."""
    missing = sorted(set(images) - set(others))
    if missing:
        raise ValueError(f"image {images[missing[0]]} has no {what}: expected {other_dir / missing[0]}.<ext> "
                         f"({len(missing)} image(s) in {image_dir} lack one)")
    orphans = sorted(set(others) - set(images))
    if orphans:
        raise ValueError(f"{what} file {others[orphans[0]]} has no image: expected {image_dir / orphans[0]}.<ext> "
                         f"({len(orphans)} such file(s) in {other_dir})")


def _first_dir(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"no {what} folder: expected one of {[str(c) for c in candidates]}")


def _read_json(path: Path):
    """JSON with LISA's fallback to cp1252 for files that are not UTF-8."""
    try:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_text(encoding="cp1252")
        return json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"malformed JSON {path}: {err}") from err


def _queries(value, path: Path, field_name: str) -> list[str]:
    """A non-empty list of non-empty strings (a lone string counts as a list of one)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(q, str) for q in value):
        raise ValueError(f"{path}: field {field_name!r} must be a non-empty list of strings, got {value!r:.200}")
    for k, q in enumerate(value):
        if not q.strip():
            raise ValueError(f"{path}: empty query at {field_name}[{k}]")
    return [q.strip() for q in value]


def _select(queries: list[str], mode: str) -> list[str]:
    return queries if mode == "all" else queries[:1]


# --- ReasonSeg (LISA)


def _lisa_polygons(anno: dict, path: Path) -> list[tuple[str, list]]:
    """``(label, points)`` of every annotated region, validated. Labelme rectangles (two corners) become polygons."""
    shapes = anno.get("shapes")
    if not isinstance(shapes, list):
        raise ValueError(f"{path}: missing or non-list field 'shapes'")
    out = []
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or "points" not in shape:
            raise ValueError(f"{path}: shapes[{k}] needs a string 'label' and 'points'")
        points = shape["points"]
        try:
            pts = [(float(x), float(y)) for x, y in points]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: shapes[{k}].points must be a list of [x, y], got {points!r:.200}") from err
        if not pts:
            raise ValueError(f"{path}: shapes[{k}] has no points")
        shape_type = shape.get("shape_type", "polygon") or "polygon"
        if shape_type == "rectangle" and len(pts) == 2:
            (x1, y1), (x2, y2) = pts
            pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
        elif shape_type != "polygon":
            raise ValueError(f"{path}: shapes[{k}] has shape_type {shape_type!r}; supported: 'polygon', 'rectangle'")
        out.append((shape["label"], pts))
    return out


def _rasterise(points, hw, value: int, canvas: Image.Image | None = None) -> Image.Image:
    """Fill a polygon (outline included, vertices truncated to integers as LISA's ``np.int32`` cast does)."""
    canvas = canvas if canvas is not None else Image.new("L", (hw[1], hw[0]), 0)
    xy = [(int(x), int(y)) for x, y in points]
    draw = ImageDraw.Draw(canvas)
    if len(xy) >= 3:
        draw.polygon(xy, fill=value, outline=value)
    else:
        draw.line(xy + xy[:1], fill=value)
    return canvas


def _lisa_mask(path: Path, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """LISA's ``get_mask_from_json``: regions labelled "flag" are dropped; the others are painted largest first (so a
    smaller region drawn later wins where they overlap), value 255 ("ignore" in the label) or 1 (target, any other
    label). Returns ``(mask == 1, mask == 255)``: ignore pixels are never target."""
    regions = [(label, pts) for label, pts in _lisa_polygons(_read_json(path), path) if label.lower() != "flag"]
    areas = [int(np.asarray(_rasterise(pts, hw, 1)).sum()) for _, pts in regions]
    canvas = Image.new("L", (hw[1], hw[0]), 0)
    for k in np.argsort(areas, kind="stable")[::-1]:
        label, pts = regions[k]
        _rasterise(pts, hw, 255 if "ignore" in label.lower() else 1, canvas)
    value = np.asarray(canvas)
    return value == 1, value == 255


def load_reasonseg_folder(root, split: str, queries: str = "all", allow_empty: bool = False) -> FolderDataset:
    """ReasonSeg as released by LISA: ``root/{split}/*.jpg`` (also ``root/ReasonSeg/{split}``), each image with a
    same-stem ``.json`` holding ``text`` (list of queries), ``is_sentence`` and labelme ``shapes``.

    One sample per (image, query): ``queries="all"`` (default) keeps every query in ``text``, ``queries="first"``
    only ``text[0]`` (what LISA's own evaluation uses). Ground truth follows LISA's ``get_mask_from_json``
    (see :func:`_lisa_mask`): ``Sample.ignore`` holds the "ignore" regions, excluded from the mask and from scoring.
    Images are .jpg/.jpeg/.png; an image without its json or a json without its image raises; other files are ignored.
    Sample ids: ``reasonseg/{split}/{stem}#{query index}``.
    """
    root = Path(root)
    folder = _first_dir([root / split, root / "ReasonSeg" / split], f"ReasonSeg {split!r}")
    images = _files_by_stem(folder, (".jpg", ".jpeg", ".png"))
    jsons = _files_by_stem(folder, (".json",))
    if not images:
        raise FileNotFoundError(f"no images (.jpg/.jpeg/.png) in {folder}")
    _pair(images, jsons, folder, folder, "annotation json")
    entries = []
    for stem, image in images.items():
        anno = _read_json(jsons[stem])
        if not isinstance(anno, dict) or "text" not in anno:
            raise ValueError(f"{jsons[stem]}: missing field 'text' (the list of queries)")
        _lisa_polygons(anno, jsons[stem])  # validate up front; rasterised on access
        for k, q in enumerate(_select(_queries(anno["text"], jsons[stem], "text"), queries)):
            entries.append(_Entry(image, q, f"reasonseg/{split}/{stem}#{k}", jsons[stem]))
    return FolderDataset("reasonseg", split, folder, entries, allow_empty)


# --- COD


def load_cod_folder(root, split: str, allow_empty: bool = False) -> FolderDataset:
    """A camouflaged-object test set in the common layout: ``root/Imgs/`` (or ``Image/``) and ``root/GT/`` (or
    ``GT_Object/``), e.g. ``TestDataset/COD10K``, ``CAMO``, ``NC4K``, ``CHAMELEON`` or ``TrainDataset``.

    The folder *is* the split: ``split`` is only recorded in the ids (``cod/{split}/{stem}``). Images are
    .jpg/.jpeg/.png/.bmp, ground truths .png/.bmp/.tif binary maps matched by file stem, target = grey level > 128
    (``py_sod_metrics``' binarisation). Every image needs its ground truth and vice versa. The query is
    :data:`COD_QUERY`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"COD folder {root} does not exist")
    image_dir = _first_dir([root / "Imgs", root / "Image"], "COD image (Imgs/ or Image/)")
    gt_dir = _first_dir([root / "GT", root / "GT_Object"], "COD ground-truth (GT/ or GT_Object/)")
    images = _files_by_stem(image_dir, IMAGE_SUFFIXES)
    gts = _files_by_stem(gt_dir, (".png", ".bmp", ".tif", ".tiff"))
    if not images:
        raise FileNotFoundError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in {image_dir}")
    _pair(images, gts, image_dir, gt_dir, "ground-truth mask")
    entries = [_Entry(images[s], COD_QUERY, f"cod/{split}/{s}", gts[s]) for s in images]
    return FolderDataset("cod", split, root, entries, allow_empty)


# --- EarthReason (SegEarth-R1)


def load_earthreason_folder(root, split: str, queries: str = "all", allow_empty: bool = False) -> FolderDataset:
    """EarthReason as released with SegEarth-R1: ``root/RSReasonSeg/{split}/{images,labels,QAs}`` (``root`` may also
    be the ``RSReasonSeg`` folder itself). Images .jpg/.jpeg/.png, labels .png (any non-zero pixel is target, as in
    SegEarth-R1), QAs .json (or .txt holding json) with a ``questions`` list (an ``answer`` list, unused here).

    Files are paired by stem (the reference loader pairs sorted lists, which silently misaligns on a missing file);
    any unpaired file raises. One sample per question: ``queries="all"`` (default) or ``"first"``
    (``questions[0]``, what SegEarth-R1's evaluation uses). Ids: ``earthreason/{split}/{stem}#{question index}``.
    Real EarthReason has no-target samples (empty ``answer``, empty label): they raise unless ``allow_empty=True``.
    """
    root = Path(root)
    base = _first_dir([root / "RSReasonSeg" / split, root / split, root / "rs_reason_seg" / "RSReasonSeg" / split],
                      f"EarthReason {split!r}")
    image_dir, label_dir, qa_dir = (_first_dir([base / sub], f"EarthReason {sub}") for sub in ("images", "labels", "QAs"))
    images = _files_by_stem(image_dir, (".jpg", ".jpeg", ".png"))
    labels = _files_by_stem(label_dir, (".png",))
    qas = _files_by_stem(qa_dir, (".json", ".txt"))
    if not images:
        raise FileNotFoundError(f"no images (.jpg/.jpeg/.png) in {image_dir}")
    _pair(images, labels, image_dir, label_dir, "label")
    _pair(images, qas, image_dir, qa_dir, "QA")
    entries = []
    for stem, image in images.items():
        qa = _read_json(qas[stem])
        if not isinstance(qa, dict) or "questions" not in qa:
            raise ValueError(f"{qas[stem]}: missing field 'questions'")
        for k, q in enumerate(_select(_queries(qa["questions"], qas[stem], "questions"), queries)):
            entries.append(_Entry(image, q, f"earthreason/{split}/{stem}#{k}", labels[stem]))
    return FolderDataset("earthreason", split, base, entries, allow_empty)


# --------------------------------------------------------------------------------------------------------------
# Entry point


def _synthetic(name: str, split: str, options: dict) -> SyntheticDataset:
    allowed = {"size", "image_size", "seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for synthetic {name!r}; allowed: {sorted(allowed)}")
    size = options.get("size", DEFAULT_SIZES[split])
    image_size = options.get("image_size", 128)
    seed = options.get("seed", 0)
    for key, value, low in (("size", size, 1), ("image_size", image_size, MIN_IMAGE_SIZE), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"option {key} must be an integer >= {low}, got {value!r}")
    return SyntheticDataset(name, split, int(size), int(image_size), int(seed))


def load_dataset(name: str, split: str, root=None, **options) -> Sequence[Sample]:
    """The samples of dataset ``name`` (one of :data:`NAMES`) and ``split`` (one of :data:`SPLITS`).

    ``root=None``: the synthetic world (:class:`SyntheticDataset`), options ``size`` (default
    :data:`DEFAULT_SIZES`: 2000 / 200 / 200), ``image_size`` (default 128, >= 64) and ``seed`` (default 0).

    ``root`` a folder: the real release format (not for "shapes"), read by :func:`load_reasonseg_folder`,
    :func:`load_cod_folder` or :func:`load_earthreason_folder` (:class:`FolderDataset`, images at their own
    resolution), options ``allow_empty`` (default False: an empty ground truth raises) and, except for COD,
    ``queries`` ("all", the default: one sample per query; or "first").
    Unknown names, splits, options or option values raise ValueError listing what is allowed.
    """
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}; allowed: {NAMES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {SPLITS}")
    if root is None:
        return _synthetic(name, split, options)
    if name == "shapes":
        raise ValueError("'shapes' is synthetic only: call load_dataset('shapes', split) without root")
    allowed = {"allow_empty": (True, False)}
    if name != "cod":
        allowed["queries"] = ("all", "first")
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"unknown option {key!r} for a {name} folder; allowed: {sorted(allowed)}")
        if value not in allowed[key] or (key == "allow_empty" and not isinstance(value, bool)):
            raise ValueError(f"option {key} must be one of {allowed[key]}, got {value!r}")
    loader = {"reasonseg": load_reasonseg_folder, "cod": load_cod_folder, "earthreason": load_earthreason_folder}[name]
    return loader(root, split, **options)
