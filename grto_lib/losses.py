r"""The math of a GRTO update as pure torch functions: advantages, the GRPO surrogate, the tool loss, its weights.

Notation: a batch of B completions, G per prompt (consecutive), T completion tokens, mask m_{i,t} in {0, 1}.

* ``group_advantages``: A_i = (r_i - mean_{g(i)} r) / (std r + eps), as TRL 1.16's GRPOTrainer computes them.
* ``clipped_policy_loss``: the paper's GRPO objective in a few lines (the clipped-ratio surrogate, each
  completion's tokens averaged, then the completions). The trainer runs TRL's own loss, which equals it under
  the trainer's defaults (``loss_type="grpo"``, no KL) up to TRL's division by the gradient-accumulation steps;
  tests/test_losses.py checks value and gradient against TRL's code.
* ``tool_loss``: the differentiable stand-in for the mask reward, per rollout (BCE + soft Dice, or soft IoU).
* ``tool_loss_selection`` / ``tool_loss_weights``: which per-rollout tool losses count and how they are averaged.
  Since sampling o ~ pi_theta does not depend on the tool's parameters phi, grad_phi J = E_o[grad_phi r_mask]
  has no score-function term, and the uniform mean over the valid rollouts of a batch is its unbiased estimate;
  the default, ``on_target``, keeps only rollouts whose box covers the target (biased, but the tool cannot read
  the query); the others are ablations.

The GRTO surrogate is L = clipped_policy_loss(...) + lambda * sum_i w_i tool_loss_i, with w = tool_loss_weights(...),
the advantages computed from stop-gradient rewards and the tool prompted with stop-gradient parsed answers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
TOOL_LOSS_KINDS = ("bce_dice", "soft_iou")
WEIGHT_SCHEMES = ("uniform", "advantage", "positive", "on_target")
DEFAULT_TOOL_WEIGHTING = "on_target"
"""The weighting scheme of ``TrainConfig`` and BTO unless told otherwise (see ``tool_loss_selection``)."""


def _nanstd(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Bessel-corrected std ignoring NaNs; NaN for fewer than 2 values (``trl.trainer.utils.nanstd``)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    std = torch.sqrt(variance * correction)
    return std.squeeze() if dim is None else std.squeeze(dim)


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    r"""Group-relative advantages, exactly as TRL 1.16 (``multi_objective_aggregation="sum_then_normalize"``).

    With rewards r of shape [B] ordered as B / G groups of G consecutive completions of one prompt:

        A_i = (r_i - \bar r_{g(i)}) / (s + eps),    \bar r_g = mean of group g,

    where s = std of the group (``scale="group"``), std of the whole batch (``"batch"``; the mean is still the
    group's), or s + eps := 1 (``"none"``, Dr. GRPO). Stds are unbiased (Bessel, n - 1), s = 0 when only one
    value is available. NaN rewards (TRL's "unscorable" completions) are left out of means and stds and get
    advantage 0. A group whose rewards are all equal gets advantages exactly 0: it carries no signal.
    ``True`` / ``False`` are accepted for ``scale`` as in TRL ("group" / "none").
    """
    scale = {True: "group", False: "none"}.get(scale, scale)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch size {rewards.numel()}")
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size, dim=0)
    if scale == "batch":
        std = _nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    elif group_size > 1:
        std = _nanstd(grouped, dim=1).repeat_interleave(group_size, dim=0)
    else:
        std = torch.zeros_like(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages, nan=0.0)


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, epsilon: float = 0.2) -> torch.Tensor:
    r"""The GRPO objective of the paper, negated, for one batch of completions (no KL term):

        L = -(1/B) sum_i (1/|o_i|) sum_t min(rho_{i,t} A_i, clip(rho_{i,t}, 1 - eps, 1 + eps) A_i),
        rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t}),

    with ``logps``, ``old_logps`` [B, T] the per-token log-probabilities (``old_logps`` without gradient; on the
    first update after sampling they equal ``logps.detach()``, so rho = 1 and the gradient is
    -(1/B) sum_i A_i (1/|o_i|) sum_t grad log pi), ``advantages`` [B] and ``mask`` [B, T] (1 on completion tokens).
    """
    ratio = torch.exp(logps - old_logps)
    a = advantages.unsqueeze(1)
    per_token = torch.min(ratio * a, ratio.clamp(1 - epsilon, 1 + epsilon) * a)
    per_completion = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return -per_completion.mean()


def tool_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore: torch.Tensor | None = None,
    kind: str = "bce_dice",
    smooth: float = 1.0,
) -> torch.Tensor:
    r"""Per-rollout segmentation loss [N] of mask logits [N, H, W] against bool targets [N, H, W].

    With p = sigmoid(logits), t the target, w = 1 - ignore (all ones without ``ignore``) and sums over pixels:

        bce_dice: BCE + Dice,  BCE  = sum w * bce(logit, t) / max(sum w, 1),
                               Dice = 1 - (2 sum w p t + s) / (sum w p + sum w t + s)
        soft_iou: 1 - (sum w p t + s) / (sum w (p + t - p t) + s)

    s = ``smooth`` (1.0, SAM's dice_loss convention) keeps an empty target with an empty prediction at loss 0;
    with s = 0 an all-empty sample counts as a perfect overlap (ratio 1). Differentiable w.r.t. ``logits``.
    """
    if kind not in TOOL_LOSS_KINDS:
        raise ValueError(f"kind must be one of {TOOL_LOSS_KINDS}, got {kind!r}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    if logits.dim() != 3 or targets.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [N, H, W]")
    if ignore is not None and ignore.shape != logits.shape:
        raise ValueError(f"ignore {tuple(ignore.shape)} must match logits {tuple(logits.shape)}")
    t = targets.to(logits.dtype)
    w = torch.ones_like(logits) if ignore is None else (~ignore.bool()).to(logits.dtype)
    p = torch.sigmoid(logits)
    dims = (1, 2)

    def ratio(num, den):
        ok = den > 0
        return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(den))

    if kind == "soft_iou":
        inter = (w * p * t).sum(dims)
        union = (w * (p + t - p * t)).sum(dims)
        return 1 - ratio(inter + smooth, union + smooth)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    bce = (w * bce).sum(dims) / w.sum(dims).clamp(min=1.0)
    dice = 1 - ratio(2 * (w * p * t).sum(dims) + smooth, (w * p).sum(dims) + (w * t).sum(dims) + smooth)
    return bce + dice


def rollout_tool_losses(logits, samples, kind: str = "bce_dice") -> torch.Tensor:
    """``tool_loss`` [N] for rollouts of ``samples`` (one ``Sample`` per rollout, giving ``mask`` and ``ignore``).

    ``logits`` is the tool's output: a tensor [N, H, W] when every image has one size, else a list of
    [H_i, W_i] tensors (real datasets), scored one by one.
    """
    device = (logits if torch.is_tensor(logits) else logits[0]).device
    targets = [torch.as_tensor(s.mask, device=device) for s in samples]
    ignores = [None if s.ignore is None else torch.as_tensor(s.ignore, device=device) for s in samples]
    if not torch.is_tensor(logits):
        return torch.stack([tool_loss(l[None], t[None], None if i is None else i[None], kind)[0]
                            for l, t, i in zip(logits, targets, ignores)])
    ignore = None
    if any(i is not None for i in ignores):
        ignore = torch.stack([torch.zeros_like(t) if i is None else i for t, i in zip(targets, ignores)])
    return tool_loss(logits, torch.stack(targets), ignore, kind)


def tool_loss_selection(advantages: torch.Tensor, valid: torch.Tensor, scheme: str,
                        on_target: torch.Tensor | None = None) -> torch.Tensor:
    r"""Unnormalised weights u [N] >= 0 of per-rollout tool losses: which rollouts train the tool, and how much.
    This is the one place that decides it (GRTO's loss and BTO's buffer alike); ``tool_loss_weights`` normalises.

    * ``uniform`` (unbiased): u_i = 1 on valid rollouts. The tool gradient grad_phi J = E_{o ~ pi_theta}[grad_phi
      r_mask] has no advantage in it; each valid rollout is one sample of the prompt distribution the tool will see.
    * ``advantage`` (ablation, biased): u_i = max(A_i, 0) on valid rollouts. A soft version of ``positive``: the
      tool fits the prompts of better-than-average rollouts, most of all the best. Signed weights are excluded on
      purpose: a negative weight would *maximise* the tool loss on bad prompts, a direction with no bound.
    * ``positive`` (ablation, biased): u_i = 1 on valid rollouts with A_i > 0 (top-k by sign).
    * ``on_target`` (biased; the default, ``DEFAULT_TOOL_WEIGHTING``): u_i = 1 on the valid rollouts whose box
      matches the target's, given as the bool tensor ``on_target`` [N] (box IoU > 0.5: ``geometry.box_on_target``).
      The tool does not see the query: from a box around another object, the only way to lower its loss is to stop
      following the box. The uniform estimate includes those rollouts; with a policy that boxes the wrong object
      half the time, it taught the tiny tool to ignore its prompts.

    Invalid rollouts (no parseable answer, hence no prompt for the tool) always get 0.
    """
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
    advantages = torch.as_tensor(advantages)
    valid = torch.as_tensor(valid)
    if advantages.dim() != 1 or valid.shape != advantages.shape:
        raise ValueError(f"advantages {tuple(advantages.shape)} and valid {tuple(valid.shape)} must both be [N]")
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
    if scheme == "on_target":
        if on_target is None:
            raise ValueError("scheme 'on_target' needs on_target: which rollouts' boxes match the target's "
                             "(geometry.box_on_target)")
        valid = valid & torch.as_tensor(on_target, dtype=torch.bool, device=valid.device)
    dtype = advantages.dtype if advantages.is_floating_point() else torch.float32
    advantages = advantages.detach().to(dtype)
    if scheme != "uniform" and not torch.isfinite(advantages[valid]).all():
        raise ValueError("advantages of valid rollouts must be finite")
    if scheme in ("uniform", "on_target"):
        return valid.to(dtype)
    if scheme == "positive":
        return (valid & (advantages > 0)).to(dtype)
    return torch.where(valid, advantages.clamp(min=0), torch.zeros_like(advantages))


def tool_loss_weights(advantages: torch.Tensor, valid: torch.Tensor, scheme: str,
                      on_target: torch.Tensor | None = None, total=None) -> torch.Tensor:
    r"""Weights w_i = u_i / total [N] for averaging per-rollout tool losses, u = ``tool_loss_selection(...)``.

    ``total`` is the normaliser sum_j u_j; by default the sum over these N rollouts, so the weights sum to 1 over
    the rollouts they select (e.g. ``uniform``: w_i = 1 / #valid). The trainer passes the sum over the whole
    optimizer step, all micro-batches and all processes, so that each micro-batch's sum_i w_i L_i adds up to the
    same update however the step is split. When nothing is selected (total 0) every weight is 0, so the tool loss
    and its gradient vanish.
    """
    selection = tool_loss_selection(advantages, valid, scheme, on_target)
    total = selection.sum() if total is None else torch.as_tensor(total, dtype=selection.dtype)
    return selection / total if total > 0 else torch.zeros_like(selection)
