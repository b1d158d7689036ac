"""The tiny world's data: a synthetic, deterministic world for every setting (``grto_lib.data.load_dataset``
with ``root=None`` returns them; ``synthetic_dataset`` checks the options).

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from grto_lib.sample import Sample
from grto_lib.tinyworld.aerial import generate_earthreason
from grto_lib.tinyworld.drawing import (AREA_RATIO, COLOURS, SHAPES, Scene, SceneObject, blob_mask, finish, paint,
                                        pixel_centres, shape_mask, unit_area)

NAMES = ("shapes", "reasonseg", "cod", "earthreason")
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
"""Number of synthetic samples per split when the ``size`` option is not given."""
MIN_IMAGE_SIZE = 64
COD_QUERY = "the camouflaged object"
"""The fixed instruction of every COD sample (synthetic and real)."""

_NAME_CODE = {name: k for k, name in enumerate(NAMES)}
_SPLIT_CODE = {split: k for k, split in enumerate(SPLITS)}


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
        paint(image, o.mask, COLOURS[o.colour])
    return finish(image, rng, noise=4.0)


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
        return int(order[0]) if values[order[0]] >= AREA_RATIO * values[order[1]] else None
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
    target = blob_mask(cx, cy, r, rng, (size, size))
    colour = palette[rng.integers(len(palette))]
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, 8) * s
    yy, xx = pixel_centres(size)
    stripes = (np.floor((xx * math.cos(angle) + yy * math.sin(angle)) / (period / 2)) % 2).astype(bool)
    stripe_rgb = np.where(stripes[..., None], colour, colour * 0.75)
    image[target] = 0.5 * image[target] + 0.5 * stripe_rgb[target]

    # distractors: solid, salient shapes from the shapes world, away from the target, with areas 0.5-2x the
    # target's (so that "the largest object" is not a shortcut)
    discs, objects = [(cx, cy, 1.25 * r)], [SceneObject("blob", "", tuple(int(v) for v in colour), target, False)]
    n_distractors = int(rng.choice(3, p=[0.15, 0.45, 0.4]))
    for colour_name in rng.choice(list(COLOURS), size=n_distractors, replace=False):
        kind = str(rng.choice(SHAPES))
        rd = math.sqrt(target.sum() * math.exp(rng.uniform(-math.log(2), math.log(2))) / unit_area(kind))
        for _ in range(30):
            dx, dy = rng.uniform(rd + 1, size - rd - 1, 2)
            if all(math.hypot(dx - ox, dy - oy) >= rd + orr + 3 * s for ox, oy, orr in discs):
                m = shape_mask(kind, dx, dy, rd, (size, size))
                paint(image, m, COLOURS[colour_name])
                discs.append((dx, dy, rd))
                objects.append(SceneObject(kind, str(colour_name), COLOURS[colour_name], m))
                break
    return finish(image, rng, noise=5.0), COD_QUERY, objects, 0, "camouflage"


_GENERATORS = {"shapes": _gen_shapes, "reasonseg": _gen_reasonseg, "cod": _gen_cod, "earthreason": generate_earthreason}


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


def synthetic_dataset(name: str, split: str, **options) -> SyntheticDataset:
    """The synthetic world ``name``, split ``split``; options ``size``, ``image_size`` (>= 64), ``seed``."""
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
