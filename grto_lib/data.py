"""Datasets: ``load_dataset``, the one entry point, the loaders of the real releases, and the order RL visits a
training split in (``training_order``).

``load_dataset(name, split)`` returns the tiny world's synthetic generator (``grto_lib.tinyworld.worlds``);
``load_dataset(name, split, root=folder)`` reads a real release: ReasonSeg (LISA's json + labelme polygons),
the COD releases (image and ground-truth PNG folders) and EarthReason (SegEarth-R1's RSReasonSeg). Folder
listings, file pairing and queries are validated when the dataset is built, pixels are read on access, and every
error names the file and what was expected.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from grto_lib.sample import Sample
from grto_lib.tinyworld.worlds import COD_QUERY, NAMES, SPLITS, synthetic_dataset

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


def _annotation(path: Path, field_name: str, note: str = "") -> dict:
    """The json object of ``path``, which must hold ``field_name``."""
    value = _read_json(path)
    if not isinstance(value, dict) or field_name not in value:
        raise ValueError(f"{path}: missing field '{field_name}'{note}")
    return value


def _query_entries(id_prefix: str, image: Path, target: Path, value, source: Path, field_name: str,
                   mode: str) -> list[_Entry]:
    """One entry per query of ``source``'s field ``field_name`` (validated; ``mode`` "all" or "first"), with ids
    ``{id_prefix}#{query index}``."""
    return [_Entry(image, q, f"{id_prefix}#{k}", target)
            for k, q in enumerate(_select(_queries(value, source, field_name), mode))]


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
        anno = _annotation(jsons[stem], "text", " (the list of queries)")
        _lisa_polygons(anno, jsons[stem])  # validate up front; rasterised on access
        entries += _query_entries(f"reasonseg/{split}/{stem}", image, jsons[stem], anno["text"], jsons[stem], "text",
                                  queries)
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
        qa = _annotation(qas[stem], "questions")
        entries += _query_entries(f"earthreason/{split}/{stem}", image, labels[stem], qa["questions"], qas[stem],
                                  "questions", queries)
    return FolderDataset("earthreason", split, base, entries, allow_empty)


# --------------------------------------------------------------------------------------------------------------
# Entry point


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
        return synthetic_dataset(name, split, **options)
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


# --------------------------------------------------------------------------------------------------------------
# The order RL visits the training samples


def query_kinds(dataset) -> list:
    """How each sample's query was made (``Scene.query_kind``) for a synthetic dataset, which draws each scene to
    tell (and keeps none); None for every sample of a real one, none of whose files is read."""
    if hasattr(dataset, "scene"):
        return [dataset.scene(i).query_kind for i in range(len(dataset))]
    return [None] * len(dataset)


def stratified_order(kinds: list, seed: int) -> np.ndarray:
    """The order in which training visits samples of the given query ``kinds``: a seeded permutation,
    stratified by kind.

    Within each kind the samples are shuffled and spread evenly over the epoch (sample r of a kind with n
    samples sits at ``(r + u_kind) / n``, u ~ U(0, 1)), so every run of consecutive prompts, one RL step's
    batch, holds the kinds in about their proportions. Steps are then alike in difficulty: the training reward
    moves with the policy, not with the draw of easy or hard queries, and every gradient covers every kind.
    Kinds all None (real data): a plain permutation. Training runs through this order, the same every epoch.
    """
    rng = np.random.default_rng(seed)
    kinds = np.array([str(k) for k in kinds])
    keys = np.empty(len(kinds))
    for kind in sorted(set(kinds)):
        members = rng.permutation(np.flatnonzero(kinds == kind))
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return np.argsort(keys, kind="stable")


def training_order(kinds: list, seed: int, rl_prompts: int = 0) -> np.ndarray:
    """The samples RL visits, in order, every epoch: ``stratified_order`` cut to its first ``rl_prompts``
    (``TrainConfig.rl_prompts``; 0: all)."""
    return stratified_order(kinds, seed)[:rl_prompts or None]
