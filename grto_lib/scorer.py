"""From completions to rewards and tool prompts: the bridge between the policy's text and the tool.

For one batch of rollouts (completion texts and the dataset index of each rollout's sample) the scorer

1. parses every completion (``rewards.parse_answer``; malformed -> invalid, all grounding rewards 0),
2. maps valid answers from the policy's square view to image pixels (``prompts.answer_to_image_pixels``),
3. runs the tool: the image encoder **once per distinct image**, the mask decoder once over all rollouts,
4. scores every reward term (``rewards``), and
5. keeps the parsed prompts and image embeddings as a ``ToolBatch`` for the GRTO loss step, so the loss step
   neither re-parses nor re-encodes.

TRL calls one function per reward term; ``reward_functions()`` returns them, all reading one cached scoring
of the batch.

**The side channel to the trainer.** TRL's reward functions return numbers only, but GRTO's tool loss needs the
tool's prompts and embeddings of the same rollouts. So ``score`` leaves them in ``pending_tool_batch``, and
``GRTOTrainer._generate_and_score_completions``, right after TRL has called the reward functions of a batch, takes
them with ``pop_tool_batch()`` and adds them to the batch that TRL hands to ``_compute_loss`` (keys ``tool_*``).
Popping empties the slot, so each scored batch is consumed once, and popping an empty slot fails loudly. This
handshake is the only state the reward functions share with the trainer (``evaluate.rollout_groups`` and
notebook 03 use it the same way, without a trainer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import rewards
from .geometry import mask_to_box


@dataclass
class ToolBatch:
    """What the tool loss needs from one scored batch, one row per rollout."""

    sample_index: torch.Tensor
    """[B] long: index of the rollout's sample in the training dataset."""
    boxes: torch.Tensor
    """[B, 4] float: the parsed box in image pixels (zeros where invalid)."""
    points: torch.Tensor
    """[B, K, 2] float: the parsed points in image pixels (zeros where invalid)."""
    valid: torch.Tensor
    """[B] bool: the completion parsed into a prompt."""
    embeddings: torch.Tensor
    """[B, C, h, w]: the tool's image embedding of the rollout's image (shared storage per image)."""

    def as_dict(self, prefix: str = "tool_") -> dict:
        return {prefix + k: v for k, v in self.__dict__.items()}


def completion_text(completion) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": text}]``."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class RolloutScorer:
    """Scores rollouts of prompts from ``dataset`` with the current ``tool``."""

    TERMS = ("format", "answer", "box", "points", "mask")

    def __init__(self, dataset, tool, policy_image_size: int, num_points: int = 2,
                 box_threshold: float | None = None):
        self.dataset = dataset
        self.box_threshold = box_threshold  # rewards.box_reward: None = the box IoU, else the indicator IoU > it
        self.tool = tool
        self.policy_image_size = policy_image_size
        self.num_points = num_points
        self._cached_key = None
        self._cached_terms: dict[str, list[float]] = {}
        self.pending_tool_batch: ToolBatch | None = None
        self.pred_masks: list = []  # the tool's bool mask per rollout of the last ``score`` (None: invalid)
        self.seconds = 0.0  # wall time of the last ``score`` (parsing, tool forward, rewards)
        self._samples: dict = {}  # the samples of the batch being scored, read from the dataset once

    def samples(self, indices) -> dict:
        """Samples by dataset index, each read once per batch (kept until the next batch is scored)."""
        for i in set(indices) - set(self._samples):
            self._samples[i] = self.dataset[i]
        return self._samples

    # --- parsing ------------------------------------------------------------------------------------------
    def parse(self, texts: list[str], sample_indices: list[int]):
        """Parsed answers mapped to image pixels: (answers or None, boxes [B,4], points [B,K,2], valid [B])."""
        answers = [rewards.parse_answer(t) for t in texts]
        boxes = np.zeros((len(texts), 4))
        points = np.zeros((len(texts), self.num_points, 2))
        valid = np.zeros(len(texts), dtype=bool)
        samples = self.samples(sample_indices)
        for i, (answer, index) in enumerate(zip(answers, sample_indices)):
            if answer is None:
                continue
            answers[i] = answer.in_image_pixels(samples[index].mask.shape, self.policy_image_size)
            box, pts = np.array(answers[i].bbox), np.array(answers[i].points).reshape(-1, 2)
            boxes[i] = box
            if len(pts):
                # Fewer points than K: repeat the last; more: keep the first K.
                points[i] = pts[np.minimum(np.arange(self.num_points), len(pts) - 1)]
            else:
                points[i] = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
            valid[i] = True
        return answers, boxes, points, valid

    # --- scoring ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, texts: list[str], sample_indices: list[int]) -> dict[str, list[float]]:
        """Every reward term for every rollout; also sets ``pending_tool_batch`` and ``seconds``."""
        start = time.perf_counter()
        self._samples = {}
        answers, boxes, points, valid = self.parse(texts, sample_indices)
        distinct = sorted(set(sample_indices))
        samples = self.samples(distinct)
        device = next(self.tool.parameters()).device
        embeddings = self.tool.embed([samples[i].image for i in distinct])
        row_of = {index: row for row, index in enumerate(distinct)}
        image_index = torch.tensor([row_of[i] for i in sample_indices], device=device)
        boxes_t = torch.tensor(boxes, dtype=torch.float32, device=device)
        points_t = torch.tensor(points, dtype=torch.float32, device=device)

        pred_masks = [None] * len(texts)
        rows = np.flatnonzero(valid)
        if len(rows):
            image_hw = [samples[i].mask.shape for i in distinct]
            masks = self.tool.predict(embeddings, image_index[rows], boxes_t[rows], points_t[rows], image_hw)
            for row, mask in zip(rows, masks):
                pred_masks[row] = mask.cpu().numpy()

        terms = {name: [] for name in self.TERMS}
        for i, (text, answer, index) in enumerate(zip(texts, answers, sample_indices)):
            sample = samples[index]
            terms["format"].append(rewards.format_reward(text))
            terms["answer"].append(rewards.answer_reward(text))
            if answer is None:
                for name in ("box", "points", "mask"):
                    terms[name].append(0.0)
                continue
            terms["box"].append(rewards.box_reward(answer, mask_to_box(sample.mask), sample.mask.shape,
                                                    self.box_threshold))
            terms["points"].append(rewards.points_reward(answer, sample.mask))
            terms["mask"].append(rewards.mask_reward(pred_masks[i], sample.mask, sample.ignore))

        self.pending_tool_batch = ToolBatch(
            sample_index=torch.tensor(sample_indices, dtype=torch.long, device=device),
            boxes=boxes_t, points=points_t, valid=torch.tensor(valid, device=device),
            embeddings=embeddings[image_index],
        )
        self.pred_masks = pred_masks
        self.seconds = time.perf_counter() - start
        return terms

    def terms_for(self, completions, sample_index) -> dict[str, list[float]]:
        """Score once per batch: TRL calls every reward function with the same completions."""
        texts = [completion_text(c) for c in completions]
        key = (tuple(texts), tuple(sample_index))
        if key != self._cached_key:
            self._cached_terms = self.score(texts, list(sample_index))
            self._cached_key = key
        return self._cached_terms

    def reward_functions(self) -> list:
        """One TRL reward function per term, named ``format``, ``answer``, ``box``, ``points``, ``mask``."""
        functions = []
        for name in self.TERMS:
            def reward(completions, sample_index, _name=name, **kwargs):
                return self.terms_for(completions, sample_index)[_name]
            reward.__name__ = name
            functions.append(reward)
        return functions

    def pop_tool_batch(self) -> ToolBatch:
        """The ``ToolBatch`` of the last scored batch, taken out of the scorer (see the module docstring)."""
        batch, self.pending_tool_batch, self._cached_key = self.pending_tool_batch, None, None
        if batch is None:
            raise RuntimeError("no scored batch: the reward functions of this scorer were not called")
        return batch
