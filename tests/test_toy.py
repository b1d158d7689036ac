"""The GRTO tool-gradient estimator on a toy problem where the exact gradient is known."""
import torch

from grto_lib.tinyworld.toy import exact_gradient, finite_difference_gradient, grto_gradient_estimate, make_toy_problem


def relative_error(x, reference):
    return ((x - reference).norm() / reference.norm()).item()


def test_autograd_gradient_of_the_exact_objective_matches_finite_differences():
    problem = make_toy_problem(seed=1)
    assert relative_error(finite_difference_gradient(problem), exact_gradient(problem)) < 1e-6


def test_uniform_grto_estimator_is_unbiased():
    problem = make_toy_problem(seed=0)
    exact = exact_gradient(problem)
    # 4000 groups of 8: Monte-Carlo error ~0.5 % (measured over seeds); the bias of the ablations is ~40 %.
    assert relative_error(grto_gradient_estimate(problem, groups=4000, seed=3), exact) < 0.02


def test_advantage_weighting_biases_the_tool_gradient():
    problem = make_toy_problem(seed=0)
    exact = exact_gradient(problem)
    for weighting in ("advantage", "positive"):
        assert relative_error(grto_gradient_estimate(problem, groups=4000, weighting=weighting), exact) > 0.2


def test_single_group_estimate_is_minus_mean_gradient_of_its_prompts():
    problem = make_toy_problem(seed=2)
    torch.manual_seed(0)
    estimate = grto_gradient_estimate(problem, group_size=4, groups=1, seed=5)
    # Recompute by hand: the same draw, the mean of -grad L over the four prompts drawn.
    picks = torch.multinomial(problem.policy_probs, 4, replacement=True, generator=torch.Generator().manual_seed(5))
    from grto_lib.tinyworld.toy import per_prompt_tool_loss
    loss = per_prompt_tool_loss(problem)[picks].mean()
    by_hand = torch.cat([g.flatten() for g in torch.autograd.grad(-loss, problem.parameters())])
    assert torch.allclose(estimate, by_hand, atol=1e-12)
