"""Boxes and points derived from masks: the ground truth that the rewards compare against and that
``evaluate.evaluate_true_boxes`` prompts the tool with."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight box ``[x1, y1, x2, y2]`` (float, pixel edges: x2 = last column + 1) of a boolean mask; zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def mask_to_points(mask: np.ndarray, k: int = 2) -> np.ndarray:
    """``k`` points ``(x, y)`` deep inside the mask (Seg-Zero's convention).

    The first is the maximum of the distance transform; each next one is the maximum after removing a disc
    of that radius around the points already chosen (the same point again if nothing is left). Empty mask:
    ``k`` copies of the image centre.
    """
    h, w = mask.shape
    if not mask.any():
        return np.tile([w / 2, h / 2], (k, 1)).astype(np.float64)
    dist = ndimage.distance_transform_edt(mask)
    yy, xx = np.mgrid[:h, :w]
    points, remaining = [], dist.copy()
    for _ in range(k):
        if remaining.max() <= 0:
            points.append(points[-1])
            continue
        y, x = np.unravel_index(np.argmax(remaining), remaining.shape)
        points.append((x + 0.5, y + 0.5))
        radius = max(dist[y, x], 1.0)
        remaining[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = 0
    return np.array(points, dtype=np.float64)


def box_iou(a, b) -> float:
    """IoU of two boxes ``[x1, y1, x2, y2]``; 0 when the union is empty."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_on_target(boxes, masks, min_iou: float = 0.5) -> np.ndarray:
    """[N] bool: whether box ``i`` (``[x1, y1, x2, y2]`` in pixels of ``masks[i]``) matches the target's tight box,
    box IoU > ``min_iou`` (the box-accuracy criterion). A box around the target and its neighbour, or around half
    of it, does not: from such a prompt a tool that never sees the query cannot tell what to segment. An empty
    target is never matched. A mask given for several boxes (a group's rollouts share their image's) has its
    tight box derived once."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    targets: dict[int, tuple] = {}  # id(mask) -> (mask, its tight box or None); holding the mask keeps its id
    hits = []
    for box, mask in zip(boxes, masks):
        if id(mask) not in targets:
            m = np.asarray(mask, dtype=bool)
            targets[id(mask)] = (mask, mask_to_box(m) if m.any() else None)
        target = targets[id(mask)][1]
        hits.append(target is not None and box_iou(box, target) > min_iou)
    return np.array(hits, dtype=bool)
