"""GRTO on TRL: ``GRTOTrainer`` subclasses ``trl.GRPOTrainer`` and adds the tool loss.

TRL does generation, group advantages, the clipped policy surrogate, LoRA, accelerate, logging and checkpoints.
This class adds exactly what GRTO needs:

* scoring: ``_calculate_rewards`` (TRL's one call per batch for all reward functions) scores the rollouts once
  with ``RolloutScorer.score``, so the mask reward that feeds the advantages comes from the tool being trained;
  the scorer's ``ToolBatch`` (parsed prompts, one image embedding per distinct image) is kept on the trainer for
  the generation batch's loss steps, and TRL's batch carries only each rollout's row in it (``tool_rollout``);
* the loss step adds ``lambda * sum_i w_i L_tool(D_phi(I_i, sg[p(o_i)]), y_i)`` to TRL's policy loss, with the
  prompts detached (no gradient reaches the policy through the tool) and ``w = losses.tool_loss_weights`` over
  the **whole optimizer step**: the normaliser sums over every micro-batch of the step and every process, so
  ``micro_batch`` and data parallelism leave the tool's update what one process computes on the whole step.
  TRL's policy loss is already scaled for gradient accumulation, and so are these weights;
* the tool has its own Adam optimizer and gradient clipping, stepped right after the policy's optimizer; with
  several processes its gradients are summed over processes (each holds its share of the step's weights);
* a non-finite loss in any micro-batch on any process skips the whole optimizer step of both models on every
  process (counted in ``nonfinite_loss_skipped``); the loss that replaces it touches every trainable parameter
  with a zero gradient, so data-parallel gradient reduction runs on every process and nothing waits forever;
* checkpoints also hold the tool and its optimizer (``tool/``), resumable with ``resume_from_checkpoint``;
* with ``TrainConfig.compile_generation``, ``_generate_single_turn`` gives the static cache one length for the run
  and hands ``generate`` the model with transformers' own forward, so its compiled decoding step is compiled once;
* step time is logged in parts: ``time/generate_and_score`` (TRL's generation plus scoring), of which
  ``time/tool_scoring`` is the tool's forward pass and the rewards; ``time/policy_loss`` (policy forward)
  and ``time/tool_loss`` (decoder forward); TRL's ``step_time`` is the whole step, backward passes and
  optimizer steps included.

``train_tool=False`` (``method="grpo"``) keeps the tool frozen: same rollouts, same rewards, no tool loss.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import time
import warnings
from pathlib import Path

import torch
from accelerate.utils import gather
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer import grpo_trainer as trl_grpo_trainer

from . import losses
from .files import atomic_write, write_text
from .scorer import TERMS, RolloutScorer, ToolBatch, completion_text
from .tool import WEIGHTS_FILE, save_tool, trainable_parameters

TRL_VERSION = "1.16.0"
"""The TRL release this trainer is written against. It overrides private methods of ``trl.GRPOTrainer``
(``_calculate_rewards``, ``_generate_and_score_completions``, ``_generate_single_turn``, ``_prepare_inputs``,
``_compute_loss``; ``_generate_single_turn`` also swaps the module's ``unwrap_model_for_generation``) and of
``transformers.Trainer`` (``_save_checkpoint``, ``_load_from_checkpoint``, ``_load_optimizer_and_scheduler``), which
another release may rename or change without notice. The pins (requirements.lock, requirements.txt, pyproject.toml,
environment.yml) hold it, and ``tests/test_packaging.py`` checks the installed TRL and every overridden method
against it."""
TOOL_CHECKPOINT_DIR = "tool"
COMPLETE_MARKER = "COMPLETE"
"""Written last into a checkpoint folder: a folder without it was interrupted mid-write and is never resumed."""
SAVE_TOTAL_LIMIT = 2
"""Checkpoints a run folder keeps (TRL's ``save_total_limit``, set by ``train.grpo_args``). Not a setting: resuming
depends on it. transformers deletes the older checkpoints inside ``Trainer._save_checkpoint``, before
``GRTOTrainer._save_checkpoint`` writes the new one's tool and ``COMPLETE_MARKER``; with a limit of 1 a run
interrupted in between would have deleted its last complete checkpoint, leaving nothing to resume from. With 2 the
previous complete checkpoint stays until the next one is complete."""


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


class _ToolStep(TrainerCallback):
    """Runs the trainer's two halves of the tool's step around the policy's optimizer step."""

    def __init__(self, trainer: "GRTOTrainer"):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._step_tool()


@contextlib.contextmanager
def _swapped(owner, name: str, value):
    """``owner.name`` is ``value`` inside the block."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _scored_by_the_trainer(name: str):
    """A reward function that only names a reward term for TRL: ``GRTOTrainer._calculate_rewards`` scores every
    term at once and never calls it."""
    def reward(*args, **kwargs):
        raise RuntimeError(f"the {name!r} reward is scored by GRTOTrainer._calculate_rewards (RolloutScorer.score)")
    reward.__name__ = name
    return reward


class GRTOTrainer(GRPOTrainer):
    """GRPO on the policy plus, when ``train_tool``, the GRTO tool loss on the same rollouts.

    The tool's settings have no defaults here: ``TrainConfig`` holds them (``train.build_trainer`` passes them on).
    """

    def __init__(self, *, scorer: RolloutScorer, train_tool: bool, tool_lr: float, tool_loss_weight: float,
                 tool_loss: str, tool_weighting: str, tool_max_grad_norm: float, **kwargs):
        if kwargs.get("args") is not None and getattr(kwargs["args"], "use_liger_kernel", False):
            raise ValueError("use_liger_kernel=True skips GRPOTrainer._compute_loss, where the GRTO tool loss is "
                             "added (TRL issue #7009): set use_liger_kernel=False")
        super().__init__(reward_funcs=[_scored_by_the_trainer(name) for name in TERMS], **kwargs)
        # TrainConfig.compile_generation: a static cache, whose decoding step transformers compiles. TRL builds its
        # generation config with disable_compile=True (lifted here); _generate_single_turn hands the model over.
        static = self.args.cache_implementation == "static"
        if static:
            self.generation_config.disable_compile = False
        self.compiled_generation = static and not (self.use_vllm or self.use_transformers_continuous_batching
                                                   or self._dist.is_zero3 or self._dist.is_fsdp)
        self.generation_cache_len: int | None = None  # the static cache's length in tokens, set at the first call
        if self.accelerator.device.type == "cuda":
            # cuDNN's attention (torch's default masked-SDPA backend on H100/H200 since 2.11) gives NaN gradients for
            # query rows that see no key (pytorch #196678): the pad positions of left-padded prompts. Prompts padded
            # to a multiple of 64 for compiled generation turned the first update's LoRA weights into NaN.
            torch.backends.cuda.enable_cudnn_sdp(False)
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
        self._scored = None  # the scorer's result of the batch TRL is generating, from _calculate_rewards
        self.tool_batch: ToolBatch | None = None  # the ToolBatch of the generation batch being trained on
        self._nonfinite_in_step = False  # a micro-batch of this optimizer step had a non-finite loss
        self._tool_loss_in_step = 0.0  # this process's share of the step's tool loss
        self.checkpoint_seconds: list[float] = []  # seconds of each checkpoint saved (_save_checkpoint)
        self.add_callback(_ToolStep(self))

    # --- generation: TRL's call, with the model handed over for a compiled decoding step ---------------------
    GENERATION_CACHE_HEADROOM = 128
    """Tokens of static cache beyond the first call's padded prompt and completion: later prompts up to this much
    longer reuse the same cache length, hence the same compiled decoding step (a token of cache adds about 0.6 MB
    to each decoding step's reads at 16 completions of the 3B, 0.01 % of its weights)."""

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's generation call: prompts left padded (to ``pad_to_multiple_of``), ``generate``, completions cut
        after the end of turn. With ``compiled_generation`` the static cache gets one length for the run
        (``max_cache_len``: the first call's padded prompt + completion + ``GENERATION_CACHE_HEADROOM``, grown only
        for a longer prompt) and ``_compiled_generation_model`` hands the model to ``generate`` in place of TRL's
        ``unwrap_model_for_generation``."""
        args = (prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if not self.compiled_generation:
            return super()._generate_single_turn(*args)
        multiple = self.pad_to_multiple_of or 1
        needed = -(-max(len(p) for p in prompt_ids) // multiple) * multiple + self.max_completion_length
        if self.generation_cache_len is None or needed > self.generation_cache_len:
            self.generation_cache_len = needed + self.GENERATION_CACHE_HEADROOM
            self.generation_config.max_cache_len = self.generation_cache_len
        with _swapped(trl_grpo_trainer, "unwrap_model_for_generation", self._compiled_generation_model):
            return super()._generate_single_turn(*args)

    @contextlib.contextmanager
    def _compiled_generation_model(self, model, accelerator, **_trl_options):
        """The model ``generate`` runs on when its decoding step is compiled (TRL's ``unwrap_model_for_generation``
        unwraps it from the accelerator's wrappers too), with transformers' own forward in the compiled graph:

        * TRL's fused-LM-head ``forward``, an instance attribute of the base model
          (``trl.trainer.utils.add_fused_lm_head``), is set aside for the call;
        * gradient checkpointing stays as it is (TRL switches it off and on around every generation; under
          ``torch.no_grad`` checkpointed layers run as plain layers anyway), and the input embeddings' hooks that
          make their output require grad are set aside for the call. Every switch-on registers one more of them
          (transformers 5.24 removes them only for its own peft integration, not for a ``PeftModel``): TRL's
          generation and its no-gradient pass around the old log-probabilities add one each per step, and each
          would change the compiled graph's guards, recompiling the decoding step at every RL step. They matter
          only to a backward pass.
        """
        unwrapped = accelerator.unwrap_model(model)
        base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
        fused_forward = base.__dict__.pop("forward", None)
        hooks = base.get_input_embeddings()._forward_hooks
        aside = {key: hook for key, hook in hooks.items()
                 if getattr(hook, "__name__", "").startswith("make_inputs_require_grad")}
        for key in aside:
            del hooks[key]
        try:
            yield unwrapped
        finally:
            hooks.update(aside)
            if fused_forward is not None:
                base.forward = fused_forward

    # --- scoring: once per generation batch, keeping the tool's prompts and embeddings -----------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """Every reward term of this process's rollouts from one ``RolloutScorer.score``, gathered over processes
        as TRL gathers its reward functions' values ([B_all, len(TERMS)])."""
        scored = self.scorer.score([completion_text(c) for c in completions], [x["sample_index"] for x in inputs])
        self._scored = scored
        local = torch.tensor([scored.terms[name] for name in TERMS], dtype=torch.float32,
                             device=self.accelerator.device).T
        return gather(local)

    def _generate_and_score_completions(self, inputs):
        """TRL's sampling, scoring and advantages; the scored ``ToolBatch`` becomes ``self.tool_batch`` and every
        rollout carries its row in it (``tool_rollout``) through TRL's shuffling and splitting."""
        start = time.perf_counter()
        with warnings.catch_warnings():  # TRL 1.16 reads a property that transformers 5.24 deprecates
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            output = super()._generate_and_score_completions(inputs)
        scored, self._scored = self._scored, None
        self.tool_batch = scored.tool_batch
        output["tool_rollout"] = torch.arange(len(scored.pred_masks), device=self.accelerator.device)
        self._metrics["train"]["time/generate_and_score"].append(time.perf_counter() - start)
        self._metrics["train"]["time/tool_scoring"].append(scored.seconds)
        return output

    def _prepare_inputs(self, generation_batch):
        """TRL's buffering of a generation batch into micro-batches; for a new buffer, also each optimizer step's
        normaliser of the tool-loss weights (``tool_total``), summed over its micro-batches and all processes."""
        buffer = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if self.train_tool and self.model.training and self._buffered_inputs is not buffer:
            self._set_tool_totals(self._buffered_inputs)
        return inputs

    def _set_tool_totals(self, micro_batches: list[dict]) -> None:
        """``tool_total`` = sum of ``losses.tool_loss_selection`` over the rollouts of each optimizer step. TRL steps
        the optimizer every ``gradient_accumulation_steps`` micro-batches, in buffer order."""
        batch = self.tool_batch
        totals = torch.stack([
            losses.tool_loss_selection(mb["advantages"], batch.valid[mb["tool_rollout"]], self.tool_weighting,
                                       batch.on_target[mb["tool_rollout"]]).sum()
            for mb in micro_batches])
        per_step = totals.view(-1, self.args.gradient_accumulation_steps).sum(1)
        if self.accelerator.num_processes > 1:
            per_step = self.accelerator.reduce(per_step, reduction="sum")
        for k, mb in enumerate(micro_batches):
            mb["tool_total"] = per_step[k // self.args.gradient_accumulation_steps]

    # --- the joint surrogate --------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        start = time.perf_counter()
        loss = super()._compute_loss(model, inputs)
        policy_time = time.perf_counter() - start
        mode = "train" if self.model.training else "eval"
        if self.train_tool and mode == "train":
            start = time.perf_counter()
            tool_loss = self.batch_tool_loss(inputs)
            self._tool_loss_in_step += tool_loss.item()
            loss = loss + self.tool_loss_weight * tool_loss
            self._metrics[mode]["time/tool_loss"].append(time.perf_counter() - start)
        self._metrics[mode]["time/policy_loss"].append(policy_time)
        if not torch.isfinite(loss):
            self._nonfinite_in_step = True
            # Zero gradients for every trainable parameter: each process's backward still reaches every parameter
            # (so data-parallel reduction runs everywhere); _before_optimizer_step then discards the step's gradients.
            loss = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
        return loss

    def batch_tool_loss(self, inputs) -> torch.Tensor:
        """``sum_i w_i L_tool(D_phi(I_i, sg[p(o_i)]), y_i)`` over this micro-batch's rollouts, with the optimizer
        step's weights (``losses.tool_loss_weights`` against ``inputs["tool_total"]``)."""
        batch, rollouts = self.tool_batch, inputs["tool_rollout"]
        weights = losses.tool_loss_weights(inputs["advantages"].detach(), batch.valid[rollouts], self.tool_weighting,
                                           batch.on_target[rollouts], total=inputs["tool_total"])
        keep = torch.nonzero(weights > 0).flatten()
        self._metrics["train"]["tool/valid_rollouts"].append(batch.valid[rollouts].float().mean().item())
        self._metrics["train"]["tool/trained_rollouts"].append(len(keep) / len(rollouts))
        if len(keep) == 0:
            return torch.zeros((), device=weights.device)
        rows = rollouts[keep]
        image_rows = batch.image_row[rows]
        logits = self.tool.decode(batch.embeddings, image_rows, batch.boxes[rows].detach(),
                                  batch.points[rows].detach(), batch.image_sizes())
        samples = [batch.samples[r] for r in image_rows.tolist()]
        per_rollout = losses.rollout_tool_losses(logits, samples, kind=self.tool_loss_kind)
        return (weights[keep] * per_rollout).sum()

    def _before_optimizer_step(self) -> None:
        """Agree over processes whether a loss of this step was non-finite; if so, drop every gradient of both
        models (so neither optimizer moves anything); else sum the tool's gradients over processes."""
        device = self.accelerator.device
        step = torch.tensor([float(self._nonfinite_in_step), self._tool_loss_in_step], device=device)
        if self.accelerator.num_processes > 1:
            step = self.accelerator.reduce(step, reduction="sum")
        self._nonfinite_in_step, self._tool_loss_in_step = False, 0.0
        skipped = bool(step[0] > 0)
        self._metrics["train"]["nonfinite_loss_skipped"].append(float(skipped))
        if self.train_tool:
            self._metrics["train"]["tool/loss"].append(step[1].item())
        if skipped:
            for p in [*self.model.parameters(), *self.tool_parameters]:
                p.grad = None
            return
        if self.tool_parameters and self.accelerator.num_processes > 1:
            for p in self.tool_parameters:
                if p.grad is None:  # no rollout of this process trained the tool: it contributes zeros
                    p.grad = torch.zeros_like(p)
            flat = self.accelerator.reduce(torch.cat([p.grad.flatten() for p in self.tool_parameters]),
                                           reduction="sum")
            for p, grad in zip(self.tool_parameters, flat.split([p.numel() for p in self.tool_parameters])):
                p.grad.copy_(grad.view_as(p))

    def _step_tool(self) -> None:
        """Clip the tool's gradients, step its optimizer, zero them. Called after the policy's optimizer step."""
        if self.tool_optimizer is None:
            return
        grads = [p.grad for p in self.tool_parameters if p.grad is not None]
        if not grads:
            return
        if not all(torch.isfinite(g).all() for g in grads):
            self._metrics["train"]["tool/nonfinite_grad_skipped"].append(1.0)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.tool_parameters, self.tool_max_grad_norm or math.inf)  # 0: none
            self._metrics["train"]["tool/grad_norm"].append(norm.item())
            self.tool_optimizer.step()
        self.tool_optimizer.zero_grad(set_to_none=True)

    # --- checkpoints ----------------------------------------------------------------------------------------
    def create_model_card(self, *args, **kwargs) -> None:
        """Writes nothing. TRL would write a Hub model card (``README.md``) into the run folder at every checkpoint,
        calling the run "a fine-tuned version of None" with a text-generation quick start; a run folder's files
        are described in docs/api.md."""

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, then the tool and its optimizer, then the ``COMPLETE`` marker; the seconds it took are
        appended to ``checkpoint_seconds``."""
        start = time.perf_counter()
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            save_tool_state(self.tool, self.tool_optimizer, os.path.join(folder, TOOL_CHECKPOINT_DIR))
            write_text(Path(folder) / COMPLETE_MARKER, "ok\n")
        self.checkpoint_seconds.append(round(time.perf_counter() - start, 3))

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
