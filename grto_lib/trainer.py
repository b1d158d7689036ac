"""GRTO on TRL: ``GRTOTrainer`` subclasses ``trl.GRPOTrainer`` and adds the tool loss.

TRL does generation, rewards, group advantages, the clipped policy surrogate, LoRA, accelerate, logging and
checkpoints. This class adds exactly what GRTO needs:

* scoring (``RolloutScorer``) runs the current tool on the rollouts, so the mask reward that feeds the
  advantages comes from the tool being trained, and keeps each rollout's parsed prompts and image embedding;
* the loss step adds ``lambda * sum_i w_i L_tool(D_phi(I, sg[p(o_i)]), y)`` to TRL's policy loss, with the
  prompts detached (no gradient reaches the policy through the tool) and ``w`` uniform over valid rollouts
  (``losses.tool_loss_weights``). The term is divided by the gradient-accumulation steps, as TRL does for its
  own auxiliary loss, because TRL's policy loss is already scaled that way;
* the tool has its own Adam optimizer and gradient clipping, stepped right before the policy's optimizer;
  with several processes its gradients are averaged like the policy's;
* a non-finite loss is replaced by zero (nothing is updated), counted in ``train/nonfinite_loss_skipped``;
* checkpoints also hold the tool and its optimizer (``tool/``), resumable with ``resume_from_checkpoint``;
* step time is logged in parts: ``time/generate_and_score`` (TRL's generation plus scoring), of which
  ``time/tool_scoring`` is the tool's forward pass and the rewards; ``time/policy_loss`` (policy forward)
  and ``time/tool_loss`` (decoder forward); TRL's ``step_time`` is the whole step, backward passes and
  optimizer steps included.

``method="grpo"`` keeps the tool frozen: same rollouts, same rewards, no tool loss.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl import GRPOTrainer

from . import losses
from .files import atomic_write, write_text
from .geometry import box_on_target
from .scorer import RolloutScorer
from .tool import WEIGHTS_FILE, save_tool, trainable_parameters

TRL_VERSION = "1.16.0"
"""The TRL release this trainer is written against. It overrides private methods of ``trl.GRPOTrainer``
(``_generate_and_score_completions``, ``_compute_loss``) and of ``transformers.Trainer`` (``_save_checkpoint``,
``_load_from_checkpoint``, ``_load_optimizer_and_scheduler``), which another release may rename or change
without notice. The pins (requirements.lock, requirements.txt, pyproject.toml, environment.yml) hold it, and
``tests/test_packaging.py`` checks the installed TRL and every overridden method against it."""
TOOL_CHECKPOINT_DIR = "tool"
COMPLETE_MARKER = "COMPLETE"
"""Written last into a checkpoint folder: a folder without it was interrupted mid-write and is never resumed."""


def save_tool_state(tool, optimizer, folder) -> None:
    """The tool's weights (``save_tool``) and, when given, its optimizer state, each written atomically."""
    folder = Path(folder)
    save_tool(tool, folder)
    if optimizer is not None:
        atomic_write(folder / "optimizer.pt", lambda tmp: torch.save(optimizer.state_dict(), tmp))


def load_tool_state(tool, optimizer, folder) -> None:
    """Inverse of ``save_tool_state`` (tensors only: safetensors and ``weights_only=True``)."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder / WEIGHTS_FILE} is missing: {folder.parent} is not a GRTO checkpoint")
    tool.sam.load_state_dict(load_file(folder / WEIGHTS_FILE))
    if optimizer is not None and (folder / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` folder of ``output_dir`` that was completely written, or None."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return str(max(found)[1]) if found else None


class _ToolOptimizerStep(TrainerCallback):
    """Steps the tool's optimizer at the same moment as the policy's (after its gradients are accumulated)."""

    def __init__(self, trainer: "GRTOTrainer"):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._step_tool()


class GRTOTrainer(GRPOTrainer):
    """GRPO on the policy plus, when ``train_tool``, the GRTO tool loss on the same rollouts."""

    def __init__(self, *, scorer: RolloutScorer, train_tool: bool, tool_lr: float = 3e-4,
                 tool_loss_weight: float = 1.0, tool_loss: str = "bce_dice", tool_weighting: str = "uniform",
                 tool_max_grad_norm: float = 1.0, **kwargs):
        if kwargs.get("args") is not None and getattr(kwargs["args"], "use_liger_kernel", False):
            raise ValueError("use_liger_kernel=True skips GRPOTrainer._compute_loss, where the GRTO tool loss is "
                             "added (TRL issue #7009): set use_liger_kernel=False")
        super().__init__(reward_funcs=scorer.reward_functions(), **kwargs)
        self.scorer = scorer
        self.tool = scorer.tool.to(self.accelerator.device)
        self.train_tool = train_tool
        self.tool_loss_weight = tool_loss_weight
        self.tool_loss_kind = tool_loss
        self.tool_weighting = tool_weighting
        self.tool_max_grad_norm = tool_max_grad_norm
        self.tool_parameters = trainable_parameters(self.tool) if train_tool else []
        self.tool_optimizer = torch.optim.Adam(self.tool_parameters, lr=tool_lr) if self.tool_parameters else None
        self.tool.train(False)  # no dropout/batch-norm updates; gradients still flow
        if not train_tool:
            self.tool.requires_grad_(False)
        self.add_callback(_ToolOptimizerStep(self))

    # --- scoring: keep the tool's prompts and embeddings for the loss step ----------------------------------
    def _generate_and_score_completions(self, inputs):
        """TRL's sampling and scoring, plus the scorer's ``ToolBatch`` of the same rollouts (the side channel
        documented in ``grto_lib.scorer``): its tensors ride in the batch as ``tool_*`` keys to ``batch_tool_loss``."""
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        output.update(self.scorer.pop_tool_batch().as_dict())
        total = time.perf_counter() - start
        self._metrics["train"]["time/generate_and_score"].append(total)
        self._metrics["train"]["time/tool_scoring"].append(self.scorer.seconds)
        return output

    # --- the joint surrogate --------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        start = time.perf_counter()
        loss = super()._compute_loss(model, inputs)
        policy_time = time.perf_counter() - start
        mode = "train" if self.model.training else "eval"
        if self.train_tool and mode == "train":
            start = time.perf_counter()
            tool_loss = self.batch_tool_loss(inputs)
            loss = loss + self.tool_loss_weight * tool_loss / self.current_gradient_accumulation_steps
            self._metrics[mode]["time/tool_loss"].append(time.perf_counter() - start)
        self._metrics[mode]["time/policy_loss"].append(policy_time)
        skipped = not torch.isfinite(loss)
        self._metrics[mode]["nonfinite_loss_skipped"].append(float(skipped))
        if skipped:
            # A loss connected to no parameter: every gradient stays None, so both optimizers skip every
            # parameter this step (Adam leaves parameters whose grad is None untouched, moments included).
            loss = torch.zeros((), device=loss.device, requires_grad=True)
        return loss

    def batch_tool_loss(self, inputs) -> torch.Tensor:
        """``sum_i w_i L_tool(D_phi(I_i, sg[p(o_i)]), y_i)`` over this micro-batch's rollouts."""
        valid = inputs["tool_valid"]
        index = inputs["tool_sample_index"].tolist()
        by_index = self.scorer.samples(index)
        on_target = None  # only the on_target scheme reads the flags; the other schemes skip their cost
        if self.tool_weighting == "on_target":
            boxes = inputs["tool_boxes"].detach().cpu().numpy()
            on_target = torch.as_tensor(box_on_target(boxes, [by_index[i].mask for i in index]), device=valid.device)
        weights = losses.tool_loss_weights(inputs["advantages"].detach(), valid, self.tool_weighting, on_target)
        rows = torch.nonzero(weights > 0).flatten()
        if len(rows) == 0:
            self._metrics["train"]["tool/loss"].append(0.0)
            return torch.zeros((), device=valid.device)
        samples = [by_index[index[r]] for r in rows.tolist()]
        logits = self.tool.decode(inputs["tool_embeddings"][rows], torch.arange(len(rows), device=valid.device),
                                  inputs["tool_boxes"][rows].detach(), inputs["tool_points"][rows].detach(),
                                  [s.mask.shape for s in samples])
        per_rollout = losses.rollout_tool_losses(logits, samples, kind=self.tool_loss_kind)
        loss = (weights[rows] * per_rollout).sum()
        self._metrics["train"]["tool/loss"].append(loss.item())
        self._metrics["train"]["tool/valid_rollouts"].append(valid.float().mean().item())
        self._metrics["train"]["tool/trained_rollouts"].append(len(rows) / len(index))
        return loss

    def _step_tool(self) -> None:
        """Average the tool's gradients over processes, clip, step, zero. Called before the policy's step."""
        if self.tool_optimizer is None:
            return
        if self.accelerator.num_processes > 1:
            # Every process joins the all-reduce, also one whose rollouts gave the tool no loss this step (none on
            # target): it contributes zero gradients. Skipping it would leave the others waiting forever.
            has_loss = torch.tensor(float(any(p.grad is not None for p in self.tool_parameters)),
                                    device=self.accelerator.device)
            if self.accelerator.reduce(has_loss, reduction="sum").item() == 0:
                return
            for p in self.tool_parameters:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(self.accelerator.reduce(p.grad, reduction="mean"))
        grads = [p.grad for p in self.tool_parameters if p.grad is not None]
        if not grads:
            return
        if not all(torch.isfinite(g).all() for g in grads):
            self._metrics["train"]["tool/nonfinite_grad_skipped"].append(1.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.tool_parameters, self.tool_max_grad_norm)
            self._metrics["train"]["tool/grad_norm"].append(norm.item())
            self.tool_optimizer.step()
        self.tool_optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def create_model_card(self, *args, **kwargs) -> None:
        """Writes nothing. TRL would write a Hub model card (``README.md``) into the run folder at every checkpoint,
        calling the run "a fine-tuned version of None" with a text-generation quick start; a run folder's files
        are described in the repository's README."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_tool_state(self.tool, self.tool_optimizer, os.path.join(folder, TOOL_CHECKPOINT_DIR))
            write_text(Path(folder) / COMPLETE_MARKER, "ok\n")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Full-model checkpoints are saved with ``save_pretrained``, whose Qwen2.5-VL key names differ from the
        module's own; ``Trainer`` would load them with missing keys (transformers 5.24). Load them back through
        ``from_pretrained``, which maps the names. LoRA adapters and sharded/FSDP checkpoints go the usual way."""
        model = model if model is not None else self.model
        unwrapped = self.accelerator.unwrap_model(model)
        weights = Path(resume_from_checkpoint) / "model.safetensors"
        if not weights.is_file() or not hasattr(type(unwrapped), "from_pretrained") or hasattr(unwrapped, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = type(unwrapped).from_pretrained(resume_from_checkpoint, dtype=unwrapped.dtype)
        unwrapped.load_state_dict(saved.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            load_tool_state(self.tool, self.tool_optimizer, os.path.join(checkpoint, TOOL_CHECKPOINT_DIR))
