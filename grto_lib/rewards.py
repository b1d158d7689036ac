"""The answer parser and the reward terms: what a completion earns.

A completion should read (format defined in ``grto_lib.prompts``)::

    <think>...</think><answer>{"bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}</answer>

``parse_answer`` turns it into an ``Answer`` or ``None``; it never raises. The reward terms are pure functions,
each with a documented range: ``format_reward`` and ``answer_reward`` of the text, ``box_reward``,
``points_reward`` and ``mask_reward`` of the parsed answer and the tool's mask. ``RewardWeights`` holds their weights;
``RewardWeights.total`` is the weighted sum. Training scores every rollout's terms with
``scorer.RolloutScorer.score`` (an answer that does not parse gets no mask and 0 on every term but the format) and
TRL adds them with these weights (``GRPOConfig.reward_weights``). Every geometric term expects coordinates in pixels
of the *original* image: the caller maps the parsed answer out of the policy's square view first with
``answer.in_image_pixels(image_hw, policy_image_size)``.

Parser decisions (each one is a design choice; tests pin them down):

- Tags are matched literally and case-sensitively (``<answer>``, not ``< answer >``); whitespace is free
  everywhere else, including inside the JSON.
- Exactly one ``<answer>`` and one ``</answer>``, in that order. Two answers -> ``None``: a policy that
  hedges with several boxes must not be scored on whichever the parser happens to pick.
- The payload is strict JSON (``json.loads``), optionally inside a Markdown code fence (```` ```json ... ``` ````,
  as Qwen2.5-VL writes JSON). It is one object, or a list holding exactly one object (Qwen2.5-VL's grounding
  output is a list of objects; a list of several is a hedge -> ``None``). The object has the box under
  ``"bbox"`` (this project's format) or ``"bbox_2d"`` (Qwen2.5-VL's own), 4 numbers; and optionally points
  under ``"points"`` (a list, possibly empty, of at most ``MAX_POINTS`` pairs of numbers) or ``"point_2d"``
  (Qwen2.5-VL's: one pair). Both spellings of one key at once -> ``None`` (ambiguous); no points key -> no
  points (the scorer then prompts the tool with the box centre). Extra keys (``"label"``) are ignored. Booleans
  are not numbers. NaN / Infinity (which ``json`` accepts) -> ``None``.
- ``x2 < x1`` or ``y2 < y1`` -> ``None`` (not swapped): the format fixes the order, swapping would hide a
  misread (e.g. ``[x, y, w, h]`` with small w) behind a plausible box, and the order is trivial to learn.
  Degenerate boxes (``x1 == x2``) are valid and simply earn IoU 0.
- Finite but huge coordinates are clamped to +-``COORD_LIMIT`` so later arithmetic (areas) cannot overflow;
  the clamp is monotone, so box order is kept. Clipping to the image happens in the reward terms.
- The payload between the tags may hold at most ``MAX_PAYLOAD_CHARS`` characters (a valid answer needs
  about 60); longer -> ``None``. Tags are found with ``str.find`` / ``str.count`` (linear time, no regex,
  nothing to backtrack), so a 100k-character completion costs microseconds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from grto_lib.geometry import box_iou
from grto_lib.metrics import mask_iou
from grto_lib.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, answer_to_image_pixels

MAX_POINTS = 16
"""Most points an answer may carry (the prompt asks for two)."""
MAX_PAYLOAD_CHARS = 4096
"""Longest JSON payload between the answer tags that is parsed at all."""
COORD_LIMIT = 1e6
"""Finite coordinates are clamped to [-COORD_LIMIT, COORD_LIMIT]."""

_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


@dataclass(frozen=True)
class Answer:
    """A parsed answer: a box and points, in whatever pixel frame the caller says (policy view or image)."""

    bbox: tuple[float, float, float, float]
    """``(x1, y1, x2, y2)``, finite floats with ``x1 <= x2`` and ``y1 <= y2``."""
    points: list[tuple[float, float]] = field(default_factory=list)
    """``(x, y)`` finite floats, at most ``MAX_POINTS`` of them (possibly none)."""

    def __post_init__(self):
        if len(self.bbox) != 4 or not all(math.isfinite(v) for v in self.bbox):
            raise ValueError(f"Answer.bbox must be 4 finite numbers, got {self.bbox}")
        x1, y1, x2, y2 = self.bbox
        if x1 > x2 or y1 > y2:
            raise ValueError(f"Answer.bbox must satisfy x1 <= x2 and y1 <= y2, got {self.bbox}")
        if len(self.points) > MAX_POINTS:
            raise ValueError(f"Answer.points holds {len(self.points)} points, at most {MAX_POINTS} allowed")
        for p in self.points:
            if len(p) != 2 or not all(math.isfinite(v) for v in p):
                raise ValueError(f"Answer.points entries must be (x, y) finite pairs, got {p}")

    def in_image_pixels(self, image_hw: tuple[int, int], policy_image_size: int) -> Answer:
        """This answer (in the policy's square view) mapped onto an ``(H, W)`` image and clipped to it."""
        box, pts = answer_to_image_pixels(self.bbox, self.points, image_hw, policy_image_size)
        return Answer(tuple(float(v) for v in box), [(float(x), float(y)) for x, y in pts])


def _number(value) -> float | None:
    """A JSON number as a clamped float, or None for anything else (bool, str, NaN, inf, lists...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        return None
    if not math.isfinite(value):
        return None
    return min(max(value, -COORD_LIMIT), COORD_LIMIT)


def _answer_payload(text: str) -> str | None:
    """The text between the single ``<answer>`` and ``</answer>``, or None."""
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return None
    start = text.find(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = text.find(ANSWER_CLOSE)
    if end < start:
        return None
    return text[start:end]


def parse_box(value) -> tuple[float, float, float, float] | None:
    """The ``"bbox"`` value of a decoded answer as ``(x1, y1, x2, y2)``, or ``None`` unless it is a list of 4 JSON
    numbers (not booleans), finite, in order (x1 <= x2, y1 <= y2); each is clamped to +-``COORD_LIMIT``."""
    if not isinstance(value, list) or len(value) != 4:
        return None
    box = tuple(_number(v) for v in value)
    if any(v is None for v in box) or box[0] > box[2] or box[1] > box[3]:
        return None
    return box


BOX_KEYS = ("bbox", "bbox_2d")
"""Keys an answer's box may have: this project's and Qwen2.5-VL's own grounding format."""
POINT_KEYS = ("points", "point_2d")
"""Keys an answer's points may have: a list of pairs (this project's) or one pair (Qwen2.5-VL's)."""


def _strip_code_fence(payload: str) -> str:
    """``payload`` without a surrounding Markdown code fence (```` ```json ``` ````), if it has one."""
    text = payload.strip()
    if not text.startswith("```"):
        return payload
    first_newline = text.find("\n")
    if first_newline < 0 or not text.endswith("```"):
        return payload
    return text[first_newline + 1:-3]


def _point(value) -> tuple[float, float] | None:
    """A JSON ``[x, y]`` as a pair of clamped floats, or None."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    x, y = _number(value[0]), _number(value[1])
    return None if x is None or y is None else (x, y)


def _one_key(data: dict, keys: tuple[str, ...]):
    """``(found, value)`` of the one key of ``keys`` present in ``data``; ``(False, None)`` when none is and
    ``None`` (ambiguous) when several are."""
    present = [k for k in keys if k in data]
    if len(present) > 1:
        return None
    return (True, data[present[0]]) if present else (False, None)


def parse_answer(text) -> Answer | None:
    """The ``Answer`` in a completion, or ``None`` if it does not follow the format. Never raises."""
    if not isinstance(text, str):
        return None
    payload = _answer_payload(text)
    if payload is None or len(payload) > MAX_PAYLOAD_CHARS:
        return None
    try:
        data = json.loads(_strip_code_fence(payload))
    except (ValueError, RecursionError):  # JSONDecodeError, too many int digits, deep nesting
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        return None
    box_entry, points_entry = _one_key(data, BOX_KEYS), _one_key(data, POINT_KEYS)
    if box_entry is None or points_entry is None or not box_entry[0]:
        return None
    box = parse_box(box_entry[1])
    if box is None:
        return None
    has_points, points = points_entry
    if not has_points:
        return Answer(bbox=box, points=[])
    if "point_2d" in data:
        points = [points]
    if not isinstance(points, list) or len(points) > MAX_POINTS:
        return None
    pairs = [_point(p) for p in points]
    if any(p is None for p in pairs):
        return None
    return Answer(bbox=box, points=pairs)


# ----------------------------------------------------------------------------------------------------------
# Reward terms. Each returns a Python float in the range its docstring gives, for any input it accepts.


def format_reward(text) -> float:
    """1.0 if the completion is ``<think>...</think><answer>...</answer>``, else 0.0. Range {0, 1}.

    Each of the four tags occurs exactly once, in that order; only whitespace may stand before ``<think>``,
    between ``</think>`` and ``<answer>``, and after ``</answer>``. The contents are not checked here
    (``answer_reward`` checks the answer).
    """
    if not isinstance(text, str) or any(text.count(tag) != 1 for tag in _TAGS):
        return 0.0
    positions = [text.find(tag) for tag in _TAGS]
    if positions != sorted(positions):
        return 0.0
    before = text[: positions[0]]
    between = text[positions[1] + len(THINK_CLOSE) : positions[2]]
    after = text[positions[3] + len(ANSWER_CLOSE) :]
    return float(not (before.strip() or between.strip() or after.strip()))


def answer_reward(text) -> float:
    """1.0 if ``parse_answer`` finds a valid answer (strict JSON, box order, points as pairs), else 0.0."""
    return float(parse_answer(text) is not None)


def _clip_box(bbox, image_hw) -> np.ndarray:
    box = np.asarray(bbox, dtype=np.float64)
    if image_hw is not None:
        h, w = image_hw
        box[[0, 2]] = box[[0, 2]].clip(0, w)
        box[[1, 3]] = box[[1, 3]].clip(0, h)
    return box


def box_reward(answer: Answer | None, gt_box, image_hw: tuple[int, int] | None = None, threshold=None) -> float:
    """IoU of the answer's box with the ground-truth box (image pixels). Range [0, 1]; 0 for ``None``.

    The box is first clipped to the image when ``image_hw`` is given. With ``threshold`` set, the reward is
    the indicator ``IoU > threshold`` instead (Seg-Zero uses 0.5). The default is the IoU itself: GRPO
    learns only from reward *differences* within a group, and a policy whose boxes mostly miss 0.5 IoU
    (the tiny stand-in starts near 0.3) would see whole groups of identical zeros under the indicator.
    """
    if answer is None:
        return 0.0
    iou = box_iou(_clip_box(answer.bbox, image_hw), _clip_box(gt_box, image_hw))
    if not math.isfinite(iou):
        return 0.0
    iou = min(max(iou, 0.0), 1.0)
    return float(iou > threshold) if threshold is not None else iou


def points_reward(answer: Answer | None, mask) -> float:
    """Fraction of the answer's points that fall inside the target mask. Range [0, 1]; 0 for ``None``/no points.

    A point ``(x, y)`` (image pixels, continuous: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``) is clipped
    into the image and looked up at ``mask[floor(y), floor(x)]``.
    """
    if answer is None or not answer.points:
        return 0.0
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    pts = np.asarray(answer.points, dtype=np.float64)
    cols = np.floor(pts[:, 0]).clip(0, w - 1).astype(int)
    rows = np.floor(pts[:, 1]).clip(0, h - 1).astype(int)
    return float(mask[rows, cols].mean())


def mask_reward(pred_mask, mask, ignore=None) -> float:
    """IoU of the tool's mask with the target, ``ignore`` pixels excluded. Range [0, 1].

    ``pred_mask=None`` (no parseable answer, so no mask) earns 0. An empty union (empty prediction and empty
    target) earns 1.0, as in the gIoU metric.
    """
    if pred_mask is None:
        return 0.0
    inter, union = mask_iou(pred_mask, mask, ignore)
    return inter / union if union > 0 else 1.0


@dataclass
class RewardWeights:
    """Weights of the reward terms; the total reward is their weighted sum (maximum 4.5 with the defaults).

    Reasoning for the defaults. Seg-Zero (max 5) spends 2/5 on format, 2/5 on the box and 1/5 on points, and
    has no mask term because its SAM is frozen; SAM-R1 puts up to 4 on a tiered mask IoU. GRTO is about the
    tool, and its reward r(o; phi) depends on phi only through the mask term, so mask IoU carries the largest
    single weight (2 of 4.5: the metric we report). The box keeps a dense localisation signal that does not
    depend on the tool (1), points get a smaller share (0.5) because SAM needs them inside the object but
    they matter less than the box. Format and JSON validity are small (0.5 each): the warm-started policy
    already writes the format, and within a group they mostly add a constant, but a malformed rollout still
    loses them on top of every geometric term (which are all 0 without an answer).
    """

    format: float = 0.5
    """``format_reward``: think/answer tags once each, in order."""
    answer: float = 0.5
    """``answer_reward``: the answer parses (strict JSON, 4-number box in order, point pairs)."""
    box: float = 1.0
    """``box_reward``: IoU of the answer's box with the ground-truth box."""
    points: float = 0.5
    """``points_reward``: fraction of points inside the target mask."""
    mask: float = 2.0
    """``mask_reward``: IoU of the tool's mask with the target mask."""

    def total(self, terms: dict):
        """The total reward: ``sum_k weight_k * terms[k]`` over the terms given (each a number, or one value per
        rollout: then an array). TRL adds the terms the same way (``GRPOConfig.reward_weights``)."""
        return sum(getattr(self, name) * np.asarray(values, dtype=float) for name, values in terms.items())

