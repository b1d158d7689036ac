"""Advantages, the GRPO surrogate (hand-computed and against TRL 1.16's own _compute_loss), tool loss and weights."""
import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grto_lib.losses import clipped_policy_loss, group_advantages, tool_loss, tool_loss_selection, tool_loss_weights

torch.set_num_threads(1)


# --- group_advantages -------------------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])  # two groups of 4; the second is constant
CENTRED = torch.tensor([-1.5, -0.5, 0.5, 1.5, 0.0, 0.0, 0.0, 0.0])


def test_group_scaled_advantages():
    group_std = math.sqrt((1.5**2 + 0.5**2) * 2 / 3)  # unbiased: n - 1 = 3
    expected = CENTRED / (group_std + 1e-4)
    torch.testing.assert_close(group_advantages(REWARDS, 4), expected)
    assert (group_advantages(REWARDS, 4)[4:] == 0).all()  # constant group: exactly zero


def test_batch_scaled_advantages_keep_the_group_mean():
    batch_std = math.sqrt(17.5 / 7)  # mean 3.75, squared deviations sum to 17.5, n - 1 = 7
    torch.testing.assert_close(group_advantages(REWARDS, 4, scale="batch"), CENTRED / (batch_std + 1e-4))


def test_unscaled_advantages_and_trl_bool_aliases():
    torch.testing.assert_close(group_advantages(REWARDS, 4, scale="none"), CENTRED)
    torch.testing.assert_close(group_advantages(REWARDS, 4, scale=False), CENTRED)
    torch.testing.assert_close(group_advantages(REWARDS, 4, scale=True), group_advantages(REWARDS, 4))


def test_nan_rewards_are_left_out_and_get_zero_advantage():
    adv = group_advantages(torch.tensor([1.0, math.nan, 3.0, 5.0]), 4)  # mean 3, std 2 over the other three
    torch.testing.assert_close(adv, torch.tensor([-2.0, 0.0, 0.0, 2.0]) / (2.0 + 1e-4))


def test_group_of_one_has_zero_advantage_and_eps_is_used():
    assert (group_advantages(torch.tensor([0.3, 0.7]), 1) == 0).all()
    # deviations -1, +1; unbiased std sqrt(2)
    expected = torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1.0)
    torch.testing.assert_close(group_advantages(torch.tensor([0.0, 2.0]), 2, eps=1.0), expected)


def test_group_advantages_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divide"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale must be one of"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


# --- clipped_policy_loss: hand-computed ----------------------------------------------------------------
# Two completions of 3 tokens; the second has 2 real tokens. Ratios pi/pi_old:
#   row 0 (A = +1): 1, 1.5, 0.5   -> -min(rA, clip(r)A) = -1, -1.2 (clipped), -0.5
#   row 1 (A = -1): 1.1, 1, (pad) -> +1.1, +1
# Row sums -2.7 and 2.1; rows of 3 and 2 real tokens.

OLD = torch.log(torch.tensor([[0.5, 0.4, 0.6], [0.5, 0.3, 0.9]], dtype=torch.float64))
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.1, 1.0, 1.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)


def logps():
    return (OLD + torch.log(RATIOS)).clone().requires_grad_(True)


def test_clipped_policy_loss_by_hand():
    lp = logps()
    loss = clipped_policy_loss(lp, OLD, ADV, MASK)
    assert loss.item() == pytest.approx((-2.7 / 3 + 2.1 / 2) / 2)
    loss.backward()
    # d/d logp of -rA/|o|/B where unclipped (grad r = r), zero where the clip is active or padded
    expected = torch.tensor([[-1.0 / 3, 0.0, -0.5 / 3], [1.1 / 2, 1.0 / 2, 0.0]], dtype=torch.float64) / 2
    torch.testing.assert_close(lp.grad, expected)


def test_clipped_policy_loss_first_update_is_the_score_function():
    """rho = 1 on the first update after sampling: the gradient is -(1/B) sum_i A_i (1/|o_i|) sum_t grad log pi."""
    lp = OLD.clone().requires_grad_(True)
    clipped_policy_loss(lp, OLD, ADV, MASK).backward()
    torch.testing.assert_close(lp.grad, -ADV[:, None] * MASK / MASK.sum(1, keepdim=True) / 2)


# --- clipped_policy_loss: against TRL's own code --------------------------------------------------------------


def trl_loss(per_token_logps, inputs, **config):
    """Run TRL 1.16's GRPOTrainer._compute_loss on a stand-in trainer whose model 'returns' ``per_token_logps``."""
    grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")
    identity = lambda x, **_: x  # noqa: E731
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, torch.zeros_like(per_token_logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=config.get("importance_sampling_level", "token"),
        beta=config.get("beta", 0.0),
        loss_type=config["loss_type"],
        epsilon_low=config.get("epsilon_low", 0.2),
        epsilon_high=config.get("epsilon_high", 0.2),
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=config.get("gradient_accumulation_steps", 1),
        max_completion_length=config.get("max_completion_length"),
        accelerator=SimpleNamespace(num_processes=config.get("num_processes", 1), gather=identity,
                                    gather_for_metrics=identity, reduce=identity),
        args=SimpleNamespace(
            delta=config.get("delta"),
            use_bias_correction_kl=config.get("use_bias_correction_kl", True),
            steps_per_generation=config.get("steps_per_generation", 1),
        ),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    return grpo_trainer.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_matches_trl_compute_loss_value_and_gradient(accumulation):
    """TRL's loss under the trainer's defaults (loss_type="grpo", no KL) is clipped_policy_loss divided by the
    gradient-accumulation steps (each micro-batch's loss is summed over the step)."""
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 6
    old = -torch.rand(b, t, generator=gen) * 3
    current = old + 0.4 * torch.randn(b, t, generator=gen)  # ratios both inside and outside the clip range
    mask = (torch.arange(t)[None] < torch.tensor([[6], [3], [1], [0]])).int()  # includes an empty completion
    advantages = torch.randn(b, generator=gen)
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": torch.tensor(int(mask.sum())),
    }
    theirs_lp = current.clone().requires_grad_(True)
    theirs = trl_loss(theirs_lp, inputs, loss_type="grpo", gradient_accumulation_steps=accumulation,
                      steps_per_generation=accumulation)
    theirs.backward()

    ours_lp = current.clone().requires_grad_(True)
    ours = clipped_policy_loss(ours_lp, old, advantages, mask) / accumulation
    ours.backward()
    assert ours.item() != 0.0
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, rtol=1e-6, atol=0)


# --- tool_loss ---------------------------------------------------------------------------------------------


def test_bce_dice_two_pixels_by_hand():
    logits = torch.tensor([[[0.0, 2.0]]])  # p = 0.5, sigmoid(2)
    targets = torch.tensor([[[True, False]]])
    p1 = 1 / (1 + math.exp(-2.0))
    bce = (math.log(2) + (-math.log(1 - p1))) / 2
    dice = 1 - (2 * 0.5 + 1) / ((0.5 + p1) + 1 + 1)
    assert tool_loss(logits, targets).item() == pytest.approx(bce + dice)
    # soft IoU without smoothing: I = 0.5, U = 0.5 + p1 + 1 - 0.5
    iou = tool_loss(logits, targets, kind="soft_iou", smooth=0.0).item()
    assert iou == pytest.approx(1 - 0.5 / (1 + p1))


def test_bce_dice_gradient_by_hand_on_two_pixels():
    logits = torch.tensor([[[0.3, -1.2]]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[[True, False]]])
    # d BCE / d logit_j = (p_j - t_j) / #pixels;  d Dice / d logit_j = -(2 t_j den - num) / den^2 * p_j (1 - p_j)
    tool_loss(logits, targets).backward()
    p = torch.sigmoid(logits.detach())
    t = targets.double()
    s = 1.0
    num, den = 2 * (p * t).sum() + s, p.sum() + t.sum() + s
    dice_grad = -(2 * t * den - num) / den**2 * p * (1 - p)
    torch.testing.assert_close(logits.grad, (p - t) / 2 + dice_grad)


@pytest.mark.parametrize("kind", ["bce_dice", "soft_iou"])
def test_tool_loss_gradcheck(kind):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.rand(2, 3, 4, generator=gen) > 0.5
    ignore = torch.rand(2, 3, 4, generator=gen) > 0.7
    assert torch.autograd.gradcheck(lambda x: tool_loss(x, targets, ignore, kind=kind), (logits,))


def test_tool_loss_is_per_sample_and_ignores_pixels():
    logits = torch.tensor([[[5.0, -5.0]], [[-5.0, -5.0]]])
    targets = torch.tensor([[[True, False]], [[True, False]]])
    loss = tool_loss(logits, targets, kind="soft_iou", smooth=0.0)
    assert loss.shape == (2,)
    assert loss[0].item() < 0.02 and loss[1].item() > 0.98
    # ignoring the missed target pixel of sample 1 leaves one background pixel with p = sigmoid(-5):
    # soft IoU (smooth 1) = 1 - 1 / (1 + p), BCE = -log(1 - p) = log(1 + e^-5), Dice = 1 - 1 / (p + 1)
    ignore = torch.tensor([[[False, False]], [[True, False]]])
    p = 1 / (1 + math.exp(5.0))
    assert tool_loss(logits, targets, ignore, kind="soft_iou")[1].item() == pytest.approx(p / (1 + p), rel=1e-5)
    bce = math.log1p(math.exp(-5.0))
    assert tool_loss(logits, targets, ignore)[1].item() == pytest.approx(bce + p / (1 + p), rel=1e-5)
    assert tool_loss(logits, targets, ignore)[0].item() == tool_loss(logits, targets)[0].item()


def test_tool_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind must be one of"):
        tool_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool), kind="focal")
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        tool_loss(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))


# --- tool_loss_weights -------------------------------------------------------------------------------------

A = torch.tensor([1.5, -0.5, 0.5, 2.0, -1.0])
VALID = torch.tensor([True, True, True, False, True])


def test_uniform_weights():
    torch.testing.assert_close(tool_loss_weights(A, VALID, "uniform"), torch.tensor([0.25, 0.25, 0.25, 0.0, 0.25]))


def test_box_on_target_is_box_iou_above_one_half():
    from grto_lib.geometry import box_on_target
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 2:6] = True  # tight box [2, 2, 6, 6], 16 pixels
    boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0],   # the tight box: IoU 1
                          [2.0, 2.0, 6.0, 9.0],   # 16 / 28: IoU 0.57
                          [2.0, 2.0, 4.0, 6.0],   # half of it: IoU 0.5, not above
                          [0.0, 0.0, 9.0, 9.0],   # the target and what lies around it: IoU 0.20
                          [7.0, 7.0, 9.0, 9.0]])  # elsewhere
    assert box_on_target(boxes, [mask] * 5).tolist() == [True, True, False, False, False]
    assert box_on_target(boxes[:1], [np.zeros((10, 10), dtype=bool)]).tolist() == [False]  # empty target
    # on_target weights are uniform over the valid rollouts on target, and need the flags
    on_target = torch.tensor([True, False, True, True, True])
    torch.testing.assert_close(tool_loss_weights(A, VALID, "on_target", on_target),
                               torch.tensor([1 / 3, 0.0, 1 / 3, 0.0, 1 / 3]))
    with pytest.raises(ValueError, match="needs on_target"):
        tool_loss_weights(A, VALID, "on_target")


def test_positive_weights():
    torch.testing.assert_close(tool_loss_weights(A, VALID, "positive"), torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0]))


def test_advantage_weights():
    torch.testing.assert_close(tool_loss_weights(A, VALID, "advantage"), torch.tensor([0.75, 0.0, 0.25, 0.0, 0.0]))


@pytest.mark.parametrize("scheme", ["uniform", "advantage", "positive"])
def test_nothing_selected_gives_zeros(scheme):
    assert (tool_loss_weights(A, torch.zeros(5, dtype=torch.bool), scheme) == 0).all()
    assert (tool_loss_weights(torch.zeros(5), torch.zeros(5, dtype=torch.bool), scheme) == 0).all()


@pytest.mark.parametrize("scheme", ["uniform", "advantage", "positive"])
def test_weights_sum_to_one_and_skip_invalid(scheme):
    gen = torch.Generator().manual_seed(2)
    adv = torch.randn(64, generator=gen)
    valid = torch.rand(64, generator=gen) > 0.3
    w = tool_loss_weights(adv, valid, scheme)
    assert w.sum().item() == pytest.approx(1.0)
    assert (w[~valid] == 0).all() and (w >= 0).all()


@pytest.mark.parametrize("scheme", ["uniform", "advantage", "positive", "on_target"])
def test_weights_with_the_steps_total_add_up_over_micro_batches_to_the_whole_steps(scheme):
    """Split a step's rollouts into micro-batches: each micro-batch's weights against the whole step's total are
    exactly the whole step's weights, so accumulating sum_i w_i L_i over micro-batches gives the same loss."""
    adv = torch.tensor([1.0, -1.0, 2.0, 0.5, 3.0, -2.0, 1.0, 1.0, -1.0, 0.5, 2.0, -0.5])
    valid = torch.tensor([True, True, True, True, True, False, True, True, True, True, False, True])
    on_target = torch.tensor([True, True, False, True, True, True, True, True, False, True, True, True])
    whole = tool_loss_weights(adv, valid, scheme, on_target)
    total = tool_loss_selection(adv, valid, scheme, on_target).sum()
    parts = [tool_loss_weights(adv[i:i + 4], valid[i:i + 4], scheme, on_target[i:i + 4], total=total)
             for i in range(0, 12, 4)]
    torch.testing.assert_close(torch.cat(parts), whole)
    alone = [tool_loss_weights(adv[i:i + 4], valid[i:i + 4], scheme, on_target[i:i + 4]) for i in range(0, 12, 4)]
    assert not torch.allclose(torch.cat(alone), whole)  # normalised per micro-batch instead: another update


def test_constant_group_selects_nothing_for_positive_schemes():
    zeros = group_advantages(torch.ones(4), 4)
    assert (tool_loss_weights(zeros, torch.ones(4, dtype=torch.bool), "positive") == 0).all()
    assert (tool_loss_weights(zeros, torch.ones(4, dtype=torch.bool), "advantage") == 0).all()


def test_tool_loss_weights_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scheme must be one of"):
        tool_loss_weights(A, VALID, "topk")
    with pytest.raises(ValueError, match="bool"):
        tool_loss_weights(A, VALID.int(), "uniform")
    with pytest.raises(ValueError, match="finite"):
        tool_loss_weights(torch.tensor([math.nan, 1.0]), torch.tensor([True, True]), "advantage")


def test_rollout_tool_losses_handles_images_of_different_sizes_and_ignore():
    from grto_lib.losses import rollout_tool_losses
    from grto_lib.sample import Sample

    g = torch.Generator().manual_seed(0)
    small = Sample(image=None, query="q", mask=torch.rand(4, 5, generator=g).numpy() > 0.5, ignore=None, id="a")
    big_ignore = torch.rand(6, 3, generator=g).numpy() > 0.7
    big = Sample(image=None, query="q", mask=torch.rand(6, 3, generator=g).numpy() > 0.5, ignore=big_ignore, id="b")
    logits = [torch.randn(4, 5, generator=g), torch.randn(6, 3, generator=g)]
    per = rollout_tool_losses(logits, [small, big])
    expected = [tool_loss(logits[0][None], torch.as_tensor(small.mask)[None])[0],
                tool_loss(logits[1][None], torch.as_tensor(big.mask)[None], torch.as_tensor(big_ignore)[None])[0]]
    assert torch.allclose(per, torch.stack(expected))
    # One size: the batched path gives the same numbers as one by one.
    same = [small, small]
    stacked = torch.stack([logits[0], logits[0] * 2])
    assert torch.allclose(rollout_tool_losses(stacked, same), rollout_tool_losses(list(stacked), same))
