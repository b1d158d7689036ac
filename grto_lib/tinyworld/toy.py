r"""A toy problem small enough to compute GRTO's tool gradient exactly (notebook 01 and the tests use it).

A categorical policy pi over K candidate prompts; prompt k has a feature vector x_k. The tool is a linear
"decoder" that maps a prompt to mask logits over a 4 x 4 image: ``logits_k = W x_k + b``. The target is a
fixed mask y. The tool's part of the objective is

.. math::  J(\phi) = E_{k \sim \pi}[-L_{tool}(D_\phi(x_k), y)] = -\sum_k \pi_k L_k(\phi),

so the exact gradient is :math:`-\sum_k \pi_k \nabla_\phi L_k`. GRTO estimates it from one group of G sampled
prompts as :math:`-\sum_i w_i \nabla_\phi L_{k_i}` with uniform weights :math:`w_i = 1/G` (unbiased: the
sampling distribution does not depend on :math:`\phi`, so no score-function term appears). Weighting the
rollouts by their advantage favours prompts the tool already handles well and biases the estimate.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from grto_lib import losses


@dataclass
class ToyProblem:
    """Everything that defines the toy objective."""

    policy_probs: torch.Tensor
    """[K] the policy's probabilities over prompts."""
    features: torch.Tensor
    """[K, d] one feature vector per prompt."""
    target: torch.Tensor
    """[4, 4] bool target mask."""
    weight: torch.Tensor
    """[16, d] tool weights (phi, part 1)."""
    bias: torch.Tensor
    """[16] tool bias (phi, part 2)."""

    def parameters(self) -> list[torch.Tensor]:
        return [self.weight, self.bias]


def make_toy_problem(num_prompts: int = 5, dim: int = 3, seed: int = 0) -> ToyProblem:
    generator = torch.Generator().manual_seed(seed)
    g = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    return ToyProblem(
        policy_probs=torch.softmax(g(num_prompts), 0),
        features=g(num_prompts, dim),
        target=torch.rand(4, 4, generator=generator) > 0.5,
        weight=g(16, dim).mul_(0.5).requires_grad_(),
        bias=g(16).mul_(0.1).requires_grad_(),
    )


def per_prompt_tool_loss(problem: ToyProblem) -> torch.Tensor:
    """[K] L_tool(D_phi(x_k), y) for every prompt (BCE + Dice, the training default)."""
    logits = (problem.features @ problem.weight.T + problem.bias).view(-1, 4, 4)
    return losses.tool_loss(logits, problem.target.expand(len(logits), 4, 4), kind="bce_dice")


def tool_objective(problem: ToyProblem) -> torch.Tensor:
    """J(phi) = -sum_k pi_k L_k(phi), computed exactly."""
    return -(problem.policy_probs * per_prompt_tool_loss(problem)).sum()


def exact_gradient(problem: ToyProblem) -> torch.Tensor:
    """grad_phi J by autograd through the exact objective, flattened."""
    grads = torch.autograd.grad(tool_objective(problem), problem.parameters())
    return torch.cat([g.flatten() for g in grads])


def finite_difference_gradient(problem: ToyProblem, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of J, one parameter at a time (independent of autograd), flattened."""
    out = []
    with torch.no_grad():
        for p in problem.parameters():
            flat = p.view(-1)
            for j in range(flat.numel()):
                old = flat[j].item()
                flat[j] = old + eps
                up = tool_objective(problem).item()
                flat[j] = old - eps
                down = tool_objective(problem).item()
                flat[j] = old
                out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def grto_gradient_estimate(problem: ToyProblem, group_size: int = 8, groups: int = 2000,
                           weighting: str = "uniform", seed: int = 0) -> torch.Tensor:
    """Mean over ``groups`` of GRTO's one-group estimate -sum_i w_i grad L_{k_i}, flattened.

    Each group samples G prompts from pi; rewards are r_i = -L_{k_i} (a mask-quality reward), advantages are
    group-relative (``losses.group_advantages``) and the weights come from ``losses.tool_loss_weights``.
    """
    generator = torch.Generator().manual_seed(seed)
    loss = per_prompt_tool_loss(problem)
    grads = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(l, problem.parameters(),
                                                                             retain_graph=True)])
                         for l in loss])  # [K, P]: grad of each prompt's loss
    picks = torch.multinomial(problem.policy_probs, groups * group_size, replacement=True, generator=generator)
    rewards = -loss.detach()[picks]
    advantages = losses.group_advantages(rewards, group_size)
    estimate = torch.zeros(grads.shape[1], dtype=torch.float64)
    valid = torch.ones(group_size, dtype=torch.bool)
    for g in range(groups):
        rows = slice(g * group_size, (g + 1) * group_size)
        weights = losses.tool_loss_weights(advantages[rows], valid, weighting).to(torch.float64)
        estimate -= weights @ grads[picks[rows]]
    return estimate / groups
