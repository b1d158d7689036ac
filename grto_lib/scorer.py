"""From completions to rewards and tool prompts: the bridge between the policy's text and the tool.

``RolloutScorer.score(texts, sample_indices)`` takes one batch of rollouts (completion texts and the dataset index
of each rollout's sample) and

1. parses every completion (``rewards.parse_answer``; malformed -> invalid, all grounding rewards 0),
2. maps valid answers from the policy's square view to image pixels (``prompts.answer_to_image_pixels``),
3. runs the tool: the image encoder **once per distinct image**, the mask decoder once over all rollouts,
4. scores every reward term (``rewards``), and
5. returns them with a ``ToolBatch``: the parsed prompts and one image embedding per distinct image, which the
   GRTO loss step reuses, so it neither re-parses nor re-encodes.

It keeps no state between calls: what one batch needs is in what ``score`` returns (``Scored``).
``GRTOTrainer`` calls it once per generation batch (in place of TRL's one call per reward function).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import rewards
from .geometry import box_on_target, mask_to_box

TERMS = ("format", "answer", "box", "points", "mask")
"""The reward terms, in the order TRL sees them (``rewards.RewardWeights`` has one weight per term)."""
PROMPT_POINTS = 2
"""K, the points of every rollout's tool prompt. Not a setting: the answer format fixes it. ``prompts.SYSTEM_PROMPT``
asks for two points (Seg-Zero's format), and the tiny tool stand-in was trained on prompts of at most two points.
``parse`` repeats the last point of a shorter answer (the tiny policy stand-in writes one) and keeps the first two of
a longer one: another K would drop a point the policy was asked for, or prompt the tool with copies of one."""
DEFAULT_ON_TARGET_IOU = 0.5
"""The default of ``TrainConfig.on_target_iou`` (and of ``RolloutScorer`` and ``bootstrap.bootstrap_tool``): a box is
on target when its IoU with the target's tight box exceeds it, the box-accuracy criterion (``metrics``)."""


@dataclass
class ToolBatch:
    """What the tool loss needs from one scored batch: one row per rollout, and one embedding per distinct image."""

    sample_index: torch.Tensor
    """[B] long: index of the rollout's sample in the dataset."""
    boxes: torch.Tensor
    """[B, 4] float: the parsed box in image pixels (zeros where invalid)."""
    points: torch.Tensor
    """[B, K, 2] float: the parsed points in image pixels, K = ``PROMPT_POINTS`` (zeros where invalid)."""
    valid: torch.Tensor
    """[B] bool: the completion parsed into a prompt."""
    on_target: torch.Tensor
    """[B] bool: the parsed box matches the target's (``geometry.box_on_target``, box IoU > the scorer's
    ``on_target_iou``)."""
    image_row: torch.Tensor
    """[B] long: the row of ``embeddings`` (and of ``samples``) that holds the rollout's image."""
    embeddings: torch.Tensor
    """[n, C, h, w]: the tool's embedding of each distinct image, n <= B (an index per rollout, not a copy)."""
    samples: list
    """[n] ``Sample``: each distinct image's sample (its target mask and ignore region for the loss)."""

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(H, W)`` of each distinct image, as ``SegmentationTool.decode`` takes them."""
        return [s.mask.shape for s in self.samples]


@dataclass
class Scored:
    """``RolloutScorer.score``'s result for one batch of rollouts."""

    terms: dict[str, list[float]]
    """Every reward term (``TERMS``), one unweighted value per rollout."""
    tool_batch: ToolBatch
    """The parsed prompts and image embeddings of the same rollouts."""
    pred_masks: list
    """The tool's bool mask per rollout (None where the completion did not parse)."""
    seconds: float
    """Wall time of the scoring: parsing, the tool's forward pass, the rewards."""


def completion_text(completion) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": text}]``."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class RolloutScorer:
    """Scores rollouts of prompts from ``dataset`` with the current ``tool``. ``box_threshold``: the box reward
    (``rewards.box_reward``: None = the box IoU, else the indicator IoU > it); ``on_target_iou``: the box IoU above
    which a rollout is on target (``ToolBatch.on_target``); both ``TrainConfig`` fields of the same names."""

    def __init__(self, dataset, tool, policy_image_size: int, box_threshold: float | None = None,
                 on_target_iou: float = DEFAULT_ON_TARGET_IOU):
        self.dataset = dataset
        self.tool = tool
        self.policy_image_size = policy_image_size
        self.box_threshold = box_threshold
        self.on_target_iou = on_target_iou

    def parse(self, texts: list[str], samples: list):
        """Parsed answers mapped to image pixels: (answers or None, boxes [B,4], points [B,K,2], valid [B]);
        ``samples`` holds each rollout's ``Sample`` (for its image size)."""
        answers = [rewards.parse_answer(t) for t in texts]
        boxes = np.zeros((len(texts), 4))
        points = np.zeros((len(texts), PROMPT_POINTS, 2))
        valid = np.zeros(len(texts), dtype=bool)
        for i, (answer, sample) in enumerate(zip(answers, samples)):
            if answer is None:
                continue
            answers[i] = answer.in_image_pixels(sample.mask.shape, self.policy_image_size)
            box, pts = np.array(answers[i].bbox), np.array(answers[i].points).reshape(-1, 2)
            boxes[i] = box
            if len(pts):
                # Fewer points than K: repeat the last; more: keep the first K.
                points[i] = pts[np.minimum(np.arange(PROMPT_POINTS), len(pts) - 1)]
            else:
                points[i] = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
            valid[i] = True
        return answers, boxes, points, valid

    @torch.no_grad()
    def score(self, texts: list[str], sample_indices: list[int]) -> Scored:
        """Every reward term for every rollout, and the ``ToolBatch`` of the same rollouts."""
        start = time.perf_counter()
        sample_indices = [int(i) for i in sample_indices]
        distinct = sorted(set(sample_indices))
        row_of = {index: row for row, index in enumerate(distinct)}
        samples = [self.dataset[i] for i in distinct]
        rollout_samples = [samples[row_of[i]] for i in sample_indices]
        answers, boxes, points, valid = self.parse(texts, rollout_samples)
        device = next(self.tool.parameters()).device
        embeddings = self.tool.embed([s.image for s in samples])
        image_row = torch.tensor([row_of[i] for i in sample_indices], device=device)
        boxes_t = torch.tensor(boxes, dtype=torch.float32, device=device)
        points_t = torch.tensor(points, dtype=torch.float32, device=device)

        pred_masks = [None] * len(texts)
        rows = np.flatnonzero(valid)
        if len(rows):
            masks = self.tool.predict(embeddings, image_row[rows], boxes_t[rows], points_t[rows],
                                      [s.mask.shape for s in samples])
            for row, mask in zip(rows, masks):
                pred_masks[row] = mask.cpu().numpy()

        target_boxes = [mask_to_box(s.mask) for s in samples]
        terms = {name: [] for name in TERMS}
        for i, (text, answer, sample) in enumerate(zip(texts, answers, rollout_samples)):
            terms["format"].append(rewards.format_reward(text))
            terms["answer"].append(rewards.answer_reward(text))
            if answer is None:
                for name in ("box", "points", "mask"):
                    terms[name].append(0.0)
                continue
            terms["box"].append(rewards.box_reward(answer, target_boxes[row_of[sample_indices[i]]],
                                                    sample.mask.shape, self.box_threshold))
            terms["points"].append(rewards.points_reward(answer, sample.mask))
            terms["mask"].append(rewards.mask_reward(pred_masks[i], sample.mask, sample.ignore))

        on_target = valid & box_on_target(boxes, [s.mask for s in rollout_samples], self.on_target_iou)
        batch = ToolBatch(
            sample_index=torch.tensor(sample_indices, dtype=torch.long, device=device), boxes=boxes_t,
            points=points_t, valid=torch.tensor(valid, device=device),
            on_target=torch.tensor(on_target, device=device), image_row=image_row, embeddings=embeddings,
            samples=samples,
        )
        return Scored(terms=terms, tool_batch=batch, pred_masks=pred_masks, seconds=time.perf_counter() - start)
