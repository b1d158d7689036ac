"""The checks of the course's graded exercises (``course/source/``; docs/course.md's syllabus lists them), visible and
hidden.

Visible checks. ``check_<exercise>(answer)`` calls a student's function on fixed cases and returns nothing when it
is right, else raises ``CheckFailed``: its message starts with what is wrong and how to fix it, and IPython shows it
alone, with no traceback (so do nbgrader's Validate dialog and feedback). An exercise that re-implements a
``grto_lib`` function is compared with it; the others' cases are worked out by hand in the comments, or properties
pin the answer down.

What an answer may not use. ``EXERCISES`` names, for each exercise, the ``grto_lib`` functions and modules it
re-implements (``borrowed``). An answer that is one of them, holds a copy of one (renamed, reformatted, without its
docstring or type hints, also in a helper it calls) or calls one scores nothing: while the answer runs, the code of
every borrowed function is swapped for code that raises (``_disabled``), so an alias, ``sys.modules``, a thread or
``exec``'d code all reach the disabled code.

Hidden tests (``grto_lib.course.grading``, re-exported here). ``check_hidden(answer, exercise, seed, want)``
runs the answer on cases drawn from ``seed``
(``hidden_cases``) and compares what ``EXERCISES[exercise].observe`` makes of each result with ``want``, what a
reference gave on them. course/hidden_tests.py writes these calls, with their values, into the source notebooks'
hidden-test regions; the student's release has neither. At grading, nbgrader runs them in the student's kernel,
and course/grading.py runs them again outside it, in a process per exercise that calls ``grade_hidden``.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from grto_lib import losses
from grto_lib.course.grading import (  # noqa: F401 (the names the course's cells and course/grading.py use)
    EXERCISES, _surrogate_case, check_hidden, grade_hidden, hidden_cases, hidden_failure, same, serve_hidden_tests)
from grto_lib.course.rules import (  # noqa: F401
    CheckFailed, _Answer, _close, _compare, _disabled, _implementations, _show, _tensor, refused, shape_of)
from grto_lib.tinyworld import toy


# --- Assignment 1: the derivation (notebook 01) ---------------------------------------------------------------
def check_group_advantages(answer) -> None:
    """``group_advantages(rewards [B], group_size) -> [B]``: A_i = (r_i - mean_g) / (std_g + 1e-4), unbiased std."""
    answer = _Answer(answer, EXERCISES["group_advantages"].borrowed)
    cases = [torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0.5, 0.5, 0.5, 1.0, 2.0, 0.0]),
             torch.randn(32, generator=torch.Generator().manual_seed(0))]
    for rewards_, group_size in zip(cases, (2, 3, 8)):
        grouped = rewards_.view(-1, group_size)
        centred = grouped - grouped.mean(1, keepdim=True)
        _compare(f"group_advantages({_show(rewards_)}, group_size={group_size})", answer(rewards_.clone(), group_size),
                 losses.group_advantages(rewards_, group_size), [
                     (centred.flatten(), "divide by the group's std: you only subtract the group mean"),
                     ((rewards_ - rewards_.mean()) / (rewards_.std() + 1e-4),
                      "use each group's mean and std (rows of group_size consecutive rewards), not the batch's"),
                     ((centred / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)).flatten(),
                      "use the unbiased std (divide by G - 1), as GRPO and TRL do"),
                     ((centred / grouped.std(1, keepdim=True)).flatten(),
                      "add eps = 1e-4 to the std, exactly: with a smaller eps (1e-8) or none every advantage is off "
                      "by about 1e-4 of its size, and without one a group of equal rewards gets NaN, not 0")])


def check_score_function_gradient(answer) -> None:
    """``score_function_gradient(logits [K], picks [N], rewards [N]) -> [K]``: (1/N) sum_i r_i (e_{k_i} - pi)."""
    answer = _Answer(answer, EXERCISES["score_function_gradient"].borrowed)

    def check(logits, picks, rewards_, want):
        pi, onehot = torch.softmax(logits, 0), F.one_hot(picks, len(logits)).double()
        r = rewards_.double()[:, None]
        _compare(f"score_function_gradient(logits={_show(logits)}, picks={_show(picks)}, rewards={_show(rewards_)})",
                 answer(logits.clone(), picks.clone(), rewards_.clone()), want, [
                     ((r * onehot).mean(0), "the score is grad log pi_k = e_k - pi: you left out - pi (the softmax's "
                                            "normaliser depends on every logit)"),
                     ((r * pi[picks, None] * (onehot - pi)).mean(0),
                      "use grad log pi_k = grad pi_k / pi_k: you multiplied by pi_k, which gives grad pi_k"),
                     (-torch.as_tensor(want), "the sign is flipped: the estimate is of grad J, the ascent direction"),
                     (len(picks) * torch.as_tensor(want), "average over the N samples, do not sum")])

    # uniform pi = (1/3, 1/3, 1/3): (1/2) [1 (2/3, -1/3, -1/3) + 3 (-1/3, -1/3, 2/3)] = (-1/6, -2/3, 5/6)
    check(torch.zeros(3), torch.tensor([0, 2]), torch.tensor([1.0, 3.0]), want=[-1 / 6, -2 / 3, 5 / 6])
    # pi = (1/2, 1/4, 1/4), one sample of answer 1 with reward 2: 2 (e_1 - pi) = (-1, 3/2, -1/2)
    check(torch.tensor([0.5, 0.25, 0.25]).log(), torch.tensor([1]), torch.tensor([2.0]), want=[-1.0, 1.5, -0.5])
    logits, returns = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    theta = logits.clone().requires_grad_()
    exact = torch.autograd.grad((torch.softmax(theta, 0) * returns).sum(), theta)[0]  # grad of J = sum_k pi_k R_k
    _compare(f"sum_k pi_k score_function_gradient(logits={_show(logits)}, [k], [R_k]), with R = {_show(returns)},",
             sum(p * _tensor(answer(logits.clone(), torch.tensor([k]), returns[k:k + 1].clone()))
                 for k, p in enumerate(torch.softmax(logits, 0))), exact,
             otherwise="the estimate is biased: its mean over the policy must be grad J")


def check_tool_gradient(answer) -> None:
    """``tool_gradient(problem, picks [N]) -> [P]``: -(1/N) sum_i grad_phi L_{k_i}, pinned down by properties: the
    mean of one-prompt estimates g(k), independent of pi and unbiased for every pi, so each g(k) is -grad L_k."""
    answer = _Answer(answer, EXERCISES["tool_gradient"].borrowed)
    problem = toy.make_toy_problem(seed=1)
    size = sum(p.numel() for p in problem.parameters())

    def estimate(picks, of=problem):
        got = _tensor(answer(of, torch.tensor(picks)))
        if got is None or got.shape != (size,):
            raise CheckFailed(f"return the gradient flattened, one tensor of {size} numbers (W's then b's, as "
                              f"toy.exact_gradient does): tool_gradient(problem, picks={picks}) returned {_show(got)}")
        return got

    one = [estimate([k]) for k in range(len(problem.policy_probs))]
    if _close(one[0], one[1]):
        raise CheckFailed(f"your estimate ignores which prompts were sampled: tool_gradient(problem, [0]) equals "
                          f"tool_gradient(problem, [1]), {_show(one[0])}; it must be built from the losses of the "
                          f"prompts in picks")
    other = dataclasses.replace(problem, policy_probs=problem.policy_probs.flip(0))
    _compare("tool_gradient(problem with its policy_probs reversed, picks=[0])", estimate([0], other), one[0],
             otherwise="your estimate changes with problem.policy_probs: the picks were drawn from pi already, so "
                       "weighting them by pi counts it twice (and pi does not depend on phi: no score term)")
    _compare("tool_gradient(problem, picks=[0, 1, 1])", estimate([0, 1, 1]), (one[0] + 2 * one[1]) / 3,
             [(one[0] + 2 * one[1], "average over the picks, do not sum")], atol=1e-9)
    exact = toy.exact_gradient(problem)
    _compare("the mean of your estimate over the policy, sum_k pi_k tool_gradient(problem, [k]),",
             sum(p * g for p, g in zip(problem.policy_probs, one)), exact,
             [(-exact, "the sign is flipped: J = -E[L], so its gradient is minus the loss's")], atol=1e-9)


def _selected_weights(selected: torch.Tensor) -> torch.Tensor:
    selected = selected.float()
    return selected / selected.sum() if selected.sum() > 0 else torch.zeros_like(selected)


def check_tool_loss_weights(answer) -> None:
    """``tool_loss_weights(advantages [N], valid [N] bool, scheme) -> [N]`` for uniform, positive, advantage."""
    answer = _Answer(answer, EXERCISES["tool_loss_weights"].borrowed)
    advantages = torch.tensor([1.2, -0.4, 0.0, 0.8, -1.6, 0.5])
    cases = [(advantages, torch.tensor([True, True, False, True, True, False])),
             (advantages, torch.zeros(6, dtype=torch.bool)), (-advantages.abs(), torch.ones(6, dtype=torch.bool))]
    for scheme in ("uniform", "positive", "advantage"):
        for adv, valid in cases:
            got, want = answer(adv.clone(), valid.clone(), scheme), losses.tool_loss_weights(adv, valid, scheme)
            weights, signed = _tensor(got), torch.where(valid, adv, torch.zeros_like(adv))
            invalid_weighted = weights is not None and weights.shape == valid.shape and (weights[~valid] != 0).any()
            mistakes = {"advantage": [(signed / signed.sum(), "clamp negative advantages to 0: a negative weight "
                                                              "would maximise the tool loss")],
                        "positive": [(_selected_weights(valid & (adv >= 0)), "positive means A_i > 0, strictly: a "
                                                                             "rollout whose advantage is 0 is not "
                                                                             "selected")]}
            _compare(f"tool_loss_weights(advantages={_show(adv)}, valid={_show(valid)}, scheme={scheme!r})", got, want,
                     mistakes.get(scheme, []),
                     otherwise="when no rollout is selected every weight is 0 (not NaN, not uniform)" if want.sum() == 0
                     else "an invalid rollout has no prompt for the tool, so its weight must be 0" if invalid_weighted
                     else "the weights of the selected rollouts must sum to 1")


# --- Assignment 2: the bootstrap (notebook 02) ----------------------------------------------------------------
def check_parse_box(answer) -> None:
    """``parse_box(value) -> (x1, y1, x2, y2) | None`` for the ``"bbox"`` value of a decoded JSON answer."""
    from grto_lib import rewards

    answer = _Answer(answer, EXERCISES["parse_box"].borrowed)
    cases = {
        "a box": [10, 20, 30, 40], "floats": [1.5, 2.0, 3.25, 4.0], "a degenerate box (x1 == x2)": [5, 5, 5, 9],
        "three numbers": [1, 2, 3], "five numbers": [1, 2, 3, 4, 5], "a dict": {"x1": 1}, "a string": "1,2,3,4",
        "x2 < x1": [30, 20, 10, 40], "y2 < y1": [10, 40, 30, 20], "a string coordinate": ["10", 20, 30, 40],
        "a boolean coordinate": [True, 20, 30, 40], "NaN": [float("nan"), 20, 30, 40],
        "infinity": [10, 20, float("inf"), 40], "a nested list": [[10, 20], [30, 40], 1, 2],
        "a huge coordinate": [0, 0, 10 ** 30, 5], "None": None,
    }
    for name, value in cases.items():
        got, want = answer(copy.deepcopy(value)), rewards.parse_box(value)
        same = (got is None) == (want is None) and (want is None or (isinstance(got, tuple) and _close(got, want)))
        if not same:
            rule = ("it is not a valid box" if want is None else
                    f"clamp each coordinate to +-COORD_LIMIT = {rewards.COORD_LIMIT:g}" if "huge" in name else
                    "a valid box comes back as a tuple of 4 floats")
            raise CheckFailed(f"{rule}: parse_box({value!r}) ({name}) returned {got!r}, expected {want!r}")
        if want is not None and not all(type(v) is float for v in got):
            kinds = sorted({type(v).__name__ for v in got} - {"float"})
            raise CheckFailed(f"a valid box comes back as a tuple of 4 floats: convert each number with float() "
                              f"(yours holds {' and '.join(kinds)}): parse_box({value!r}) returned {got!r}, "
                              f"expected {want!r}")


def check_tool_loss(answer) -> None:
    """``tool_loss(logits [N, H, W], targets [N, H, W] bool, ignore [N, H, W] bool or None) -> [N]``: BCE + Dice."""
    answer = _Answer(answer, EXERCISES["tool_loss"].borrowed)
    generator = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(4, 6, 6, generator=generator)
    targets = torch.rand(4, 6, 6, generator=generator) > 0.6
    targets[3], logits[3] = False, -8.0  # an empty target, an (almost) empty prediction: smooth keeps Dice near 0
    ignore = torch.zeros(4, 6, 6, dtype=torch.bool)
    ignore[:2, :, :2] = True
    p, t = torch.sigmoid(logits), targets.float()

    def bce_and_dice(w, dims=(1, 2)):
        bce = (w * F.binary_cross_entropy_with_logits(logits, t, reduction="none")).sum((1, 2))
        bce = bce / w.sum((1, 2)).clamp(min=1)
        dice = 1 - (2 * (w * p * t).sum(dims) + 1) / ((w * p).sum(dims) + (w * t).sum(dims) + 1)
        return bce, dice

    for mask in (None, ignore):
        w = torch.ones_like(logits) if mask is None else (~mask).float()
        bce, dice = bce_and_dice(w)
        want = losses.tool_loss(logits, targets, mask)
        call = f"tool_loss(logits, targets, ignore={'None' if mask is None else 'a mask of the first 2 columns'})"
        mistakes = [
            (want.mean(), "return one loss per rollout, shape [N]: the weights average them later"),
            (bce + 1 - (2 * (w * logits * t).sum((1, 2)) + 1) / ((w * logits).sum((1, 2)) + (w * t).sum((1, 2)) + 1),
             "Dice works on probabilities: p = sigmoid(logits)"),
            (bce + 1 - 2 * (w * p * t).sum((1, 2)) / ((w * p).sum((1, 2)) + (w * t).sum((1, 2))),
             "add smooth = 1 to Dice's numerator and denominator: an empty target with an empty prediction must "
             "cost about 0, not 1 or NaN"),
            (bce + bce_and_dice(w, dims=(0, 1, 2))[1], "compute Dice per rollout, over each rollout's own pixels "
                                                       "(sum over dims 1 and 2), not over the whole batch"),
            (losses.tool_loss(logits, targets), "leave the ignore pixels out of BCE and Dice: weight pixels by "
                                                "w = 1 - ignore"),
            (bce * w.sum((1, 2)) / 36 + dice, "average BCE over the pixels that count: divide by sum w"),
            (bce, "the loss is BCE + Dice: you return BCE only"), (dice, "the loss is BCE + Dice: not Dice only")]
        if mask is not None:
            mistakes.insert(0, (sum(bce_and_dice(mask.float())),
                                "w = 1 - ignore: you kept only the ignore pixels, the ones the loss must leave out"))
        _compare(call, answer(logits.clone(), targets.clone(), None if mask is None else mask.clone()), want, mistakes)


def check_off_policy_tool_loss(answer) -> None:
    """``off_policy_tool_loss(tool_losses [N], logp_policy [N], logp_reference [N], usable [N] bool) -> scalar``:
    sum_usable rho_i L_i / sum_usable rho_i with rho_i = pi_theta(o_i) / pi_ref(o_i); 0 when nothing is usable."""
    answer = _Answer(answer, EXERCISES["off_policy_tool_loss"].borrowed)

    def check(tool_losses, logp_policy, logp_reference, usable, want):
        call = (f"off_policy_tool_loss({_show(tool_losses)}, logp_policy={_show(logp_policy)}, "
                f"logp_reference={_show(logp_reference)}, usable={_show(usable)})")
        got = answer(tool_losses.clone(), logp_policy.clone(), logp_reference.clone(), usable.clone())
        log_ratio = logp_policy.double() - logp_reference.double()
        rho = torch.exp(log_ratio) * usable
        upside_down = torch.exp(-log_ratio) * usable
        if not usable.any():
            _compare(call, got, 0.0, [(math.nan, "no rollout is usable: return 0, not NaN")])
            return
        _compare(call, got, want, [
            ((upside_down * tool_losses).sum() / upside_down.sum(),
             "the ratio is upside down: rho_i = pi_theta(o_i) / pi_ref(o_i)"),
            ((rho * tool_losses).sum() / usable.sum(), "normalise: divide by the sum of the weights, not the count"),
            ((tool_losses * usable).sum() / usable.sum(), "weight each rollout by rho_i = exp(logp_policy - "
             "logp_reference): the plain mean is BTO's loss, right only while the policy is the reference"),
            ((torch.softmax(log_ratio, 0) * usable * tool_losses).sum(),
             "leave the unusable rollouts out of the normalisation too: sum rho runs over the usable ones only "
             "(set their log-ratios to -inf before the softmax)"),
            (tool_losses.mean(), "leave out the rollouts that are not usable"),
            (math.nan, "exp of a log-probability or of a large log-ratio leaves the float range: subtract the "
                       "largest usable log-ratio before exp (torch.softmax does)")])
        weighted = tool_losses.clone().requires_grad_()
        value = answer(weighted, logp_policy, logp_reference, usable)
        if not (torch.is_tensor(value) and value.requires_grad):
            raise CheckFailed(f"return a tensor with the graph of tool_losses (no .item(), float() or detach): the "
                              f"tool learns from this loss. {call} returned {_show(value)}")

    reference_logps = torch.tensor([-300.0, -310.0, -305.0, -320.0])
    tool_losses, everyone = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4, dtype=torch.bool)
    # the policy is the reference: uniform weights, the plain mean (1 + 2 + 3 + 4) / 4; then without rollout 1
    check(tool_losses, reference_logps, reference_logps, everyone, want=2.5)
    check(tool_losses, reference_logps, reference_logps, torch.tensor([True, False, True, True]), want=8 / 3)
    # rollout 1 three times likelier now: rho = (1, 3, 1, 1), (1 + 6 + 3 + 4) / 6
    check(tool_losses, reference_logps + torch.tensor([0.0, math.log(3), 0.0, 0.0]), reference_logps, everyone,
          want=7 / 3)
    # log-ratios of about 100 (exp overflows float32): rho proportional to (1, e, 1, 1)
    check(tool_losses, reference_logps + torch.tensor([100.0, 101.0, 100.0, 100.0]), reference_logps, everyone,
          want=(8 + 2 * math.e) / (3 + math.e))
    check(tool_losses, reference_logps, reference_logps, torch.zeros(4, dtype=torch.bool), want=0.0)


# --- Assignment 3: joint training (notebook 03) ---------------------------------------------------------------
def check_clipped_policy_loss(answer) -> None:
    """``clipped_policy_loss(logps [B, T], old_logps [B, T], advantages [B], mask [B, T], epsilon) -> scalar``."""
    answer = _Answer(answer, EXERCISES["clipped_policy_loss"].borrowed)
    generator = torch.Generator().manual_seed(6)
    old = -torch.rand(4, 5, generator=generator) - 0.5
    logps = old + 0.5 * torch.randn(4, 5, generator=generator)  # ratios from about 0.4 to 2.5: clipping matters
    advantages, mask = torch.tensor([1.0, -0.5, 0.8, -1.3]), torch.ones(4, 5)
    mask[1, 3:], mask[2, 1:] = 0, 0
    a = advantages[:, None]
    completions = lambda per_token: -((per_token * mask).sum(1) / mask.sum(1)).mean()  # noqa: E731
    for epsilon in (0.2, 0.1):
        ratio, quotient = torch.exp(logps - old), logps / old
        clipped = ratio.clamp(1 - epsilon, 1 + epsilon) * a
        x = logps.clone().requires_grad_()
        got = answer(x, old.clone(), advantages.clone(), mask.clone(), epsilon)
        want = losses.clipped_policy_loss(logps, old, advantages, mask, epsilon)
        _compare(f"clipped_policy_loss(logps, old_logps, advantages={_show(advantages)}, mask, epsilon={epsilon})",
                 got, want, [
                     (completions(torch.max(ratio * a, clipped)), "take the min of the two terms, not the max: the "
                                                                  "clipped objective is a pessimistic bound"),
                     (completions(ratio * a), "clip the ratio to [1 - epsilon, 1 + epsilon]"),
                     (completions(torch.min(ratio * a, (ratio * a).clamp(1 - epsilon, 1 + epsilon))),
                      "clip the ratio, not its product with the advantage: the second term is "
                      "clip(rho, 1 - epsilon, 1 + epsilon) * A"),
                     (completions(torch.min(quotient * a, quotient.clamp(1 - epsilon, 1 + epsilon) * a)),
                      "the ratio is exp(logps - old_logps): log-probabilities subtract, they do not divide"),
                     (-(torch.min(ratio * a, clipped) * mask).sum() / mask.sum(),
                      "average each completion's tokens first, then the completions (you averaged all tokens at once)"),
                     (-torch.min(ratio * a, clipped).mean(1).mean(), "only completion tokens count: multiply by mask "
                                                                     "and divide by each completion's mask sum"),
                     (-want, "the loss is the objective negated (the optimizer minimises it)")])
        if not torch.is_tensor(got) or not got.requires_grad:
            raise CheckFailed("return a tensor with a gradient w.r.t. logps: the policy learns from this loss")
        x_want = logps.clone().requires_grad_()
        gradient = torch.autograd.grad(got, x, allow_unused=True)[0]
        _compare("the gradient w.r.t. logps of your loss", torch.zeros(4, 5) if gradient is None else gradient,
                 torch.autograd.grad(losses.clipped_policy_loss(x_want, old, advantages, mask, epsilon), x_want)[0],
                 [(torch.zeros(4, 5), "the loss must be differentiable in logps: do not detach them")])


def check_on_target_weights(answer) -> None:
    """``on_target_weights(valid [N] bool, boxes [N, 4], target_masks [N, H, W] bool) -> [N]``: uniform over the valid
    rollouts whose box has IoU > 0.5 with the target's tight box; all 0 when none."""
    answer = _Answer(answer, EXERCISES["on_target_weights"].borrowed)
    target = torch.zeros(6, 10, 10, dtype=torch.bool)
    target[:5, 2:6, 2:6] = True  # tight box (2, 2, 6, 6), area 16; rollout 5's target is empty
    boxes = torch.tensor([[2, 2, 6, 6], [2, 2, 6, 10], [3, 3, 6, 6], [2, 2, 6, 6], [7, 7, 9, 9], [2, 2, 6, 6]],
                         dtype=torch.float32)  # box IoUs 1, 16/32 = 0.5, 9/16, 1 (invalid), 0, 0 (empty target)
    valid = torch.tensor([True, True, True, False, True, True])
    third, fifth = 1 / 3, 1 / 5
    _compare("on_target_weights(valid, boxes, target_masks) on the case in the exercise's text",
             answer(valid.clone(), boxes.clone(), target.clone()), [0.5, 0, 0.5, 0, 0, 0], [
                 ([third, third, third, 0, 0, 0], "on target means box IoU > 0.5, strictly: rollout 1's IoU is 0.5"),
                 ([1, 0, 0, 0, 0, 0], "the tight box's x2 and y2 are pixel edges, the last column or row + 1: "
                                      "rollout 2's box (3, 3, 6, 6) has IoU 9/16 with (2, 2, 6, 6)"),
                 ([third, 0, third, third, 0, 0], "an invalid rollout gets weight 0, even with a box on target"),
                 ([fifth, 0, fifth, 0, 0, 0], "normalise over the selected rollouts: their weights sum to 1"),
                 ([fifth] * 3 + [0] + [fifth] * 2, "weight only the rollouts whose box matches the target's"),
                 ([third, 0, third, 0, 0, third], "an empty target is never matched")])
    _compare("on_target_weights(valid, boxes, target_masks) with no box on target",
             answer(valid.clone(), boxes[[4, 4, 4, 4, 4, 4]], target.clone()), [0.0] * 6,
             [([math.nan] * 6, "when no rollout is selected every weight is 0, not NaN")])


def soft_mask_reward(tool_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A differentiable mask reward [N] of logits [N, H, W] against bool targets [N, H, W]: the soft IoU,
    1 - ``losses.tool_loss(kind="soft_iou")``, in [0, 1]."""
    return 1 - losses.tool_loss(tool_logits, targets, kind="soft_iou")




def check_grto_surrogate(answer) -> None:
    """``grto_surrogate(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size,
    tool_weight) -> scalar``, checked through what the stop-gradient implies."""
    answer = _Answer(answer, EXERCISES["grto_surrogate"].borrowed)
    name = answer.name

    def run(case, tool_weight):
        x, y = case[0].clone().requires_grad_(), case[3].clone().requires_grad_()
        value = answer(x, case[1].clone(), case[2].clone(), y, case[4].clone(), case[5].clone(), case[6], tool_weight)
        if not torch.is_tensor(value) or value.dim() != 0 or not value.requires_grad:
            raise CheckFailed(f"{name} must return a scalar tensor with a gradient, got {_show(value)}")
        gradients = torch.autograd.grad(value, (x, y), allow_unused=True)
        return value.detach(), *(torch.zeros_like(t) if g is None else g for t, g in zip((x, y), gradients))

    case = _surrogate_case(torch.Generator().manual_seed(0))
    value, policy_grad, tool_grad = run(case, 0.5)
    if not policy_grad.abs().sum() > 0:
        raise CheckFailed("the policy's log-probabilities get no gradient: add the clipped policy loss")
    moved = (case[0] + 0.3, *case[1:])
    if not _close(run(moved, 0.5)[2], tool_grad):
        raise CheckFailed("the policy loss sends gradient into the tool through the advantages (the tool's gradient "
                          "changes when only the policy's log-probs do): compute them from the rewards with a "
                          "stop-gradient (rewards.detach()), so the tool learns only from tool_weight * its own loss")
    y = case[3].clone().requires_grad_()
    mean_loss = losses.tool_loss(y, case[4]).mean()
    own = torch.autograd.grad(0.5 * mean_loss, y)[0]
    _compare(f"the tool's gradient of {name}(..., tool_weight=0.5)", tool_grad, own, [
        (own / 0.5, "multiply the tool loss by tool_weight"),
        (own * len(y), "average the tool losses with uniform weights 1/N, do not sum them")], atol=1e-6)
    if not _close(run(case, 0.0)[1], policy_grad):
        raise CheckFailed("the policy's gradient changes with tool_weight: tool_weight multiplies the tool loss only")
    on_policy = (case[1].clone(), *case[1:])  # ratio 1: the policy loss is -mean(A) = 0, A summing to 0 per group
    _compare(f"{name} on its first update (logps == old_logps), where the policy loss is -mean A = 0,",
             run(on_policy, 0.5)[0], 0.5 * mean_loss.detach(), atol=1e-5)


def check_micro_batch_loss(answer) -> None:
    """``micro_batch_loss(policy_loss, tool_losses [n], weights [n], tool_weight, accumulation_steps) -> scalar``."""
    answer = _Answer(answer, EXERCISES["micro_batch_loss"].borrowed)
    already_divided = "the policy loss arrives already divided by accumulation_steps: divide only the tool term"

    def check(policy_loss, tool_losses, weights, tool_weight, steps, want):
        weighted = (weights * tool_losses).sum()
        call = (f"micro_batch_loss(policy_loss={policy_loss.item():.4g}, tool_losses={_show(tool_losses)}, "
                f"weights={_show(weights)}, tool_weight={tool_weight}, accumulation_steps={steps})")
        _compare(call, answer(policy_loss.clone(), tool_losses.clone(), weights.clone(), tool_weight, steps), want, [
            (policy_loss + tool_weight * weighted, "divide the tool term by accumulation_steps, as TRL divides its "
                                                   "policy loss: else the tool's step is accumulation_steps times "
                                                   "too large"),
            ((policy_loss + tool_weight * weighted) / steps, already_divided),
            (policy_loss / steps + tool_weight * weighted, already_divided),
            (policy_loss + weighted / steps, "multiply the tool term by tool_weight (lambda)"),
            (policy_loss + tool_weight * tool_losses.mean() / steps, "weight the tool losses with weights, not their "
                                                                      "plain mean")])

    # 0.6 + 0.2 (0.25 * 1 + 0.75 * 3) / 4 = 0.6 + 0.5 / 4
    check(torch.tensor(0.6), torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75]), 0.2, 4, want=0.725)
    check(torch.tensor(0.6), torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75]), 0.2, 1, want=1.1)


# --- Assignment 4: evaluation (notebook 04) -------------------------------------------------------------------
def check_giou_ciou(answer) -> None:
    """``giou_ciou(preds, gts, ignores) -> (giou, ciou)``: lists of (H, W) bool arrays, a pred None when missing."""
    from grto_lib import metrics

    answer = _Answer(answer, EXERCISES["giou_ciou"].borrowed)
    gts = [np.zeros((6, 6), dtype=bool) for _ in range(4)]
    gts[0][1:4, 1:5] = gts[1][2:5, 2:5] = gts[3][0:2, 0:3] = True  # sample 2: an empty target
    first = np.zeros((6, 6), dtype=bool)
    first[1:5, 2:6] = True
    ignore = np.zeros((6, 6), dtype=bool)
    ignore[4:, :] = True  # drops sample 0's prediction's last row
    preds, ignores = [first, None, np.zeros((6, 6), dtype=bool), gts[3].copy()], [ignore, None, None, None]
    both = lambda s: (s["giou"], s["ciou"])  # noqa: E731
    want = both(metrics.segmentation_scores(preds, gts, ignores))
    unions = [metrics.mask_iou(np.zeros_like(g) if p is None else p, g, m) for p, g, m in zip(preds, gts, ignores)]
    kept = [k for k, p in enumerate(preds) if p is not None]
    dropped = metrics.segmentation_scores(*([seq[k] for k in kept] for seq in (preds, gts, ignores)))
    got = answer([None if p is None else p.copy() for p in preds], [g.copy() for g in gts], list(ignores))
    _compare("giou_ciou(preds, gts, ignores) on the exercise's four samples", got, want, [
        (both(metrics.segmentation_scores(preds, gts)), "leave the ignore pixels out of I and U"),
        (both(dropped),
         "a missing answer (None) counts as an empty mask, IoU 0: never drop it"),
        ((np.mean([i / u if u else 0.0 for i, u in unions]), want[1]),
         "a sample whose union is empty (empty target, empty prediction) counts 1.0 in gIoU, as LISA does"),
        ((want[0], want[0]), "cIoU is sum of I / sum of U over the samples, not the mean of the ratios"),
        ((want[1], want[0]), "you swapped them: gIoU is the mean of the ratios, cIoU the ratio of the sums")])
    empty, hint = [np.zeros((3, 3), dtype=bool)] * 2, "when every union is empty cIoU is 1.0 (nothing to miss)"
    _compare("giou_ciou([empty, empty], [empty, empty], [None, None])", answer(list(empty), list(empty), [None, None]),
             (1.0, 1.0), [((1.0, 0.0), f"{hint}, not 0"), ((1.0, math.nan), f"{hint}, not NaN")])


def check_pass_at_k(answer) -> None:
    """``pass_at_k(correct [S, n] bool, k) -> float``: mean over prompts of 1 - C(n - c, k) / C(n, k)."""
    answer = _Answer(answer, EXERCISES["pass_at_k"].borrowed)

    def check(correct, k, want):
        c, n = correct.sum(1).double(), correct.shape[1]
        _compare(f"pass_at_k({correct.int().tolist()}, k={k})", answer(correct.clone(), k), want, [
            ((1 - (1 - c / n) ** k).mean(), "draw k distinct samples of the n (without replacement): C(n - c, k) / "
                                            "C(n, k) is the chance that none of them is correct"),
            ((c > 0).double().mean(), "pass@k depends on k: that is pass@n, some of all n samples correct"),
            ((c / n).mean(), "pass@k depends on k: that is pass@1, the share of correct samples")])

    two = torch.tensor([[True, False, False, True]])
    check(two, 1, want=0.5)
    check(two, 2, want=5 / 6)  # 1 - C(2, 2) / C(4, 2) = 1 - 1/6
    check(two, 4, want=1.0)
    check(torch.zeros(1, 4, dtype=torch.bool), 2, want=0.0)
    check(torch.tensor([[True, False, False, True], [False, False, False, True]]), 2, want=(5 / 6 + 1 / 2) / 2)


def check_paired_difference(answer) -> None:
    """``paired_difference(iou_a [n], iou_b [n]) -> (mean, standard_error)`` of d_i = a_i - b_i, SE = s_d / sqrt(n)."""
    answer = _Answer(answer, EXERCISES["paired_difference"].borrowed)

    def check(a, b, want):
        d, n = (a - b).double(), len(a)
        _compare(f"paired_difference({_show(a)}, {_show(b)})", answer(a.clone(), b.clone()), want, [
            ((d.mean(), math.sqrt((a.double().var() + b.double().var()) / n)),
             "the samples are paired (both methods on the same test images): use the std of the differences, "
             "not of each method"),
            ((d.mean(), d.std(unbiased=False) / math.sqrt(n)), "use the unbiased std of the differences (n - 1)"),
            ((d.mean(), d.std()), "divide the std by sqrt(n): the standard error is of the mean"),
            ((d.mean(), d.std() / n), "divide the std by sqrt(n), not by n"),
            ((-d.mean(), d.std() / math.sqrt(n)), "the difference is a - b")])

    # d = (0.1, 0.2, 0, 0.3): mean 0.15, squared deviations sum 0.05, s = sqrt(0.05 / 3), SE = s / 2
    check(torch.tensor([0.5, 0.7, 0.2, 0.6]), torch.tensor([0.4, 0.5, 0.2, 0.3]), want=(0.15, math.sqrt(0.05 / 3) / 2))
