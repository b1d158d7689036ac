"""Checks for the course's graded exercises (``course/source/grto_exercises``; see the README, "For instructors").

Each ``check_*`` calls a student's function on fixed cases, compares it with ``grto_lib``'s own implementation,
and raises ``AssertionError`` with a message that says what is wrong (including "not implemented yet"), so an
nbgrader test cell is one line: ``check_group_advantages(group_advantages)``. A check returns nothing when the
answer is right.
"""
from __future__ import annotations

import torch

from grto_lib import losses
from grto_lib.rewards import COORD_LIMIT, parse_box


def _call(function, *args):
    """``function(*args)``, turning the release's ``raise NotImplementedError()`` into a failed check."""
    try:
        return function(*args)
    except NotImplementedError:
        raise AssertionError(f"{function.__name__} is not implemented yet: replace `raise NotImplementedError()` "
                             f"in its cell with your code, run the cell, then this one") from None


def _tensor(value) -> torch.Tensor | None:
    """``value`` as a float tensor, or None when it is not numbers (None, a string, ragged lists...)."""
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        return None


def _close(a, b, atol=1e-5) -> bool:
    a = _tensor(a)
    return a is not None and a.shape == b.shape and torch.allclose(a, b.float(), atol=atol, equal_nan=False)


def _rounded(values):
    t = _tensor(values)
    return values if t is None else [round(v, 4) for v in t.flatten().tolist()]


def check_group_advantages(group_advantages) -> None:
    """``group_advantages(rewards [B], group_size) -> [B]``: A_i = (r_i - mean_g) / (std_g + 1e-4), unbiased std."""
    cases = [torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0.5, 0.5, 0.5, 1.0, 2.0, 0.0]),
             torch.randn(32, generator=torch.Generator().manual_seed(0))]
    for rewards, group_size in zip(cases, (2, 3, 8)):
        got = _call(group_advantages, rewards.clone(), group_size)
        want = losses.group_advantages(rewards, group_size)
        if _close(got, want):
            continue
        grouped = rewards.view(-1, group_size)
        centred = (grouped - grouped.mean(1, keepdim=True)).flatten()
        hints = [(centred, "you subtract the group mean but do not divide by the group's std"),
                 ((rewards - rewards.mean()) / (rewards.std() + 1e-4), "the mean and std must be each group's "
                  "(rows of group_size consecutive rewards), not the whole batch's"),
                 ((centred.view(-1, group_size) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)).flatten(),
                  "use the unbiased std (divide by G - 1), as GRPO and TRL do"),
                 ((centred.view(-1, group_size) / grouped.std(1, keepdim=True)).flatten(),
                  "add eps = 1e-4 to the std, as TRL does (it also keeps a group of equal rewards at 0)")]
        hint = next((h for candidate, h in hints if _close(got, candidate)), None)
        if hint is None and _tensor(got) is not None and _close(torch.nan_to_num(_tensor(got), nan=0.0), want):
            hint = "a group whose rewards are all equal must get advantages 0: add eps = 1e-4 to the std"
        raise AssertionError(f"group_advantages({_rounded(rewards)}, group_size={group_size}) returned "
                             f"{_rounded(got)}, expected {_rounded(want)}" + (f": {hint}" if hint else ""))


def check_tool_loss_weights(tool_loss_weights) -> None:
    """``tool_loss_weights(advantages [N], valid [N] bool, scheme) -> [N]`` for uniform, positive, advantage."""
    advantages = torch.tensor([1.2, -0.4, 0.0, 0.8, -1.6, 0.5])
    cases = [(advantages, torch.tensor([True, True, False, True, True, False])),
             (advantages, torch.zeros(6, dtype=torch.bool)),
             (-advantages.abs(), torch.ones(6, dtype=torch.bool))]
    for scheme in ("uniform", "positive", "advantage"):
        for adv, valid in cases:
            got = _call(tool_loss_weights, adv.clone(), valid.clone(), scheme)
            want = losses.tool_loss_weights(adv, valid, scheme)
            if _close(got, want):
                continue
            if want.sum() == 0:
                hint = "when no rollout is selected every weight is 0 (not NaN, not uniform)"
            elif _tensor(got) is not None and _tensor(got).shape == valid.shape and (_tensor(got)[~valid] != 0).any():
                hint = "an invalid rollout has no prompt for the tool, so its weight must be 0"
            else:
                hint = "the weights of the selected rollouts must sum to 1"
            raise AssertionError(f"tool_loss_weights(advantages={_rounded(adv)}, valid={valid.tolist()}, "
                                 f"scheme={scheme!r}) returned {_rounded(got)}, expected {_rounded(want)}: {hint}")


def check_parse_box(student_parse_box) -> None:
    """``parse_box(value) -> (x1, y1, x2, y2) | None`` for the ``"bbox"`` value of a decoded JSON answer."""
    cases = {
        "a box": [10, 20, 30, 40], "floats": [1.5, 2.0, 3.25, 4.0], "a degenerate box (x1 == x2)": [5, 5, 5, 9],
        "three numbers": [1, 2, 3], "five numbers": [1, 2, 3, 4, 5], "a dict": {"x1": 1}, "a string": "1,2,3,4",
        "x2 < x1": [30, 20, 10, 40], "y2 < y1": [10, 40, 30, 20], "a string coordinate": ["10", 20, 30, 40],
        "a boolean coordinate": [True, 20, 30, 40], "NaN": [float("nan"), 20, 30, 40],
        "infinity": [10, 20, float("inf"), 40], "a nested list": [[10, 20], [30, 40], 1, 2],
        "a huge coordinate": [0, 0, 10 ** 30, 5], "None": None,
    }
    for name, value in cases.items():
        got, want = _call(student_parse_box, value), parse_box(value)
        same = (got is None) == (want is None) and (want is None or _close(list(got), torch.tensor(want)))
        if not same:
            rule = ("it is not a valid box" if want is None else
                    f"each coordinate is clamped to +-COORD_LIMIT = {COORD_LIMIT:g}" if "huge" in name else
                    "a valid box comes back as a tuple of 4 floats")
            raise AssertionError(f"parse_box({value!r}) ({name}) returned {got!r}, expected {want!r}: {rule}")


def soft_mask_reward(tool_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A differentiable mask reward [N]: the soft IoU, 1 - ``losses.tool_loss(kind="soft_iou")``."""
    return 1 - losses.tool_loss(tool_logits, targets, kind="soft_iou")


def grto_surrogate(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size, tool_weight):
    """The GRTO loss of one batch with its stop-gradient (the reference for ``check_grto_surrogate``):

        L = clipped_policy_loss(logps, old_logps, A, mask) + lambda * sum_i w_i tool_loss_i(phi),
        A = group_advantages(sg[r]),  r = other_rewards + soft_mask_reward(tool_logits),  w uniform.
    """
    rewards = (other_rewards + soft_mask_reward(tool_logits, targets)).detach()
    advantages = losses.group_advantages(rewards, group_size)
    policy_loss = losses.clipped_policy_loss(logps, old_logps, advantages, completion_mask)
    weights = losses.tool_loss_weights(advantages, torch.ones_like(rewards, dtype=torch.bool), "uniform")
    return policy_loss + tool_weight * (weights * losses.tool_loss(tool_logits, targets)).sum()


def check_grto_surrogate(student_surrogate) -> None:
    """Same value and same gradients (w.r.t. the policy's log-probs and the tool's logits) as ``grto_surrogate``."""
    generator = torch.Generator().manual_seed(0)
    n, group_size = 8, 4
    old_logps = -torch.rand(n, 6, generator=generator)
    logps = old_logps + 0.1 * torch.randn(n, 6, generator=generator)  # a later update of the same rollouts
    completion_mask = torch.ones(n, 6)
    completion_mask[::3, 4:] = 0
    tool_logits = 2 * torch.randn(n, 12, 12, generator=generator)
    targets = torch.zeros(n, 12, 12, dtype=torch.bool)
    targets[:, 3:9, 4:10] = True
    other_rewards = torch.rand(n, generator=generator)

    def gradients(surrogate):
        x, y = logps.clone().requires_grad_(), tool_logits.clone().requires_grad_()
        value = _call(surrogate, x, old_logps, completion_mask, y, targets, other_rewards, group_size, 0.5)
        if not torch.is_tensor(value) or value.dim() != 0 or not value.requires_grad:
            raise AssertionError(f"{surrogate.__name__} must return a scalar tensor with a gradient, got {value!r}")
        value.backward()
        gradient = [torch.zeros_like(t) if t.grad is None else t.grad for t in (x, y)]
        return value.detach(), *gradient

    value, policy_grad, tool_grad = gradients(student_surrogate)
    want_value, want_policy, want_tool = gradients(grto_surrogate)
    if not _close(value, want_value):
        raise AssertionError(f"the loss is {value.item():.6f}, expected {want_value.item():.6f}: check the advantages, "
                             f"the policy loss and lambda * the weighted tool loss")
    if not _close(policy_grad, want_policy):
        raise AssertionError("the gradient w.r.t. the policy's log-probabilities is wrong: the advantages must be "
                             "constants of the current rewards")
    if not _close(tool_grad, want_tool):
        raise AssertionError("the tool's gradient is wrong: the policy loss sends gradient into the tool through the "
                             "advantages. Compute them from the rewards with a stop-gradient (rewards.detach()), so "
                             "the tool learns only from lambda * its own loss")
