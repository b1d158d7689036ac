"""Does a tiny-world policy read its query? Diagnostics of the stand-in policy on synthetic scenes, whose objects
are known: which object each answer boxes (``picked_object``), whether naming an object gets that object
(``follows_query``), what reward can select from among sampled answers (``selection_scores``), and both over every
synthetic world (``standin_report``, which the stand-in's build records in its manifest).

They need ``SyntheticDataset.scene`` (every object's mask, colour and kind): real datasets have no such scenes.
The method's own evaluation, on any dataset, is ``grto_lib.evaluate``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from grto_lib.data import NAMES, load_dataset
from grto_lib.generation import generate_completions
from grto_lib.geometry import box_iou, box_on_target, mask_to_box
from grto_lib.rewards import parse_answer


def _answer_box(text, image_hw, policy_image_size: int):
    """The box of a completion in image pixels, or None when it does not parse."""
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
    (a blind pick among the scene's objects). ``indices``: the samples scored (None: all)."""
    indices = range(len(dataset)) if indices is None else indices
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
    report = {"follows_query": follows_query(policy, processor, policy_image_size, batch_size=batch_size)}
    for world in NAMES:
        scores = selection_scores(policy, processor, load_dataset(world, "test", size=eval_size), policy_image_size,
                                  rollouts=rollouts, batch_size=batch_size)
        report[world] = scores if world == "reasonseg" else scores["all"]
    return report
