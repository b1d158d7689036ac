"""Writes the hidden tests of every exercise into the source notebooks (course/source), from a seed:

    .venv/bin/python course/hidden_tests.py              # the committed ones (seed 34)
    .venv/bin/python course/hidden_tests.py --seed N     # a class's own, before `make course`

Each grade cell becomes its visible check, then, between nbgrader's hidden-test markers (left out of the student's
release, restored at grading), ``exercises.check_hidden(answer, "answer", seed=..., want=[...])``: ``want`` holds,
rounded to 7 digits, what a reference returns on the cases ``exercises.hidden_cases`` draws from the seed. The
references below are grto_lib's own functions where the exercise re-implements one, else independent code (autograd,
enumeration, float64, the standard library). Before writing, every notebook's solutions must pass the new tests.

This repository is public: a class whose students could read it should use its own seed, so that the hidden cases
and their values are not on GitHub.
"""
import argparse
import contextlib
import dataclasses
import io
import itertools
import math
import statistics
import textwrap
from pathlib import Path

import nbformat
import torch

from grto_lib import geometry, losses, metrics, rewards
from grto_lib.course import exercises
from grto_lib.tinyworld import toy

SOURCE = Path(__file__).resolve().parent / "source"
DEFAULT_SEED = 34
BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _score_function_gradient(logits, picks, rewards_):
    """The mean of r_i log pi_{k_i}, differentiated by autograd."""
    theta = logits.clone().requires_grad_()
    return torch.autograd.grad((rewards_ * torch.log_softmax(theta, 0)[picks]).mean(), theta)[0]


def _tool_gradient(problem, picks):
    """-(1/N) sum_i grad L_{k_i} is the exact gradient under the picks' frequencies."""
    counts = torch.bincount(picks, minlength=len(problem.policy_probs)).double()
    return toy.exact_gradient(dataclasses.replace(problem, policy_probs=counts / counts.sum()))


def _off_policy_tool_loss(tool_losses, logp_policy, logp_reference, usable):
    """The importance weights in float64, where the hidden cases' log-ratios do not overflow."""
    if not usable.any():
        return torch.tensor(0.0)
    rho = torch.exp((logp_policy - logp_reference).double()) * usable
    return (rho * tool_losses).sum() / rho.sum()


def _on_target_weights(valid, boxes, target_masks):
    on_target = torch.as_tensor(geometry.box_on_target(boxes.numpy(), target_masks.numpy()))
    return losses.tool_loss_weights(torch.zeros(len(valid)), valid, "on_target", on_target)


def _grto_surrogate(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size, tool_weight):
    mask_reward = exercises.soft_mask_reward(tool_logits, targets).detach()
    advantages = losses.group_advantages(other_rewards + mask_reward, group_size)
    policy = losses.clipped_policy_loss(logps, old_logps, advantages, completion_mask)
    return policy + tool_weight * losses.tool_loss(tool_logits, targets).sum() / len(targets)


def _giou_ciou(preds, gts, ignores):
    scores = metrics.segmentation_scores(preds, gts, ignores)
    return scores["giou"], scores["ciou"]


def _pass_at_k(correct, k):
    """Every k-subset of each prompt's samples, counted."""
    subsets = list(itertools.combinations(range(correct.shape[1]), k))
    return sum(sum(bool(row[list(s)].any()) for s in subsets) / len(subsets) for row in correct) / len(correct)


def _paired_difference(iou_a, iou_b):
    d = (iou_a - iou_b).tolist()
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


REFERENCES = {
    "group_advantages": losses.group_advantages,
    "score_function_gradient": _score_function_gradient,
    "tool_gradient": _tool_gradient,
    "tool_loss_weights": losses.tool_loss_weights,
    "parse_box": rewards.parse_box,
    "tool_loss": losses.tool_loss,
    "off_policy_tool_loss": _off_policy_tool_loss,
    "clipped_policy_loss": losses.clipped_policy_loss,
    "on_target_weights": _on_target_weights,
    "grto_surrogate": _grto_surrogate,
    "micro_batch_loss": lambda p, l, w, lam, k: p + lam * torch.dot(w, l) / k,
    "giou_ciou": _giou_ciou,
    "pass_at_k": _pass_at_k,
    "paired_difference": _paired_difference,
}


def _rounded(value):
    """Observation data with every float rounded to 7 significant digits."""
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return float(f"{value:.7g}") if isinstance(value, float) else value


def hidden_test(exercise: str, seed: int) -> str:
    """The hidden-test region of ``exercise``'s grade cell, markers included."""
    want = [_rounded(exercises.EXERCISES[exercise].observe(REFERENCES[exercise], case))
            for case in exercises.hidden_cases(exercise, seed)]
    call = textwrap.fill(f'exercises.check_hidden({exercise}, "{exercise}", seed={seed}, want={want!r})', 116,
                         subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    return f"{BEGIN}\n{call}\n{END}"


def rewrite(notebook: nbformat.NotebookNode, seed: int) -> nbformat.NotebookNode:
    """``notebook`` with each grade cell's hidden tests written anew, after checking that its solutions pass them."""
    namespace, printed = {}, io.StringIO()
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if cell.cell_type != "code":
            continue
        if not grade_id.startswith("check_"):
            exec(cell.source, namespace)
            continue
        exercise = grade_id.removeprefix("check_")
        visible = cell.source.split(BEGIN)[0].removesuffix('print("correct")').strip()
        cell.source = f'{visible}\n{hidden_test(exercise, seed)}\nprint("correct")'
        with contextlib.redirect_stdout(printed):
            exec(cell.source, namespace)  # the visible check and the new hidden tests, on the solution
    return notebook


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="draws the hidden cases")
    seed = parser.parse_args(argv).seed
    torch.set_num_threads(1)
    for path in sorted(SOURCE.glob("*/*.ipynb")):
        notebook = rewrite(nbformat.read(path, as_version=4), seed)
        path.write_text(nbformat.writes(notebook) + "\n")
        print(f"{path.relative_to(SOURCE.parent.parent)}: hidden tests of seed {seed}")


if __name__ == "__main__":
    main()
