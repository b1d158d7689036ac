"""What makes the tiny policy read its query? Supervised variants of the stand-in's first stage (docs/benchmarks.md
section 6).

    python3 benchmarks/query_order_probe.py --order text_first --out outputs/order_probe/text_first \
        --result OUT/text_first.json [--device cuda --workers 6 --steps 886 --time-limit 400]
        [--scenes crowded] [--hidden 256 --layers 6] [--init-from data/standins/policy]

Trains the tiny policy with the committed stand-in's first stage (``policy_standin.STAGE_1``: plain ``shapes``
scenes, explicit queries), changed in one respect at a time, then measures with ``policy_headroom_tiny`` whether
its greedy box follows the named object (``follows_query``, ``read_and_pick``). The variants, for this process
only:

- ``--order text_first``: the query before the image in the user turn. Attention is causal, so with the image
  first no image token can see the query; with the query first every image token can compare itself with it.
- ``--scenes crowded``: scenes of 2-4 shapes (``reasonseg``'s, data seed 1) asked for by their explicit name, so
  that boxing the most salient shape, which ignores the query, pays off less than on 1-3 shapes.
- ``--hidden``, ``--layers``: a wider or deeper language model (``policy.tiny_model_config``).
- ``--init-from``: continue a policy (the committed stand-in) instead of starting from scratch.
"""
import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grto_lib.generation
import grto_lib.policy_standin as policy_standin
from grto_lib.data import load_dataset
from grto_lib.policy import PolicyConfig, build_tiny_policy, load_policy
from grto_lib.prompts import SYSTEM_PROMPT
from policy_headroom_tiny import follows_query, read_and_pick


def text_first_messages(query: str) -> list[dict]:
    """``prompts.build_messages`` with the query before the image in the user turn."""
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "text", "text": query}, {"type": "image"}]},
    ]


class CrowdedExplicitScenes:
    """``reasonseg`` training scenes (2-4 shapes, data seed 1) whose query is the target's explicit name."""

    def __init__(self, size: int, image_size: int):
        self.scenes = load_dataset("reasonseg", "train", size=size, image_size=image_size,
                                   seed=policy_standin.PRETRAIN_DATA_SEED)

    def __len__(self) -> int:
        return len(self.scenes)

    def scene(self, i):
        scene = self.scenes.scene(i)
        target = scene.objects[scene.target]
        return dataclasses.replace(scene, sample=dataclasses.replace(scene.sample,
                                                                     query=f"the {target.colour} {target.kind}"))

    def __getitem__(self, i):
        return self.scene(i).sample


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", choices=("image_first", "text_first"), required=True)
    parser.add_argument("--out", required=True, help="policy folder")
    parser.add_argument("--result", required=True, help="JSON file for the report")
    parser.add_argument("--steps", type=int, default=policy_standin.STAGE_1["steps"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--scenes", choices=("shapes", "crowded"), default="shapes")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--init-from", default=None)
    parser.add_argument("--lr", type=float, default=policy_standin.STAGE_1["lr"])
    args = parser.parse_args()
    if args.order == "text_first":
        policy_standin.build_messages = grto_lib.generation.build_messages = text_first_messages
    if args.scenes == "crowded":
        policy_standin.load_dataset = lambda name, split, size, image_size: CrowdedExplicitScenes(size, image_size)
    policy_standin.build_tiny_policy = functools.partial(build_tiny_policy, hidden_size=args.hidden,
                                                         num_layers=args.layers)
    recipe = {**policy_standin.STAGE_1, "steps": args.steps, "lr": args.lr}
    report = policy_standin.pretrain_policy_standin(args.out, device=args.device, num_workers=args.workers,
                                                    eval_size=0, init_from=args.init_from,
                                                    time_limit_s=args.time_limit, **recipe)
    model, processor = load_policy(PolicyConfig(preset="tiny", model_name_or_path=args.out))
    model.to(args.device)
    report["read_and_pick"] = {world: read_and_pick(model, processor, world, args.samples, 8)
                               for world in ("shapes", "reasonseg")}
    report["follows_query"] = follows_query(model, processor)
    report["variant"] = {k: v for k, v in vars(args).items() if k not in ("out", "result", "device", "workers")}
    Path(args.result).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
