"""Tests of grto_lib.data: the synthetic worlds (contract, determinism, query semantics, query-blind baselines)
and the real-format loaders (fixtures written in the released layouts, every error case)."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from grto_lib.data import NAMES, SPLITS, load_dataset
from grto_lib.tinyworld.drawing import COLOURS, SHAPES, shape_mask
from grto_lib.tinyworld.worlds import COD_QUERY, DEFAULT_SIZES, query_corpus
from grto_lib.sample import Sample
from real_formats import earthreason_folder, lisa_json, rect, reasonseg_folder, write_image, write_mask

SYNTHETIC = NAMES  # every name has a synthetic generator


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _digest(sample: Sample) -> str:
    return hashlib.sha1(sample.image.tobytes() + sample.mask.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Synthetic: contract


@pytest.mark.parametrize("name", SYNTHETIC)
def test_sample_contract(name):
    ds = load_dataset(name, "val", size=30)
    assert len(ds) == 30
    ids = set()
    for s in ds:
        assert isinstance(s, Sample)
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (128, 128) and s.mask.dtype == bool
        assert s.mask.sum() >= 16, "targets are visible objects"
        assert s.ignore is None
        assert isinstance(s.query, str) and s.query.startswith("the ")
        ids.add(s.id)
    assert ids == {f"{name}/val/{i:05d}" for i in range(30)}


@pytest.mark.parametrize("name", SYNTHETIC)
@pytest.mark.parametrize("image_size", [64, 96, 160])
def test_image_size_option(name, image_size):
    s = load_dataset(name, "train", size=3, image_size=image_size)[2]
    assert s.image.shape == (image_size, image_size, 3) and s.mask.shape == (image_size, image_size)
    assert s.mask.any()


def test_default_sizes():
    assert DEFAULT_SIZES == {"train": 2000, "val": 200, "test": 200}
    for split in SPLITS:
        assert len(load_dataset("reasonseg", split)) == DEFAULT_SIZES[split]


@pytest.mark.parametrize("name", SYNTHETIC)
def test_deterministic_and_order_independent(name):
    a = load_dataset(name, "train", size=20, seed=3)
    b = load_dataset(name, "train", size=20, seed=3)
    forward = [_digest(a[i]) + a[i].query for i in range(20)]
    backward = [_digest(b[i]) + b[i].query for i in reversed(range(20))][::-1]
    assert forward == backward
    assert a[-1].id == a[19].id and _digest(a[-1]) == _digest(a[19])
    assert [s.id for s in a[2:5]] == [f"{name}/train/{i:05d}" for i in (2, 3, 4)]
    other_seed = load_dataset(name, "train", size=20, seed=4)
    assert sum(_digest(other_seed[i]) + other_seed[i].query == forward[i] for i in range(20)) == 0


@pytest.mark.parametrize("name", SYNTHETIC)
def test_splits_disjoint(name):
    digests = {split: {_digest(s) for s in load_dataset(name, split, size=60)} for split in SPLITS}
    for split in SPLITS:
        assert len(digests[split]) == 60, "no repeated sample within a split"
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def test_index_errors():
    ds = load_dataset("shapes", "test", size=5)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(IndexError):
        ds[-6]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("coco", "train"), {}, "allowed: .*reasonseg"),
        (("shapes", "dev"), {}, "allowed: .*train"),
        (("shapes", "train"), {"image_size": 32}, ">= 64"),
        (("shapes", "train"), {"image_size": 100.0}, "image_size"),
        (("shapes", "train"), {"size": 0}, "size"),
        (("shapes", "train"), {"seed": -1}, "seed"),
        (("shapes", "train"), {"colour": "red"}, r"allowed: \['image_size', 'seed', 'size'\]"),
        (("reasonseg", "train"), {"queries": "all"}, "unknown option"),
        (("shapes", "train", "/tmp"), {}, "synthetic only"),
    ],
)
def test_option_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic: drawing


def test_shape_mask_pixel_counts():
    # circle r=2 centred on a pixel corner: centres at offsets (+-0.5, +-0.5) and (+-1.5, +-0.5) are inside
    # (d^2 = 0.5, 2.5 <= 4), (+-1.5, +-1.5) is not (4.5): 4 + 8 = 12 pixels
    assert shape_mask("circle", 10, 10, 2, (20, 20)).sum() == 12
    # square of half-side 0.7 r = 7: centre offsets +-0.5 ... +-6.5 -> 14 x 14
    assert shape_mask("square", 50, 50, 10, (100, 100)).sum() == 196
    # ring keeps the annulus 0.5 r <= d <= r: the centre pixel is empty, a pixel at distance 0.75 r is set
    ring = shape_mask("ring", 50, 50, 20, (100, 100))
    assert not ring[49:51, 49:51].any() and ring[49, 50 + 15]
    # areas relative to the bounding disc: circle ~ pi r^2, triangle = 3 sqrt(3)/4 r^2
    r = 40
    assert abs(shape_mask("circle", 50, 50, r, (100, 100)).sum() / (np.pi * r * r) - 1) < 0.02
    assert abs(shape_mask("triangle", 50, 50, r, (100, 100)).sum() / (3 * np.sqrt(3) / 4 * r * r) - 1) < 0.03
    for kind in SHAPES:  # everything fits inside the disc of radius r
        m = shape_mask(kind, 50, 50, r, (100, 100))
        ys, xs = np.nonzero(m)
        assert ((xs + 0.5 - 50) ** 2 + (ys + 0.5 - 50) ** 2).max() <= r * r + 1e-9
    with pytest.raises(ValueError, match="allowed"):
        shape_mask("hexagon", 5, 5, 3, (10, 10))


@pytest.mark.parametrize("name", ["shapes", "reasonseg"])
def test_shapes_are_drawn_in_their_colours_without_overlap(name):
    ds = load_dataset(name, "test", size=40)
    for i in range(40):
        scene = ds.scene(i)
        masks = np.stack([o.mask for o in scene.objects])
        assert masks.sum(0).max() == 1, "objects never overlap"
        assert len({o.colour for o in scene.objects}) == len(scene.objects), "one colour per object"
        assert (1 if name == "shapes" else 2) <= len(scene.objects) <= (3 if name == "shapes" else 4)
        for o in scene.objects:
            mean = scene.sample.image[o.mask].astype(float).mean(0)
            assert np.abs(mean - COLOURS[o.colour]).max() < 4, "noise of std 4 averages out"
        assert np.array_equal(scene.sample.mask, scene.objects[scene.target].mask)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic: queries


def test_query_corpus_covers_generated_queries():
    corpus = query_corpus()
    assert corpus == sorted(set(corpus)) and COD_QUERY in corpus
    vocabulary = {w for q in corpus for w in q.split()}
    assert set(COLOURS) | set(SHAPES) | {"river", "lake", "road", "building", "field"} <= vocabulary
    queries = {s.query for name in SYNTHETIC for s in load_dataset(name, "train", size=150)}
    assert queries <= set(corpus), sorted(queries - set(corpus))[:5]
    assert {w for q in queries for w in q.split()} <= vocabulary


def test_shapes_queries_are_explicit_and_correct():
    ds = load_dataset("shapes", "train", size=200)
    forms = set()
    for i in range(len(ds)):
        scene = ds.scene(i)
        target, words = scene.objects[scene.target], scene.sample.query.split()
        assert words[0] == "the" and len(words) in (2, 3)
        if len(words) == 3:
            assert words[1] == target.colour and words[2] in (target.kind, "shape")
            forms.add("colour shape" if words[2] == "shape" else "colour kind")
        else:
            assert words[1] == target.kind and sum(o.kind == target.kind for o in scene.objects) == 1
            forms.add("kind")
    assert forms == {"colour kind", "colour shape", "kind"}


# An independent reading of the reasonseg grammar: what each query means, written from the task description.
THINGS = {"a tomato": "red", "a strawberry": "red", "grass": "green", "a leaf": "green", "the sky": "blue",
          "the sea": "blue", "a banana": "yellow", "the sun": "yellow", "a grape": "purple", "a plum": "purple",
          "a carrot": "orange", "a pumpkin": "orange"}
IMPLICIT = {"roll": {"circle", "ring"}, "round": {"circle", "ring"}, "coin": {"circle"}, "moon": {"circle"},
            "hole": {"ring"}, "donut": {"ring"}, "three corners": {"triangle"}, "pizza": {"triangle"},
            "warning": {"triangle"}, "four equal": {"square"}, "dice": {"square"}, "five points": {"star"},
            "night sky": {"star"}, "plus": {"cross"}, "first aid": {"cross"}}


def _resolve_reference(phrase, objects):
    words = phrase.split()  # "the blue one" | "the blue square" | "the square"
    if len(words) == 3:
        return [k for k, o in enumerate(objects) if o.colour == words[1] and words[2] in ("one", o.kind)]
    return [k for k, o in enumerate(objects) if o.kind == words[1]]


def test_reasonseg_queries_have_one_correct_answer():
    ds = load_dataset("reasonseg", "train", size=400)
    seen = set()
    for i in range(len(ds)):
        scene = ds.scene(i)
        objs, t, q = scene.objects, scene.target, scene.sample.query
        target, others = objs[t], [o for k, o in enumerate(objs) if k != t]
        cx = [o.center[0] for o in objs]
        cy = [o.center[1] for o in objs]
        if m := re.fullmatch(r"the shape the colour of (.+)", q):
            assert target.colour == THINGS[m[1]]
            seen.add("implicit colour")
        elif m := re.fullmatch(r"the shape (left of|right of|above|below|nearest|farthest from) (the .+)", q):
            refs = _resolve_reference(m[2], objs)
            assert len(refs) == 1 and refs[0] != t
            r = refs[0]
            sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
            if m[1] in sign:
                axis, direction = sign[m[1]]
                c = cx if axis == 0 else cy
                ahead = [k for k in range(len(objs)) if k != r and direction * (c[k] - c[r]) > 0]
                assert ahead == [t], "the only shape on that side of the reference"
            else:
                d = [np.hypot(cx[k] - cx[r], cy[k] - cy[r]) if k != r else np.nan for k in range(len(objs))]
                best = np.nanargmin(d) if m[1] == "nearest" else np.nanargmax(d)
                assert best == t
            seen.add(m[1])
        elif m := re.fullmatch(r"the (largest|smallest|leftmost|rightmost|topmost|lowest) shape", q):
            key = {"largest": [-o.area for o in objs], "smallest": [o.area for o in objs], "leftmost": cx,
                   "rightmost": [-x for x in cx], "topmost": cy, "lowest": [-y for y in cy]}[m[1]]
            assert int(np.argmin(key)) == t
            seen.add(m[1])
        elif m := re.fullmatch(r"the (\w+) (\w+)", q):
            if m[1] in COLOURS:
                assert target.colour == m[1] and m[2] in (target.kind, "shape")
            else:
                assert m[2] == "shape" and m[1] in ("round",)
                assert [o.kind in IMPLICIT["round"] for o in objs].count(True) == 1
                assert target.kind in IMPLICIT["round"]
            seen.add("explicit")
        elif re.fullmatch(r"the (circle|square|triangle|star|ring|cross)", q):
            assert q == f"the {target.kind}" and all(o.kind != target.kind for o in others)
            seen.add("explicit")
        else:
            key = next(k for k in IMPLICIT if k in q)
            assert target.kind in IMPLICIT[key] and all(o.kind not in IMPLICIT[key] for o in others), q
            seen.add("implicit shape")
    assert {"implicit colour", "implicit shape", "explicit", "largest", "left of", "nearest"} <= seen


def test_earthreason_queries_have_one_correct_answer():
    ds = load_dataset("earthreason", "train", size=200)
    kinds = set()
    for i in range(len(ds)):
        scene = ds.scene(i)
        objs, t, q = scene.objects, scene.target, scene.sample.query
        target = objs[t]
        by_kind = lambda k: [j for j, o in enumerate(objs) if o.kind == k]  # noqa: E731
        if m := re.fullmatch(r"the (building|field) (nearest|farthest from) the (river|lake|road)", q):
            (landmark,) = by_kind(m[3])
            dist = ndimage.distance_transform_edt(~objs[landmark].mask)
            candidates = by_kind(m[1])
            d = [dist[objs[j].mask].min() for j in candidates]
            assert candidates[int(np.argmin(d) if m[2] == "nearest" else np.argmax(d))] == t
            kinds.add(f"{m[1]} {m[2]}")
        elif m := re.fullmatch(r"the (largest|smallest) (building|field)", q):
            candidates = by_kind(m[2])
            areas = [objs[j].area for j in candidates]
            assert len(candidates) >= 2
            assert candidates[int(np.argmax(areas) if m[1] == "largest" else np.argmin(areas))] == t
            kinds.add(m[0])
        elif m := re.fullmatch(r"the (river|lake|road)", q):
            assert by_kind(m[1]) == [t]
            kinds.add("landmark")
        elif m := re.fullmatch(r"the (green|brown) field", q):
            assert [j for j in by_kind("field") if objs[j].colour == m[1]] == [t]
            kinds.add("field colour")
        else:
            assert q in ("the field crossed by the road", "the field crossed by a road",
                         "the field the river flows through"), q
            assert target.kind == "field"
            kinds.add("field crossed")
    assert {"building nearest", "the largest building", "landmark", "field colour", "field crossed"} <= kinds


def test_cod_scene():
    ds = load_dataset("cod", "train", size=100)
    n_distractors = []
    for i in range(len(ds)):
        scene = ds.scene(i)
        assert scene.sample.query == COD_QUERY and scene.target == 0
        target = scene.objects[0]
        assert target.kind == "blob" and not target.salient
        assert all(o.salient and o.kind in SHAPES for o in scene.objects[1:])
        n_distractors.append(len(scene.objects) - 1)
        # camouflage: the target's mean colour is closer to its surroundings than any distractor's
        ring = ndimage.binary_dilation(target.mask, iterations=4) & ~target.mask
        for o in scene.objects[1:]:
            ring &= ~o.mask
        img = scene.sample.image.astype(float)
        contrast = np.abs(img[target.mask].mean(0) - img[ring].mean(0)).max()
        assert contrast < 60
    assert set(n_distractors) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------------------------
# Synthetic: a policy that ignores the query must score clearly worse than the ground truth (IoU 1)


def _saturation(rgb) -> float:
    rgb = np.asarray(rgb, dtype=float)
    return (rgb.max() - rgb.min()) / max(rgb.max(), 1.0)


def _largest_foreground_component(image: np.ndarray) -> np.ndarray:
    """Pixel-level query-blind rule: the largest connected region that differs from the border's median colour."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
    foreground = np.abs(image.astype(float) - np.median(border, 0)).max(-1) > 40
    labels, n = ndimage.label(foreground)
    if n == 0:
        return foreground
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


@pytest.mark.parametrize("name", ["reasonseg", "cod", "earthreason"])
def test_query_blind_rules_score_clearly_worse(name):
    ds = load_dataset(name, "test", size=100)
    rules = {"largest object": [], "most salient object": [], "largest foreground component": []}
    for i in range(len(ds)):
        scene = ds.scene(i)
        objs, gt = scene.objects, scene.sample.mask
        rules["largest object"].append(_iou(max(objs, key=lambda o: o.area).mask, gt))
        salient = max(objs, key=lambda o: (o.salient, _saturation(o.rgb), o.area))
        rules["most salient object"].append(_iou(salient.mask, gt))
        if name != "cod":  # COD's background is textured: no pixel-level "background colour" to subtract
            rules["largest foreground component"].append(_iou(_largest_foreground_component(scene.sample.image), gt))
    means = {rule: float(np.mean(v)) for rule, v in rules.items() if v}
    assert all(m < 0.6 for m in means.values()), means


def test_query_blind_rule_is_fine_on_easy_shapes():
    """Control for the test above: on "shapes" with a single object the largest-object rule is perfect."""
    ds = load_dataset("shapes", "test", size=100)
    single = [ds.scene(i) for i in range(100) if len(ds.scene(i).objects) == 1]
    assert single and all(_iou(max(s.objects, key=lambda o: o.area).mask, s.sample.mask) == 1.0 for s in single)


# ---------------------------------------------------------------------------------------------------------------
# Real formats: fixtures in the released layouts


def test_reasonseg_folder(tmp_path):
    reasonseg_folder(tmp_path)
    ds = load_dataset("reasonseg", "val", root=tmp_path)
    assert len(ds) == 3
    assert [s.id for s in ds] == ["reasonseg/val/img_a#0", "reasonseg/val/img_a#1", "reasonseg/val/img_b#0"]
    assert [s.query for s in ds] == ["what can hold water?", "the cup", "the small thing"]
    a = ds[0]
    assert a.image.shape == (30, 40, 3) and a.image.dtype == np.uint8
    # outline included: x 2..21, y 2..11 -> 20 x 10 = 200; ignore x 5..9, y 5..8 -> 5 x 4 = 20, removed from mask
    assert a.mask.sum() == 180 and a.ignore.sum() == 20
    assert not (a.mask & a.ignore).any()
    assert a.ignore[5:9, 5:10].all() and a.mask[2:12, 2:22].sum() == 180
    assert not a.mask[20:26, 30:36].any(), "'flag' regions are dropped"
    b = ds[2]
    assert b.image.shape == (30, 40, 3), "grayscale converted to RGB"
    assert b.mask.sum() == 5 * 3 and b.mask[10:13, 10:15].all()
    assert b.ignore.sum() == 40 * 30 - 15
    first = load_dataset("reasonseg", "val", root=tmp_path, queries="first")
    assert [s.id for s in first] == ["reasonseg/val/img_a#0", "reasonseg/val/img_b#0"]


def test_reasonseg_nested_layout(tmp_path):
    """LISA's release nests the splits under ReasonSeg/."""
    reasonseg_folder(tmp_path / "ReasonSeg")
    assert len(load_dataset("reasonseg", "val", root=tmp_path)) == 3


def test_reasonseg_rectangle_and_cp1252(tmp_path):
    folder = tmp_path / "test"
    write_image(folder / "x.jpg")
    (folder / "x.json").write_bytes(json.dumps({
        "text": ["caf\u00e9 sign"], "is_sentence": False,
        "shapes": [{"label": "target", "points": [[1, 1], [4, 3]], "shape_type": "rectangle"}]},
        ensure_ascii=False).encode("cp1252"))
    s = load_dataset("reasonseg", "test", root=tmp_path)[0]
    assert s.query == "caf\u00e9 sign" and s.mask.sum() == 4 * 3


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (lambda f: (f / "img_a.json").unlink(), ValueError, r"img_a.jpg.*no annotation json"),
        (lambda f: write_image(f / "orphan.png") or (f / "img_a.json").rename(f / "other.json"), ValueError,
         "no annotation json"),
        (lambda f: (f / "img_a.json").write_text("{not json"), ValueError, r"malformed JSON .*img_a.json"),
        (lambda f: (f / "img_a.json").write_text(json.dumps({"shapes": []})), ValueError, r"img_a.json.*'text'"),
        (lambda f: (f / "img_a.json").write_text(json.dumps({"text": ["q"]})), ValueError, r"img_a.json.*'shapes'"),
        (lambda f: (f / "img_a.json").write_text(json.dumps({"text": ["ok", "  "], "shapes": []})), ValueError,
         r"empty query at text\[1\]"),
        (lambda f: (f / "img_a.json").write_text(json.dumps({"text": [], "shapes": []})), ValueError,
         "non-empty list"),
        (lambda f: (f / "img_a.json").write_text(json.dumps({"text": ["q"], "shapes": [{"label": "t"}]})),
         ValueError, r"shapes\[0\]"),
        (lambda f: (f / "img_a.json").write_text(json.dumps(
            {"text": ["q"], "shapes": [{"label": "t", "points": [[1, 2], [3]]}]})), ValueError, "points"),
        (lambda f: (f / "img_a.json").write_text(json.dumps(
            {"text": ["q"], "shapes": [{"label": "t", "points": [[1, 2]], "shape_type": "circle"}]})), ValueError,
         "shape_type 'circle'"),
    ],
)
def test_reasonseg_folder_errors_at_load(tmp_path, corrupt, error, match):
    corrupt(reasonseg_folder(tmp_path))
    with pytest.raises(error, match=match):
        load_dataset("reasonseg", "val", root=tmp_path)


def test_reasonseg_folder_errors_on_access(tmp_path):
    folder = reasonseg_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="ReasonSeg 'test'"):
        load_dataset("reasonseg", "test", root=tmp_path)
    (folder / "img_a.jpg").write_bytes(b"this is not a jpeg")
    lisa_json(folder / "img_b.json", ["only ignore"], [{"label": "ignore", "points": rect(0, 0, 5, 5)}])
    ds = load_dataset("reasonseg", "val", root=tmp_path)  # the listing is fine; pixels are read on access
    with pytest.raises(ValueError, match=r"cannot read image .*img_a.jpg"):
        ds[0]
    with pytest.raises(ValueError, match=r"empty ground-truth mask in .*img_b.json.*allow_empty=True"):
        ds[2]
    with pytest.raises(ValueError, match="img_a.jpg"):
        ds.check()
    kept = load_dataset("reasonseg", "val", root=tmp_path, allow_empty=True)[2]
    assert not kept.mask.any() and kept.ignore.sum() == 36


def test_cod_folder(tmp_path):
    root = tmp_path / "TestDataset" / "COD10K"
    write_image(root / "Imgs" / "COD10K-CAM-1.jpg")
    write_mask(root / "GT" / "COD10K-CAM-1.png", box=(2, 3, 12, 8))
    write_image(root / "Imgs" / "COD10K-CAM-2.png", mode="RGBA")
    write_mask(root / "GT" / "COD10K-CAM-2.png", box=(0, 0, 40, 2), value=200)
    ds = load_dataset("cod", "test", root=root)
    assert [s.id for s in ds] == ["cod/test/COD10K-CAM-1", "cod/test/COD10K-CAM-2"]
    assert all(s.query == COD_QUERY and s.ignore is None for s in ds)
    assert ds[0].mask.sum() == 10 * 5 and ds[0].mask[3:8, 2:12].all()
    assert ds[1].image.shape == (30, 40, 3) and ds[1].mask.sum() == 80
    with pytest.raises(ValueError, match="unknown option 'queries'"):
        load_dataset("cod", "test", root=root, queries="first")


def test_cod_alternative_layout_and_threshold(tmp_path):
    write_image(tmp_path / "Image" / "camo_1.jpg")
    write_mask(tmp_path / "GT_Object" / "camo_1.png", box=(0, 0, 10, 10), value=128)
    with pytest.raises(ValueError, match="empty ground-truth mask"):
        load_dataset("cod", "train", root=tmp_path)[0]  # grey 128 is not > 128 (py_sod_metrics' threshold)
    write_mask(tmp_path / "GT_Object" / "camo_1.png", box=(0, 0, 10, 10), value=129)
    assert load_dataset("cod", "train", root=tmp_path)[0].mask.sum() == 100


def test_cod_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cod", "test", root=tmp_path / "missing")
    write_image(tmp_path / "Imgs" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="GT/ or GT_Object/"):
        load_dataset("cod", "test", root=tmp_path)
    write_mask(tmp_path / "GT" / "b.png")
    with pytest.raises(ValueError, match=r"a.jpg .*expected .*GT/a"):
        load_dataset("cod", "test", root=tmp_path)
    write_mask(tmp_path / "GT" / "a.png", w=20)
    with pytest.raises(ValueError, match="b.png has no image"):
        load_dataset("cod", "test", root=tmp_path)
    (tmp_path / "GT" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"mask .*a.png is 20x30 .* image .*a.jpg is 40x30"):
        load_dataset("cod", "test", root=tmp_path)[0]
    (tmp_path / "GT" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot read mask .*a.png"):
        load_dataset("cod", "test", root=tmp_path)[0]
    write_image(tmp_path / "Imgs" / "a.png")
    with pytest.raises(ValueError, match="two files with stem 'a'"):
        load_dataset("cod", "test", root=tmp_path)


def test_earthreason_folder(tmp_path):
    d = earthreason_folder(tmp_path)
    ds = load_dataset("earthreason", "val", root=tmp_path)
    assert len(ds) == 4
    assert [s.id for s in ds] == ["earthreason/val/0001#0", "earthreason/val/0001#1", "earthreason/val/0002#0",
                                  "earthreason/val/0002#1"]
    assert ds[0].query == "where could a plane land? (0001)" and ds[1].query == "which area is flat?"
    assert ds[0].mask.sum() == 50 and ds[2].mask.sum() == 200 and ds[2].mask[10:30, 20:30].all()
    assert ds[0].image.shape == (30, 40, 3) and ds[0].ignore is None
    assert len(load_dataset("earthreason", "val", root=tmp_path / "RSReasonSeg")) == 4, "root may be RSReasonSeg"
    assert [s.query for s in load_dataset("earthreason", "val", root=tmp_path, queries="first")] == [
        "where could a plane land? (0001)", "where could a plane land? (0002)"]
    (d / "QAs" / "0002.json").rename(d / "QAs" / "0002.txt")  # the reference loader also reads .txt
    assert len(load_dataset("earthreason", "val", root=tmp_path)) == 4


@pytest.mark.parametrize(
    "corrupt, error, match",
    [
        (lambda d: (d / "labels" / "0002.png").unlink(), ValueError, r"0002.jpg .*no label"),
        (lambda d: (d / "QAs" / "0001.json").unlink(), ValueError, r"0001.jpg .*no QA"),
        (lambda d: write_mask(d / "labels" / "0003.png"), ValueError, r"0003.png has no image"),
        (lambda d: (d / "QAs" / "0001.json").write_text("[1, 2"), ValueError, r"malformed JSON .*0001.json"),
        (lambda d: (d / "QAs" / "0001.json").write_text('{"answer": []}'), ValueError, "'questions'"),
        (lambda d: (d / "QAs" / "0001.json").write_text('{"questions": [""]}'), ValueError, "empty query"),
        (lambda d: [p.unlink() for p in (d / "QAs").iterdir()] and (d / "QAs").rmdir(), FileNotFoundError,
         "EarthReason QAs"),
    ],
)
def test_earthreason_folder_errors_at_load(tmp_path, corrupt, error, match):
    corrupt(earthreason_folder(tmp_path))
    with pytest.raises(error, match=match):
        load_dataset("earthreason", "val", root=tmp_path)


def test_earthreason_folder_errors_on_access(tmp_path):
    d = earthreason_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="EarthReason 'train'"):
        load_dataset("earthreason", "train", root=tmp_path)
    write_mask(d / "labels" / "0001.png", h=31)
    write_mask(d / "labels" / "0002.png", value=0)  # a no-target sample
    ds = load_dataset("earthreason", "val", root=tmp_path)
    with pytest.raises(ValueError, match="0001.png is 40x31"):
        ds[0]
    with pytest.raises(ValueError, match="empty ground-truth mask in .*0002.png"):
        ds[2]
    assert not load_dataset("earthreason", "val", root=tmp_path, allow_empty=True)[2].mask.any()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"size": 10}, r"unknown option 'size'.*allowed: \['allow_empty', 'queries'\]"),
     ({"queries": "last"}, r"queries must be one of \('all', 'first'\)"),
     ({"allow_empty": 1}, "allow_empty must be one of")],
)
def test_real_option_validation(tmp_path, kwargs, match):
    earthreason_folder(tmp_path)
    with pytest.raises(ValueError, match=match):
        load_dataset("earthreason", "val", root=tmp_path, **kwargs)
