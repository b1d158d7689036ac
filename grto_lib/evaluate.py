"""Evaluation: the policy + tool pipeline, and the tool alone prompted with ground-truth boxes.

Greedy decoding, one completion per sample. Every sample is scored: an unparseable answer is an empty mask
(IoU 0) and counts in ``format_valid``'s denominator; nothing is dropped (``n_missing`` says how many).
For ``cod`` the COD metrics (S, E, wF, MAE) are added, computed on the tool's sigmoid probabilities.

Elsewhere: whether the tiny stand-in reads its query, ``grto_lib.tinyworld.diagnostics``; the study's rows before RL,
``grto_lib.study.reference``.
"""
from __future__ import annotations

import numpy as np
import torch

from .generation import generate_completions
from .geometry import mask_to_box
from .metrics import cod_scores, mask_iou, segmentation_scores
from .scorer import RolloutScorer


def _subset(dataset, indices):
    return list(range(len(dataset))) if indices is None else list(indices)


@torch.no_grad()
def _tool_probabilities(tool, samples, boxes, points, valid, batch_size: int = 64):
    """Sigmoid mask probabilities for valid rows (None elsewhere); each image encoded once."""
    out = [None] * len(samples)
    for start in range(0, len(samples), batch_size):
        rows = [r for r in range(start, min(start + batch_size, len(samples))) if valid[r]]
        if not rows:
            continue
        embeddings = tool.embed([samples[r].image for r in rows])
        device = embeddings.device
        logits = tool.decode(embeddings, torch.arange(len(rows), device=device),
                             torch.tensor(boxes[rows], dtype=torch.float32, device=device),
                             None if points is None else torch.tensor(points[rows], dtype=torch.float32, device=device),
                             [samples[r].mask.shape for r in rows])
        for r, l in zip(rows, logits):
            out[r] = torch.sigmoid(l).float().cpu().numpy()
    return out


def _scores(samples, probabilities, pred_boxes, with_cod: bool) -> dict:
    preds = [None if p is None else p > 0.5 for p in probabilities]
    gts = [s.mask for s in samples]
    scores = segmentation_scores(preds, gts, [s.ignore for s in samples], pred_boxes, [mask_to_box(m) for m in gts])
    if with_cod:
        scores.update(cod_scores([np.zeros(g.shape) if p is None else p for p, g in zip(probabilities, gts)], gts))
    return scores


def evaluate_policy(policy, processor, tool, dataset, policy_image_size: int, *, indices=None, with_cod=None,
                    max_new_tokens: int | None = None, batch_size: int = 32, return_records: bool = False):
    """Scores of the pipeline: ``giou``, ``ciou``, ``box_acc``, ``format_valid``, ``n``, ``n_missing`` (+ COD).

    With ``return_records``, also one dict per sample: ``id``, ``query``, ``completion``, ``valid``, ``box``,
    ``points``, ``mask`` (bool or None), ``iou``.
    """
    indices = _subset(dataset, indices)
    samples = [dataset[i] for i in indices]
    texts = [group[0] for group in generate_completions(policy, processor, samples, policy_image_size,
                                                        max_new_tokens=max_new_tokens, batch_size=batch_size)]
    scorer = RolloutScorer(dataset, tool, policy_image_size)
    _, boxes, points, valid = scorer.parse(texts, samples)
    probabilities = _tool_probabilities(tool, samples, boxes, points, valid)
    pred_boxes = [box if v else None for box, v in zip(boxes, valid)]
    with_cod = with_cod if with_cod is not None else samples[0].id.startswith("cod")
    scores = _scores(samples, probabilities, pred_boxes, with_cod)
    scores["format_valid"] = float(np.mean(valid))
    if not return_records:
        return scores
    records = []
    for s, text, v, box, pts, p in zip(samples, texts, valid, boxes, points, probabilities):
        mask = None if p is None else p > 0.5
        inter, union = mask_iou(np.zeros_like(s.mask) if mask is None else mask, s.mask, s.ignore)
        records.append({"id": s.id, "query": s.query, "completion": text, "valid": bool(v), "box": box, "points": pts,
                        "mask": mask, "iou": inter / union if union else 1.0})
    return scores, records


def evaluate_true_boxes(tool, dataset, *, indices=None, with_cod=None) -> dict:
    """The tool alone, prompted with each target's ground-truth box (its tight bounding box, no points).

    Not a ceiling of the method: it scores the tool as it is now, so an untrained tool shows how well it segments
    from a perfect box; GRTO and BTO train the tool and can exceed the untrained tool's score."""
    indices = _subset(dataset, indices)
    samples = [dataset[i] for i in indices]
    boxes = np.stack([mask_to_box(s.mask) for s in samples])
    probabilities = _tool_probabilities(tool, samples, boxes, None, np.ones(len(samples), dtype=bool))
    with_cod = with_cod if with_cod is not None else samples[0].id.startswith("cod")
    return _scores(samples, probabilities, list(boxes), with_cod)


def rollout_groups(policy, processor, tool, dataset, policy_image_size: int, *, indices, group_size: int = 8,
                   temperature: float = 1.0, max_new_tokens: int | None = None, seed: int = 0) -> list[list[dict]]:
    """For each sample, ``group_size`` sampled rollouts as training sees them: completion, box, points, the
    tool's mask and every reward term (``RolloutScorer``), plus the group-relative advantage."""
    from .losses import group_advantages
    from .rewards import RewardWeights

    indices = list(indices)
    torch.manual_seed(seed)
    texts = generate_completions(policy, processor, [dataset[i] for i in indices], policy_image_size, n=group_size,
                                 do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens)
    flat_index = [i for i in indices for _ in range(group_size)]
    flat_text = [t for group in texts for t in group]
    scored = RolloutScorer(dataset, tool, policy_image_size).score(flat_text, flat_index)  # the tool once per image
    terms, batch = scored.terms, scored.tool_batch
    weights = RewardWeights()
    advantages = group_advantages(torch.as_tensor(weights.total(terms)), group_size).tolist()
    rollouts = [
        {"completion": text, "valid": bool(valid), "box": box.cpu().numpy() if valid else None,
         "points": points.cpu().numpy() if valid else None, "mask": mask,
         "rewards": {k: terms[k][r] * getattr(weights, k) for k in terms}, "advantage": advantages[r]}
        for r, (text, valid, box, points, mask) in enumerate(zip(flat_text, batch.valid.tolist(), batch.boxes,
                                                                 batch.points, scored.pred_masks))
    ]
    return [rollouts[k * group_size:(k + 1) * group_size] for k in range(len(indices))]


TABLE_COLUMNS = ("giou", "ciou", "box_acc", "format_valid", "S", "E_mean", "E_adp", "wF", "MAE", "n")


def markdown_table(rows: dict[str, dict], digits: int = 3) -> str:
    """A markdown table, one row per entry of ``rows`` (name -> scores), the metrics any row has as columns."""
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows.values())]
    cell = lambda v: "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(r.get(c)) for c in columns) + " |" for name, r in rows.items()]
    return "\n".join(lines) + "\n"


TRUE_BOXES_ROW = "untrained_tool_true_boxes"
"""The row name of the tool before any training, prompted with ground-truth boxes (``evaluate_true_boxes``)."""
