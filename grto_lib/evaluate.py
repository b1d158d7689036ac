"""Evaluation: the policy + tool pipeline, and the tool alone prompted with ground-truth boxes.

Greedy decoding, one completion per sample. Every sample is scored: an unparseable answer is an empty mask
(IoU 0) and counts in ``format_valid``'s denominator; nothing is dropped (``n_missing`` says how many).
For ``cod`` the COD metrics (S, E, wF, MAE) are added, computed on the tool's sigmoid probabilities.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .generation import generate_completions
from .geometry import box_iou, box_on_target, mask_to_box
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


# --------------------------------------------------------------------------------------------------------------
# Does the policy pick the object its query names? (judged on synthetic scenes, whose objects are known)


def _answer_box(text, image_hw, policy_image_size: int):
    from .rewards import parse_answer

    answer = parse_answer(text)
    return None if answer is None else np.array(answer.in_image_pixels(image_hw, policy_image_size).bbox)


def picked_object(box, objects) -> int | None:
    """Index of the object whose tight box overlaps ``box`` most (box IoU > 0.1), or None (no box, or none near)."""
    if box is None:
        return None
    ious = [box_iou(box, mask_to_box(o.mask)) for o in objects]
    return int(np.argmax(ious)) if max(ious) > 0.1 else None


def follows_query(policy, processor, policy_image_size: int, scenes: int = 120,
                  max_new_tokens: int | None = None, batch_size: int = 32) -> dict:
    """Ask for every object of each multi-object ``shapes`` test scene by its explicit name ("the red circle").

    ``right_object``: share of queries whose greedy box best matches the object named; ``chance``: what a blind
    guess scores (mean of 1 / objects); ``same_object_for_every_query``: share of scenes where every name got the
    same object (a policy that ignores the query scores 1.0 here)."""
    from .data import load_dataset

    dataset = load_dataset("shapes", "test", size=scenes)
    requests, named = [], []
    for i in range(scenes):
        scene = dataset.scene(i)
        for k, o in enumerate(scene.objects if len(scene.objects) > 1 else []):
            requests.append(dataclasses.replace(scene.sample, query=f"the {o.colour} {o.kind}"))
            named.append((i, k, scene.objects))
    answers = generate_completions(policy, processor, requests, policy_image_size, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
    right, picked = [], {}
    for (i, k, objects), (text,), sample in zip(named, answers, requests):
        p = picked_object(_answer_box(text, sample.mask.shape, policy_image_size), objects)
        right.append(p == k)
        picked.setdefault(i, set()).add(p)
    return {"queries": len(right), "right_object": round(float(np.mean(right)), 3),
            "chance": round(float(np.mean([1 / len(o) for _, _, o in named])), 3),
            "same_object_for_every_query": round(float(np.mean([len(v) == 1 for v in picked.values()])), 3)}


def selection_scores(policy, processor, dataset, policy_image_size: int, *, rollouts: int = 8, indices=None,
                     temperature: float = 1.0, max_new_tokens: int | None = None, seed: int = 0,
                     batch_size: int = 32) -> dict:
    """What reward can select from, per query kind of a synthetic ``dataset`` and over ``"all"``:
    ``greedy_box_acc`` (box IoU > 0.5, greedy), ``greedy_right_object``, ``sampled_box_acc`` (mean over
    ``rollouts`` samples at ``temperature``), ``pass_at_k`` (some sample has box IoU > 0.5) and ``chance``
    (a blind pick among the scene's objects)."""
    indices = _subset(dataset, indices)
    scenes = [dataset.scene(i) for i in indices]
    samples = [s.sample for s in scenes]
    greedy = generate_completions(policy, processor, samples, policy_image_size, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size)
    torch.manual_seed(seed)
    sampled = generate_completions(policy, processor, samples, policy_image_size, n=rollouts, do_sample=True,
                                   temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = {}
    for scene, (g,), group in zip(scenes, greedy, sampled):
        boxes = [_answer_box(text, scene.sample.mask.shape, policy_image_size) for text in (g, *group)]
        hits = [b is not None and bool(box_on_target([b], [scene.sample.mask])[0]) for b in boxes]
        values = {"greedy_box_acc": hits[0],
                  "greedy_right_object": picked_object(boxes[0], scene.objects) == scene.target,
                  "sampled_box_acc": np.mean(hits[1:]), "pass_at_k": any(hits[1:]), "chance": 1 / len(scene.objects)}
        for kind in (scene.query_kind, "all"):
            for name, value in values.items():
                rows.setdefault(kind, {}).setdefault(name, []).append(float(value))
    return {kind: {"n": len(row["chance"]), **{k: round(float(np.mean(v)), 3) for k, v in row.items()}}
            for kind, row in rows.items()}


def standin_report(policy, processor, policy_image_size: int, eval_size: int = 200, rollouts: int = 8,
                   batch_size: int = 32) -> dict:
    """A tiny-world policy's grounding on every synthetic world: ``follows_query`` on ``shapes``, and
    ``selection_scores`` over all queries of each world's first ``eval_size`` test samples (per query kind on
    ``reasonseg``). ``batch_size``: completions generated at once."""
    from .data import NAMES, load_dataset

    report = {"follows_query": follows_query(policy, processor, policy_image_size, batch_size=batch_size)}
    for world in NAMES:
        scores = selection_scores(policy, processor, load_dataset(world, "test", size=eval_size), policy_image_size,
                                  rollouts=rollouts, batch_size=batch_size)
        report[world] = scores if world == "reasonseg" else scores["all"]
    return report


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


def reference_rows(config) -> dict:
    """The two rows before RL on ``config``'s test split: ``reference`` (the stand-in policy and tool,
    ``evaluate_policy``) and ``TRUE_BOXES_ROW`` (the same tool from ground-truth boxes)."""
    from .runs import load_models, load_splits

    _, test_set = load_splits(config)
    policy, processor, tool, size = load_models(config)
    return {"reference": evaluate_policy(policy, processor, tool, test_set, size),
            TRUE_BOXES_ROW: evaluate_true_boxes(tool, test_set)}


def main(argv=None) -> None:
    """``python -m grto_lib.evaluate``: the rows before RL (``reference_rows``) of each setting."""
    import argparse
    import json

    from .config import DATASETS, TrainConfig

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--eval-size", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for dataset in args.datasets:
        results[dataset] = reference_rows(TrainConfig(dataset=dataset, eval_size=args.eval_size))
        print(f"## {dataset} (test, {args.eval_size} samples)\n" + markdown_table(results[dataset]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
