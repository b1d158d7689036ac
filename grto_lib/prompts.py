"""The chat prompt the policy reads and the answer it must write: the one place the format is defined.

A completion looks like::

    <think>the target is the red circle</think><answer>{"bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}</answer>

Coordinates are pixels of the image **as the policy sees it**: every image is resized to a square of
``policy_image_size`` pixels before it reaches the policy (128 for the tiny world, 840 for the paper
preset, as Seg-Zero does). ``answer_to_image_pixels`` maps an answer back onto the original image.
Whitespace between tokens is allowed anywhere (the tiny policy's word-level tokenizer decodes with spaces).

Two system prompts, one per kind of policy (``system_prompt_for`` picks it from the policy's processor):

* ``SYSTEM_PROMPT`` states the format exactly (tags, JSON keys, pixel frame, an example), the way Seg-Zero and
  VLM-R1 prompt Qwen2.5-VL: a real Qwen2.5-VL has never seen this format and writes its own JSON unless told.
* ``TINY_SYSTEM_PROMPT`` is the tiny stand-in's: it was trained on this sentence, and its word-level tokenizer
  knows no other words, so it keeps it.
"""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def format_answer(bbox, points, think: str = "") -> str:
    """The completion the policy should write for a box ``[x1, y1, x2, y2]`` and points ``[[x, y], ...]``."""
    payload = {"bbox": [int(round(v)) for v in bbox], "points": [[int(round(x)), int(round(y))] for x, y in points]}
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{json.dumps(payload)}{ANSWER_CLOSE}"


ANSWER_EXAMPLE = format_answer([10, 100, 200, 210], [[30, 110], [35, 180]], think="reasoning here")
"""The example completion ``SYSTEM_PROMPT`` ends with."""
SYSTEM_PROMPT = (
    "You segment the one object in the image that the user's query refers to. First think: look at the objects "
    f"in the image, compare them with the query and decide which one it means, inside {THINK_OPEN} "
    f"{THINK_CLOSE} tags. Then write the answer inside {ANSWER_OPEN} {ANSWER_CLOSE} tags as JSON with two keys: "
    '"bbox", the bounding box [x1, y1, x2, y2] of the object, and "points", two points [x, y] inside the '
    "object. Coordinates are integer pixels of the image as you see it, x to the right and y down from its "
    "top-left corner. Write exactly one answer and nothing after it, in this form: " + ANSWER_EXAMPLE
)
"""The system prompt of a real Qwen2.5-VL policy (the paper preset): the format, stated in full."""
TINY_SYSTEM_PROMPT = (
    "You segment the object a query refers to. Think first, then answer with a bounding box and points "
    "inside the object, in pixels of the image."
)
"""The tiny stand-in's system prompt (its tokenizer was built on these words; changing it needs a rebuild)."""


def system_prompt_for(processor) -> str:
    """The system prompt of the policy whose processor this is: the processor's own ``system_prompt`` (the tiny
    stand-in's processor declares ``TINY_SYSTEM_PROMPT``), else ``SYSTEM_PROMPT``."""
    return getattr(processor, "system_prompt", SYSTEM_PROMPT)


def build_messages(query: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    """The conversation TRL expects for a vision-language prompt: a system turn and a user turn with one image.
    Pass ``system_prompt_for(processor)`` for the policy at hand (the default is a real Qwen2.5-VL's)."""
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": query}]},
    ]


def policy_view(image: np.ndarray, policy_image_size: int) -> Image.Image:
    """The image as the policy sees it: RGB, resized to a ``policy_image_size`` square."""
    pil = Image.fromarray(image).convert("RGB")
    if pil.size != (policy_image_size, policy_image_size):
        pil = pil.resize((policy_image_size, policy_image_size), Image.BILINEAR)
    return pil


def answer_to_image_pixels(bbox, points, image_hw: tuple[int, int], policy_image_size: int):
    """Scale a box and points from the policy's square view to the original ``(H, W)`` image, clipped to it."""
    h, w = image_hw
    sx, sy = w / policy_image_size, h / policy_image_size
    x1, y1, x2, y2 = bbox
    box = np.array([x1 * sx, y1 * sy, x2 * sx, y2 * sy], dtype=np.float64)
    box[[0, 2]] = box[[0, 2]].clip(0, w)
    box[[1, 3]] = box[[1, 3]].clip(0, h)
    pts = np.array([[x * sx, y * sy] for x, y in points], dtype=np.float64).reshape(-1, 2)
    if len(pts):
        pts[:, 0] = pts[:, 0].clip(0, w - 1)
        pts[:, 1] = pts[:, 1].clip(0, h - 1)
    return box, pts


def to_trl_rows(dataset, policy_image_size: int, system_prompt: str, indices=None):
    """TRL's training rows (a ``datasets.Dataset``, which GRPOTrainer requires), one per sample of ``indices`` in
    that order (None: every sample of ``dataset``): ``prompt`` (the conversation, with ``system_prompt``),
    ``image`` (the policy's view), ``sample_index`` and ``query_kind`` (how a synthetic query was made,
    ``Scene.query_kind``; None for real data).

    Only the sample indices are stored. A row is built when it is read (``rows[r]``, or a batch ``rows[a:b]`` as
    TRL's data loader reads them): its sample is read from ``dataset`` and its image resized then. So building the
    rows reads no image, and memory holds only the rows being read; reading a whole column (``rows["prompt"]``)
    builds every row. ``sample_index`` lets reward functions and the tool loss find the sample's full-resolution
    image and mask.
    """
    from datasets import Dataset

    indices = range(len(dataset)) if indices is None else indices
    return Dataset.from_dict({"sample_index": [int(i) for i in indices]}).with_transform(
        _RowBuilder(dataset, policy_image_size, system_prompt))


class _RowBuilder:
    """``to_trl_rows``' transform: a batch ``{"sample_index": [...]}`` to the batch of those samples' rows."""

    def __init__(self, dataset, policy_image_size: int, system_prompt: str):
        self.dataset, self.policy_image_size, self.system_prompt = dataset, policy_image_size, system_prompt

    def row(self, i: int) -> dict:
        scene = self.dataset.scene(i) if hasattr(self.dataset, "scene") else None
        sample = scene.sample if scene else self.dataset[i]
        return {"prompt": build_messages(sample.query, self.system_prompt),
                "image": policy_view(sample.image, self.policy_image_size),
                "sample_index": i, "query_kind": scene.query_kind if scene else None}

    def __call__(self, batch: dict) -> dict:
        # TRL's sampler repeats each prompt G times in a batch: build each once
        built = {i: self.row(i) for i in dict.fromkeys(batch["sample_index"])}
        rows = [built[i] for i in batch["sample_index"]]
        return {key: [row[key] for row in rows] for key in ("prompt", "image", "sample_index", "query_kind")}
