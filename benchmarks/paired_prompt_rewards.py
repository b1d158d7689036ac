"""Did a run's policy improve on the very prompts it trained on?

The study's training-reward target compares the mean reward of a run's first 5 logged steps with that of its last
5, and those steps drew different prompts: a run whose last prompts are harder can improve and still log a lower
reward. This scores the run's start (the reference policy with the tool RL began from: the stand-in, or BTO's tool
for B-GRTO) and its end (the final policy and tool) on the same prompts, the first 5 steps' and the last 5's, with
the same number of sampled rollouts per prompt as training. ``start`` then measures the draw (how much harder one
window's prompts are), ``end - start`` on a window measures what RL learned on those prompts.

    python benchmarks/paired_prompt_rewards.py RUN_FOLDER [RUN_FOLDER ...] --out paired.json

A run folder is what ``python -m grto_lib.train`` leaves (``config.json``, ``log.jsonl``, ``final/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from grto_lib.config import TrainConfig
from grto_lib.data import query_kinds, training_order
from grto_lib.evaluate import rollout_groups
from grto_lib.files import write_json
from grto_lib.runs import TINY_TOOL, load_models, load_run, load_splits
from grto_lib.study.results import training_rewards

WINDOW = 5
"""Steps per window, as in the study's target."""


def _windows(config: TrainConfig, train_set) -> dict[str, list[int]]:
    """The sample indices training visited in its first and last ``WINDOW`` steps (``data.training_order``)."""
    order = [int(i) for i in training_order(query_kinds(train_set), config.seed, config.rl_prompts)]
    per_step = config.prompts_per_step
    visited = [order[k % len(order)] for k in range(config.steps * per_step)]
    return {"first": visited[:WINDOW * per_step], "last": visited[-WINDOW * per_step:]}


def _mean_reward(policy, processor, tool, dataset, policy_image_size, indices, config, seed) -> float:
    """Mean total reward of ``num_generations`` sampled rollouts on each of ``indices``."""
    groups = rollout_groups(policy, processor, tool, dataset, policy_image_size, indices=indices,
                            group_size=config.num_generations, temperature=config.temperature,
                            max_new_tokens=config.completion_tokens, seed=seed)
    return float(np.mean([sum(r["rewards"].values()) for group in groups for r in group]))


def paired_rewards(run_folder) -> dict:
    """``logged`` (the run's own training reward), ``start`` and ``end`` (both scored here) on each window."""
    folder = Path(run_folder)
    config = TrainConfig.from_json(folder / "config.json")
    train_set, _ = load_splits(config)
    windows = _windows(config, train_set)
    logged = training_rewards({"log_history": [json.loads(line) for line in (folder / "log.jsonl").open()]})

    start_tool = folder / "bto_tool" if config.method == "b-grto" else (config.tool_checkpoint or TINY_TOOL)
    start = load_models(dataclasses.replace(config, tool_checkpoint=str(start_tool)))
    _, *end = load_run(folder)
    result = {"run": folder.name, "logged": {"first": float(np.mean(logged[:WINDOW])),
                                             "last": float(np.mean(logged[-WINDOW:]))}}
    for name, (policy, processor, tool, size) in (("start", start), ("end", end)):
        policy.eval()
        with torch.no_grad():
            result[name] = {window: _mean_reward(policy, processor, tool, train_set, size, indices, config, seed=k)
                            for k, (window, indices) in enumerate(windows.items())}
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print("| run | logged: first 5 -> last 5 | start: first / last prompts | end: first / last prompts |")
    print("|---|---|---|---|")
    for folder in args.runs:
        row = paired_rewards(folder)
        rows.append(row)
        print(f"| {row['run']} | {row['logged']['first']:.2f} -> {row['logged']['last']:.2f} | "
              f"{row['start']['first']:.2f} / {row['start']['last']:.2f} | "
              f"{row['end']['first']:.2f} / {row['end']['last']:.2f} |", flush=True)
    write_json(args.out, rows)


if __name__ == "__main__":
    main()
