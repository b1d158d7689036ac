"""Evaluation metrics: gIoU / cIoU / box accuracy (reasoning segmentation) and the COD suite.

Reasoning segmentation follows LISA and Seg-Zero. For sample i with intersection ``I_i`` and union ``U_i``
(pixels marked *ignore* excluded from both):

    gIoU = (1/n) sum_i I_i / U_i        (a sample whose union is empty counts 1.0, as in LISA)
    cIoU = sum_i I_i / sum_i U_i        (1.0 if every union is empty; LISA's code gives 0 there)

A missing prediction (``None``: the policy's answer did not parse) counts as an empty mask; it is never
dropped, and ``n_missing`` reports how many there were. Box accuracy is the fraction of samples whose
predicted box has IoU > 0.5 with the ground-truth box (a missing box counts as a miss).

Camouflaged object detection uses ``pysodmetrics`` (import name ``py_sod_metrics``) exactly as the public COD
evaluation scripts do: predictions become uint8 grey maps 0..255, ground truths uint8 0/255, and each metric's
``step(pred=..., gt=...)`` normalises them (min-max for the prediction, ``> 128`` for the ground truth).
S-measure uses alpha = 0.5; E-measure is reported adaptive (threshold 2 x mean) and mean over 256 thresholds.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import py_sod_metrics

from grto_lib.geometry import box_iou


def _as_bool_mask(mask, what: str) -> np.ndarray:
    """A 2-D boolean array; non-bool input must hold only 0 and 1 (threshold logits before scoring)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) mask, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"{what} must be boolean or hold only 0/1 values (dtype {mask.dtype}); threshold it first")
    return mask.astype(bool)


def mask_iou(pred, gt, ignore=None) -> tuple[int, int]:
    """Intersection and union ``(I, U)`` in pixels of two ``(H, W)`` boolean masks, ``ignore`` pixels excluded.

    Raises ValueError when the shapes differ or a mask is not boolean (0/1).
    """
    pred = _as_bool_mask(pred, "pred")
    gt = _as_bool_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    if ignore is not None:
        ignore = _as_bool_mask(ignore, "ignore")
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore shape {ignore.shape} differs from gt shape {gt.shape}")
        keep = ~ignore
        pred, gt = pred & keep, gt & keep
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def _check_lengths(n: int, **sequences) -> None:
    for name, seq in sequences.items():
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries, expected {n} (one per ground-truth mask)")


def segmentation_scores(
    preds: Sequence,
    gts: Sequence,
    ignores: Sequence | None = None,
    pred_boxes: Sequence | None = None,
    gt_boxes: Sequence | None = None,
) -> dict:
    """gIoU, cIoU and (when both box lists are given) box accuracy over a dataset.

    Args:
        preds: one ``(H, W)`` bool mask per sample, or ``None`` for an unparseable answer (scored as empty).
        gts: one ``(H, W)`` bool ground-truth mask per sample.
        ignores: optional, one ``(H, W)`` bool mask or ``None`` per sample: pixels excluded from I and U.
        pred_boxes: optional, one ``[x1, y1, x2, y2]`` or ``None`` per sample (image pixels).
        gt_boxes: optional, one ``[x1, y1, x2, y2]`` per sample.

    Returns:
        ``{"giou", "ciou", "n", "n_missing"}`` plus ``"box_acc"`` when ``pred_boxes`` and ``gt_boxes`` are given.

    Raises:
        ValueError: empty input, lengths that differ, or a mask whose shape differs from its ground truth
        (the message names the sample index).
    """
    n = len(gts)
    if n == 0:
        raise ValueError("segmentation_scores needs at least one sample")
    _check_lengths(n, preds=preds, ignores=ignores, pred_boxes=pred_boxes, gt_boxes=gt_boxes)
    if (pred_boxes is None) != (gt_boxes is None):
        raise ValueError("pass both pred_boxes and gt_boxes, or neither")

    per_sample_iou = np.empty(n)
    inter_total = union_total = 0
    n_missing = 0
    for i in range(n):
        gt = np.asarray(gts[i])
        pred = preds[i]
        if pred is None:
            n_missing += 1
            pred = np.zeros(gt.shape, dtype=bool)
        ignore = None if ignores is None else ignores[i]
        try:
            inter, union = mask_iou(pred, gt, ignore)
        except ValueError as err:
            raise ValueError(f"sample {i}: {err}") from None
        per_sample_iou[i] = inter / union if union > 0 else 1.0
        inter_total += inter
        union_total += union

    scores = {
        "giou": float(per_sample_iou.mean()),
        "ciou": float(inter_total / union_total) if union_total > 0 else 1.0,
        "n": n,
        "n_missing": n_missing,
    }
    if pred_boxes is not None:
        hits = [pb is not None and box_iou(pb, gb) > 0.5 for pb, gb in zip(pred_boxes, gt_boxes)]
        scores["box_acc"] = float(np.mean(hits))
    return scores


def _to_grey_uint8(pred, shape: tuple[int, ...], index: int) -> np.ndarray:
    """A prediction as the uint8 0..255 grey map the COD evaluation scripts read from PNG files."""
    if pred is None:
        return np.zeros(shape, dtype=np.uint8)
    pred = np.asarray(pred)
    if pred.shape != shape:
        raise ValueError(f"sample {index}: pred shape {pred.shape} differs from gt shape {shape}")
    if pred.dtype == bool:
        return pred.astype(np.uint8) * 255
    pred = pred.astype(np.float64)
    if not np.isfinite(pred).all() or pred.min() < 0 or pred.max() > 1:
        raise ValueError(f"sample {index}: pred must be bool or float in [0, 1]")
    return np.round(pred * 255).astype(np.uint8)


def cod_scores(preds: Sequence, gts: Sequence) -> dict:
    """S-measure, E-measure (mean and adaptive), weighted F-measure and MAE, averaged over samples.

    Args:
        preds: one ``(H, W)`` map per sample: bool, or float probabilities in [0, 1]; ``None`` = all zeros.
        gts: one ``(H, W)`` bool mask per sample.

    Returns:
        ``{"S", "E_mean", "E_adp", "wF", "MAE", "n"}``: higher is better except MAE.
    """
    n = len(gts)
    if n == 0:
        raise ValueError("cod_scores needs at least one sample")
    _check_lengths(n, preds=preds)
    sm, em, wfm, mae = (
        py_sod_metrics.Smeasure(),
        py_sod_metrics.Emeasure(),
        py_sod_metrics.WeightedFmeasure(),
        py_sod_metrics.MAE(),
    )
    for i in range(n):
        gt = _as_bool_mask(gts[i], f"gt {i}")
        gt_grey = gt.astype(np.uint8) * 255
        pred_grey = _to_grey_uint8(preds[i], gt.shape, i)
        for metric in (sm, em, wfm, mae):
            metric.step(pred=pred_grey, gt=gt_grey)
    em_results = em.get_results()["em"]
    return {
        "S": float(sm.get_results()["sm"]),
        "E_mean": float(np.mean(em_results["curve"])),
        "E_adp": float(em_results["adp"]),
        "wF": float(wfm.get_results()["wfm"]),
        "MAE": float(mae.get_results()["mae"]),
        "n": n,
    }
