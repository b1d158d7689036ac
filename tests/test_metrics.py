"""gIoU / cIoU / box accuracy on hand-built masks, and sanity of the COD metrics."""
import numpy as np
import pytest

from grto_lib.metrics import cod_scores, mask_iou, segmentation_scores


def rows(n_rows, shape=(4, 4)):
    m = np.zeros(shape, bool)
    m[:n_rows] = True
    return m


def cols(n_cols, shape=(4, 4)):
    m = np.zeros(shape, bool)
    m[:, :n_cols] = True
    return m


def test_mask_iou_counts_intersection_and_union():
    # rows 0-1 (8 px) vs columns 0-1 (8 px): 4 shared, 12 in the union.
    assert mask_iou(rows(2), cols(2)) == (4, 12)


def test_mask_iou_excludes_ignore_pixels():
    ignore = rows(1)  # drop row 0: pred keeps row 1 (4 px), gt keeps rows 1-3 of cols 0-1 (6 px)
    assert mask_iou(rows(2), cols(2), ignore) == (2, 8)


def test_mask_iou_accepts_0_1_integers_and_rejects_soft_maps():
    assert mask_iou(rows(2).astype(np.uint8), cols(2).astype(int)) == (4, 12)
    with pytest.raises(ValueError, match="threshold"):
        mask_iou(rows(2) * 0.7, cols(2))


def test_mask_iou_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differs"):
        mask_iou(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="ignore"):
        mask_iou(rows(1), rows(1), np.zeros((3, 4), bool))


def test_segmentation_scores_lisa_conventions():
    gt_c = np.zeros((4, 4), bool)
    gt_c[0, :2] = True
    preds = [rows(2), cols(3, (3, 3)), None, np.zeros((2, 2), bool)]
    gts = [cols(2), cols(3, (3, 3)), gt_c, np.zeros((2, 2), bool)]
    # IoUs: 4/12, 9/9, missing -> 0/2, empty union -> 1.0
    scores = segmentation_scores(preds, gts)
    assert scores["giou"] == pytest.approx((1 / 3 + 1 + 0 + 1) / 4)
    assert scores["ciou"] == pytest.approx((4 + 9 + 0 + 0) / (12 + 9 + 2 + 0))
    assert scores["n"] == 4 and scores["n_missing"] == 1
    assert "box_acc" not in scores


def test_segmentation_scores_with_ignores_list_holding_none():
    scores = segmentation_scores([rows(2), rows(2)], [cols(2), cols(2)], ignores=[rows(1), None])
    assert scores["giou"] == pytest.approx((2 / 8 + 4 / 12) / 2)
    assert scores["ciou"] == pytest.approx(6 / 20)


def test_segmentation_scores_all_empty_unions_is_one():
    empty = np.zeros((3, 3), bool)
    assert segmentation_scores([empty, None], [empty, empty])["ciou"] == 1.0


def test_box_accuracy_counts_iou_above_half_and_missing_as_miss():
    gt_boxes = [[0, 0, 10, 10]] * 4
    # IoU 1.0, IoU 0.6 (6x10 inside 10x10), IoU 0.5 exactly (not > 0.5), missing
    pred_boxes = [[0, 0, 10, 10], [0, 0, 6, 10], [0, 0, 5, 10], None]
    masks = [rows(1)] * 4
    scores = segmentation_scores(masks, masks, pred_boxes=pred_boxes, gt_boxes=gt_boxes)
    assert scores["box_acc"] == pytest.approx(0.5)


def test_segmentation_scores_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="sample 1"):
        segmentation_scores([rows(1), np.zeros((5, 4), bool)], [rows(1), rows(1)])
    with pytest.raises(ValueError, match="preds has 1 entries, expected 2"):
        segmentation_scores([rows(1)], [rows(1), rows(1)])
    with pytest.raises(ValueError, match="both"):
        segmentation_scores([rows(1)], [rows(1)], pred_boxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="at least one"):
        segmentation_scores([], [])


def blob(size=32):
    m = np.zeros((size, size), bool)
    m[8:20, 10:24] = True
    return m


def test_cod_scores_perfect_prediction():
    gt = blob()
    scores = cod_scores([gt, gt.astype(float)], [gt, gt])
    assert scores["S"] == pytest.approx(1.0, abs=1e-9)
    assert scores["MAE"] == 0.0
    assert scores["wF"] == pytest.approx(1.0)
    assert scores["E_mean"] > 0.99 and scores["E_adp"] > 0.99
    assert scores["n"] == 2


def test_cod_scores_inverted_prediction_is_worst():
    gt = blob()
    scores = cod_scores([~gt], [gt])
    assert scores["S"] < 0.05 and scores["wF"] < 0.05 and scores["E_mean"] < 0.05
    assert scores["MAE"] == 1.0


def test_cod_scores_missing_prediction_is_empty_map():
    gt = blob()
    scores = cod_scores([None], [gt])
    assert scores["MAE"] == pytest.approx(gt.mean())  # 168 / 1024 foreground pixels, all missed
    assert scores["wF"] == 0.0


def test_cod_scores_soft_map_is_min_max_normalised_like_the_png_scripts():
    gt = blob()
    soft = np.where(gt, 0.6, 0.2)  # min-max normalisation maps it onto the perfect binary map
    assert cod_scores([soft], [gt])["MAE"] == 0.0


def test_cod_scores_rejects_bad_predictions():
    gt = blob()
    with pytest.raises(ValueError, match="sample 0"):
        cod_scores([np.full(gt.shape, 1.5)], [gt])
    with pytest.raises(ValueError, match="sample 0"):
        cod_scores([gt[:-1]], [gt])
