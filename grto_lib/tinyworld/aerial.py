"""The ``earthreason`` world: aerial-like scenes (terrain, fields, roads, a river, a lake, buildings) and queries
about landmarks and their relations (see ``grto_lib.tinyworld.worlds``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from grto_lib.tinyworld.drawing import AREA_RATIO, SceneObject, finish, grow, paint, pixel_centres, visible_parts

EARTH_RGB = {"terrain": (170, 160, 115), "green": (70, 140, 55), "brown": (140, 100, 60), "river": (55, 105, 185),
             "lake": (45, 95, 175), "road": (128, 128, 128), "building": (70, 60, 60)}

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
    yy, xx = pixel_centres(size)
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
    yy, xx = pixel_centres(size)
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
            near = grow(lake, max(int(3 * s), 1))
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
    blocked = grow(blocked, max(int(2 * s), 1))
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
    visible = visible_parts([m for *_, m in raw])
    return [SceneObject(k, c, rgb, v) for (k, c, rgb, _), v in zip(raw, visible)]


def _render_aerial(objects: list[SceneObject], rng, size: int) -> np.ndarray:
    s = size / 128
    coarse = rng.normal(0, 8, (size // 16 + 1, size // 16 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    image = np.asarray(EARTH_RGB["terrain"], dtype=np.float32) + texture[..., None]
    rows = (np.arange(size) // max(int(2 * s), 1)) % 2 == 0
    for o in objects:
        paint(image, o.mask, o.rgb)
        if o.kind == "field":  # crop rows: every other row slightly darker
            image[o.mask & rows[:, None]] *= 0.88
        if o.kind == "building":  # a light roof edge so buildings read as blocks
            ys, xs = np.nonzero(o.mask)
            image[ys.min(), xs.min():xs.max() + 1] = (150, 140, 135)
    return finish(image, rng, noise=4.0)


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
        t = _unique_extreme(np.array([objs[b].area for b in buildings], float), word == "largest", ratio=AREA_RATIO)
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


def generate_earthreason(rng, size: int):
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
