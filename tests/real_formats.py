"""Small dataset folders in the real releases' layouts (ReasonSeg's LISA json, COD's Imgs/GT, EarthReason's
RSReasonSeg), written by the tests that load real-format data."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image


def write_image(path, w=40, h=30, mode="RGB", value=(10, 120, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        value = value[0]
    elif mode == "RGBA":
        value = (*value, 128)
    Image.new(mode, (w, h), value).save(path)


def write_mask(path, w=40, h=30, box=(2, 3, 12, 8), value=255):
    """A binary PNG whose ``box = (x1, y1, x2, y2)`` (x2, y2 exclusive) is ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = value
    Image.fromarray(a).save(path)


def rect(x1, y1, x2, y2):
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def lisa_json(path, text, shapes, is_sentence=True):
    path.write_text(json.dumps({"text": text, "is_sentence": is_sentence, "shapes": shapes}))


def reasonseg_folder(tmp_path, split="val"):
    folder = tmp_path / split
    write_image(folder / "img_a.jpg")
    lisa_json(folder / "img_a.json", ["what can hold water?", "the cup"], [
        {"label": "target", "points": rect(2, 2, 21, 11), "shape_type": "polygon"},
        {"label": "ignore", "points": rect(5, 5, 9, 8), "shape_type": "polygon"},
        {"label": "flag", "points": rect(30, 20, 35, 25), "shape_type": "polygon"},
    ])
    write_image(folder / "img_b.jpg", mode="L")
    lisa_json(folder / "img_b.json", ["the small thing"], [
        {"label": "ignore", "points": rect(0, 0, 39, 29), "shape_type": "polygon"},  # larger: drawn first
        {"label": "target", "points": rect(10.7, 10.2, 14.9, 12.9), "shape_type": "polygon"},  # wins, ints 10..14
    ])
    return folder


def earthreason_folder(base, split="val"):
    d = base / "RSReasonSeg" / split
    for stem, box in (("0001", (2, 3, 12, 8)), ("0002", (20, 10, 30, 30))):
        write_image(d / "images" / f"{stem}.jpg")
        write_mask(d / "labels" / f"{stem}.png", box=box, value=1)  # any non-zero pixel is target
        (d / "QAs").mkdir(parents=True, exist_ok=True)
        (d / "QAs" / f"{stem}.json").write_text(json.dumps(
            {"questions": [f"where could a plane land? ({stem})", "which area is flat?"], "answer": ["the runway"]}))
    return d
