"""Why GRPO does not raise the tiny policy's test box accuracy on ``reasonseg`` (docs/benchmarks.md section 6).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/policy_headroom_tiny.py \
        --policy committed=data/standins/policy [--policy e0.7=outputs/standins_try/e0.7] \
        --out benchmarks/results/cpu_policy_headroom.json

Three measurements on test splits:

1. **Does the policy follow its query?** (``follows_query``) Every object of a multi-object ``shapes`` scene is
   asked for by its explicit name; a policy that reads the query boxes different objects for different names.
2. **What the policy can read and pick**, on ``shapes`` (explicit queries: the stand-in's own world) and per query
   kind on ``reasonseg``, for each ``--policy``:
   - ``erased``: share of queries holding a word whose input embedding is ``<|unk|>``'s (the committed stand-in
     gives every word it never saw that embedding, so such words are indistinguishable to it);
   - ``chance``: mean of 1 / (objects in the scene), the right-object rate of a blind guess;
   - ``greedy_right_object``: the greedy box's best-matching object (box IoU > 0.1) is the target;
   - ``greedy_box_acc``, ``sampled_box_acc``: box IoU > 0.5, greedy and at temperature 1 (``--rollouts`` each);
   - ``pass_at_k``: some sampled rollout has box IoU > 0.5 (what reward has to select from);
   and, for every ``--policy`` after the first, how far its embeddings of the words the first one erased have
   moved (``erased_rows_moved``: a policy trained on from the committed stand-in, e.g. a run's final policy).
3. **Memorisation against generalisation**: GRPO from the committed stand-in, 40 steps of 8 prompts x 8
   rollouts (the study's budget), drawing prompts from training pools of ``--pools`` samples. Recorded: the mean
   training reward of the first and last 5 steps, and the test scores. Two runs at a time, one thread each.
"""
import argparse
import dataclasses
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from grto_lib.config import TrainConfig
from grto_lib.data import SUPERLATIVES, load_dataset
from grto_lib.generation import generate_completions
from grto_lib.geometry import box_iou, mask_to_box
from grto_lib.policy import PolicyConfig, load_policy
from grto_lib.policy_standin import UNK
from grto_lib.results import COMMON, run_one
from grto_lib.rewards import parse_answer

REPO = Path(__file__).resolve().parent.parent
RELATION_WORDS = (" left of ", " right of ", " above ", " below ", " nearest ", " farthest from ")


def query_kind(query: str) -> str:
    """The ``REASONSEG_KINDS`` entry a synthetic reasonseg query was drawn from, read off its wording."""
    if any(f" {word} " in f" {query} " for word in SUPERLATIVES):
        return "superlative"
    if any(word in f" {query} " for word in RELATION_WORDS):
        return "relation"
    if "the colour of" in query:
        return "implicit_colour"
    return "implicit_shape" if query.startswith("the shape ") else "explicit"


def box_of(text: str, hw) -> np.ndarray | None:
    answer = parse_answer(text)
    return None if answer is None else np.array(answer.in_image_pixels(hw, 128).bbox)


def picked_object(box, objects) -> int | None:
    """Index of the object whose box overlaps ``box`` most (box IoU > 0.1), or None."""
    if box is None:
        return None
    ious = [box_iou(box, mask_to_box(o.mask)) for o in objects]
    return int(np.argmax(ious)) if max(ious) > 0.1 else None


def erased_token_ids(model, tokenizer) -> set[int]:
    """Tokens whose input embedding equals ``<|unk|>``'s (the words the stand-in never saw), ``<|unk|>`` excluded."""
    embedding = model.get_input_embeddings().weight
    unk = tokenizer.convert_tokens_to_ids(UNK)
    return {i for i in range(len(embedding)) if i != unk and torch.equal(embedding[i], embedding[unk])}


def read_and_pick(model, processor, world: str, samples: int, rollouts: int) -> dict:
    torch.manual_seed(0)
    erased_ids = erased_token_ids(model, processor.tokenizer)
    dataset = load_dataset(world, "test", size=samples)
    scenes = [dataset.scene(i) for i in range(samples)]
    greedy = generate_completions(model, processor, [s.sample for s in scenes], 128)
    sampled = generate_completions(model, processor, [s.sample for s in scenes], 128, n=rollouts, do_sample=True)
    rows = defaultdict(lambda: defaultdict(list))
    for scene, (g,), group in zip(scenes, greedy, sampled):
        hw, target = scene.sample.mask.shape, mask_to_box(scene.sample.mask)
        erased = bool(erased_ids & set(processor.tokenizer(scene.sample.query, add_special_tokens=False)["input_ids"]))
        g_box = box_of(g, hw)
        s_boxes = [box_of(t, hw) for t in group]
        s_hits = [b is not None and box_iou(b, target) > 0.5 for b in s_boxes]
        for kind in (query_kind(scene.sample.query), "all"):
            row = rows[kind]
            row["erased"].append(erased)
            row["chance"].append(1 / len(scene.objects))
            row["greedy_right_object"].append(picked_object(g_box, scene.objects) == scene.target)
            row["greedy_box_acc"].append(g_box is not None and box_iou(g_box, target) > 0.5)
            row["sampled_right_object"].append(np.mean([picked_object(b, scene.objects) == scene.target
                                                        for b in s_boxes]))
            row["sampled_box_acc"].append(np.mean(s_hits))
            row["pass_at_k"].append(any(s_hits))
    return {kind: {"n": len(row["chance"]), **{k: round(float(np.mean(v)), 3) for k, v in row.items()}}
            for kind, row in rows.items()}


def follows_query(model, processor, scenes: int = 300) -> dict:
    """Ask for every object of each multi-object ``shapes`` test scene by its explicit name ("the red circle").

    ``right_object``: the greedy box's best-matching object is the one named (``chance``: a blind guess);
    ``same_object_for_every_query``: share of scenes where every query got the same object, "none" counting as one
    (a policy that reads the query gets different objects for different names)."""
    dataset = load_dataset("shapes", "test", size=scenes)
    requests, named = [], []
    for i in range(scenes):
        scene = dataset.scene(i)
        for k, o in enumerate(scene.objects if len(scene.objects) > 1 else []):
            requests.append(dataclasses.replace(scene.sample, query=f"the {o.colour} {o.kind}"))
            named.append((i, k, scene.objects))
    answers = generate_completions(model, processor, requests, 128)
    right, picked = [], defaultdict(set)
    for (i, k, objects), (text,) in zip(named, answers):
        p = picked_object(box_of(text, (128, 128)), objects)
        right.append(p == k)
        picked[i].add(p)
    return {"queries": len(right), "right_object": round(float(np.mean(right)), 3),
            "chance": round(float(np.mean([1 / len(o) for _, _, o in named])), 3),
            "same_object_for_every_query": round(float(np.mean([len(v) == 1 for v in picked.values()])), 3)}


def erased_rows_moved(reference, model, processor) -> dict:
    """How far ``model``'s input embeddings of the words ``reference`` erased (gave ``<|unk|>``'s embedding) have
    moved, how far apart they now are, and, for scale, the mean distance between known colour and shape words."""
    before, after = reference.get_input_embeddings().weight, model.get_input_embeddings().weight
    erased = sorted(erased_token_ids(reference, processor.tokenizer))
    known = processor.tokenizer.convert_tokens_to_ids(["red", "green", "blue", "circle", "square", "star"])
    moved = (after[erased] - before[erased]).norm(dim=1)
    return {"erased_words": len(erased), "moved_mean": round(moved.mean().item(), 4),
            "moved_max": round(moved.max().item(), 4),
            "largest_distance_between_them": round(torch.pdist(after[erased]).max().item(), 4),
            "mean_distance_between_known_words": round(torch.pdist(after[known]).mean().item(), 3)}


def pool_run(pool: int, out: Path) -> dict:
    config = TrainConfig(**{**COMMON, "method": "grpo", "dataset": "reasonseg", "train_size": pool,
                            "curve_every": 0, "logging_steps": 1, "output_dir": str(out / f"pool_{pool}")})
    _, seconds = run_one(f"pool_{pool}", config)
    metrics = json.loads((Path(config.output_dir) / "metrics.json").read_text())
    rewards = [e["reward"] for e in metrics["log_history"] if "reward" in e]
    return {"train_size": pool, "reward_first_5": round(float(np.mean(rewards[:5])), 3),
            "reward_last_5": round(float(np.mean(rewards[-5:])), 3),
            "test": {k: round(v, 3) for k, v in metrics["test"].items() if k in ("giou", "box_acc", "format_valid")},
            "seconds": round(seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", action="append", default=[], help="name=folder (repeatable)")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--pools", type=int, nargs="*", default=[16, 64, 2000])
    parser.add_argument("--work", default="outputs/policy_headroom", help="run folders of the pool runs")
    parser.add_argument("--out", default="benchmarks/results/cpu_policy_headroom.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"machine": "2-core x86_64 CPU, one torch thread per job", "samples": args.samples,
              "rollouts": args.rollouts, "follows_query": {}, "read_and_pick": {}, "erased_rows_moved": {}, "pools": []}
    reference = None
    for spec in args.policy or ["committed=data/standins/policy"]:
        name, path = spec.split("=", 1)
        model, processor = load_policy(PolicyConfig(preset="tiny", model_name_or_path=str(REPO / path)))
        if reference is None:
            reference = model
        else:
            result["erased_rows_moved"][name] = erased_rows_moved(reference, model, processor)
        result["read_and_pick"][name] = {world: read_and_pick(model, processor, world, args.samples, args.rollouts)
                                         for world in ("shapes", "reasonseg")}
        result["follows_query"][name] = follows_query(model, processor)
        print(name, json.dumps(result["follows_query"][name]), json.dumps(result["read_and_pick"][name], indent=1))
    with ThreadPoolExecutor(2) as pool:
        result["pools"] = list(pool.map(lambda p: pool_run(p, REPO / args.work), args.pools))
    print(json.dumps(result["pools"], indent=1))
    (REPO / args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
