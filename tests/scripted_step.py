"""One GRTO optimizer step of the tiny world on scripted rollouts, for the "same numbers" tests of test_training.py.

The policy's sampling is replaced by a fixed function of each prompt's image (``scripted_generation``), so a run
with one process and a run with two (``torchrun``, gloo) train on the very same rollouts, whatever the processes'
random streams. ``one_step`` builds the trainer as ``grto_lib.train`` does, runs one optimizer step and returns the
gradients both models are about to be updated with (after every reduction over micro-batches and processes) and
whether any parameter moved. As a script (under torchrun) process 0 saves that to ``--out``::

    python -m torch.distributed.run --nproc_per_node 2 tests/scripted_step.py --out grads.pt --prompts-per-step 2
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

import numpy as np
import torch
from transformers import TrainerCallback

from grto_lib.config import TrainConfig
from grto_lib.prompts import format_answer
from grto_lib.runs import load_models, load_splits
from grto_lib.train import build_trainer, seed_everything


def scripted_generation(trainer, view_size: int):
    """A stand-in for ``GRPOTrainer._generate_single_turn``: the k-th rollout of a prompt is a function of the
    prompt's image and k alone (a seeded random box and points, every fourth rollout malformed)."""
    tokenizer = trainer.processing_class.tokenizer

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        completion_ids, seen = [], {}
        for image_list in images:
            key = hashlib.sha256(image_list[0].tobytes()).hexdigest()
            k = seen[key] = seen.get(key, -1) + 1
            rng = np.random.default_rng([int(key[:8], 16), k])
            x1, y1 = rng.integers(0, view_size // 2, 2)
            x2, y2 = x1 + rng.integers(8, view_size // 2), y1 + rng.integers(8, view_size // 2)
            text = format_answer([x1, y1, x2, y2], [[(x1 + x2) // 2, (y1 + y2) // 2]] * 2)
            if k % 4 == 3:
                text = text.replace("</answer>", "")
            completion_ids.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        return completion_ids, None

    return generate


class _Record(TrainerCallback):
    """The gradients right before both optimizers step (after the trainer's reductions), and the parameters
    before and after the step."""

    def __init__(self, trainer):
        self.trainer, self.result = trainer, {}

    def _parameters(self):
        return [p for p in self.trainer.model.parameters() if p.requires_grad], self.trainer.tool_parameters

    def on_train_begin(self, args, state, control, **kwargs):
        self.before = [[p.detach().clone() for p in group] for group in self._parameters()]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for name, group in zip(("policy", "tool"), self._parameters()):
            self.result[name] = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                                           for p in group]).clone()

    def on_step_end(self, args, state, control, **kwargs):
        for name, group, before in zip(("policy", "tool"), self._parameters(), self.before):
            self.result[name + "_moved"] = any(not torch.equal(p, b) for p, b in zip(group, before))


def one_step(output_dir, *, prompts_per_step: int, micro_batch: int | None = None, poison_call: int | None = None,
             **overrides) -> dict:
    """One GRTO step on scripted rollouts: ``{"policy", "tool"}`` gradients (flat), ``{"policy_moved",
    "tool_moved"}``, and ``skipped`` (the logged ``nonfinite_loss_skipped``). ``poison_call=n`` makes the policy loss
    of this process's n-th micro-batch (1-based) NaN."""
    from trl import GRPOTrainer

    config = TrainConfig(method="grto", steps=1, prompts_per_step=prompts_per_step, num_generations=4,
                         train_size=16, eval_size=4, curve_every=0, save_steps=100, logging_steps=1,
                         tool_weighting="uniform", warmup_steps=0, output_dir=str(output_dir), micro_batch=micro_batch,
                         **overrides)
    seed_everything(config.seed)
    train_set, _ = load_splits(config)
    policy, processor, tool, size = load_models(config)
    trainer = build_trainer(config, policy, processor, tool, train_set, size)
    trainer._generate_single_turn = scripted_generation(trainer, size)
    if poison_call is not None:
        calls, policy_loss = [], GRPOTrainer._compute_loss

        def poisoned(self, model, inputs):
            calls.append(1)
            loss = policy_loss(self, model, inputs)
            return loss * float("nan") if len(calls) == poison_call else loss

        GRPOTrainer._compute_loss = poisoned
    record = _Record(trainer)
    trainer.add_callback(record)
    try:
        trainer.train()
    finally:
        if poison_call is not None:
            GRPOTrainer._compute_loss = policy_loss
    logged = [e["nonfinite_loss_skipped"] for e in trainer.state.log_history if "nonfinite_loss_skipped" in e]
    return {**record.result, "skipped": logged}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompts-per-step", type=int, required=True)
    parser.add_argument("--poison-rank", type=int, default=-1, help="this process's first micro-batch loss is NaN")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    result = one_step(os.path.dirname(os.path.abspath(args.out)) + f"/run{rank}",
                      prompts_per_step=args.prompts_per_step, poison_call=1 if rank == args.poison_rank else None)
    result["rank"] = rank
    torch.save(result, args.out + f".rank{rank}")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
