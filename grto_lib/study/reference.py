"""The study's rows before RL: what the stand-in policy and tool score on each setting's test split before any
training (``setting_rows``), the rows every table of ``results`` starts with, and whether the stand-in policy
follows its query (``reference_rows``, which ``results`` computes once per study).

    python -m grto_lib.study.reference [--datasets reasonseg cod] [--eval-size 200]

prints the rows of each setting as markdown tables, then all of them as JSON.
"""
from __future__ import annotations

import argparse
import json

import torch

from grto_lib.config import DATASETS, TrainConfig
from grto_lib.evaluate import TRUE_BOXES_ROW, evaluate_policy, evaluate_true_boxes, markdown_table


def setting_rows(config: TrainConfig) -> dict:
    """The two rows before RL on ``config``'s test split: ``reference`` (the stand-in policy and tool,
    ``evaluate_policy``) and ``TRUE_BOXES_ROW`` (the same tool from ground-truth boxes, ``evaluate_true_boxes``)."""
    from grto_lib.runs import load_models, load_splits  # transformers and SAM: imported when models are loaded

    _, test_set = load_splits(config)
    policy, processor, tool, size = load_models(config)
    return {"reference": evaluate_policy(policy, processor, tool, test_set, size),
            TRUE_BOXES_ROW: evaluate_true_boxes(tool, test_set)}


def reference_rows(eval_size: int) -> dict:
    """Per setting of ``DATASETS``, its rows before RL (``setting_rows`` on ``eval_size`` test samples); and the
    stand-in policy's ``follows_query`` (``standin``)."""
    from grto_lib.runs import load_models
    from grto_lib.tinyworld.diagnostics import follows_query

    torch.set_num_threads(1)
    out = {dataset: setting_rows(TrainConfig(dataset=dataset, eval_size=eval_size)) for dataset in DATASETS}
    policy, processor, _, size = load_models(TrainConfig())
    out["standin"] = {"follows_query": follows_query(policy, processor, size)}
    return out


def main(argv=None) -> None:
    """``python -m grto_lib.study.reference``: the rows before RL (``setting_rows``) of each setting."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--eval-size", type=int, default=200)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for dataset in args.datasets:
        results[dataset] = setting_rows(TrainConfig(dataset=dataset, eval_size=args.eval_size))
        print(f"## {dataset} (test, {args.eval_size} samples)\n" + markdown_table(results[dataset]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
