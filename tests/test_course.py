"""The course (course/, nbgrader): four assignments, one per notebook, graded by nbgrader itself. The solutions score
full marks, the release as handed out scores 0, answers borrowed from grto_lib score 0 saying why, each check names
the mistake of a typical wrong answer, and the release holds neither the solutions nor the hidden tests."""
import functools
import importlib.util
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from grto_lib import exercises, geometry, losses, metrics, rewards
from grto_lib.tinyworld import toy

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = {
    "a1_derivation": ["group_advantages", "score_function_gradient", "tool_gradient", "tool_loss_weights"],
    "a2_bootstrap": ["parse_box", "tool_loss", "off_policy_tool_loss"],
    "a3_joint_training": ["clipped_policy_loss", "on_target_weights", "grto_surrogate", "micro_batch_loss"],
    "a4_evaluation": ["giou_ciou", "pass_at_k", "paired_difference"],
}
EXERCISES = [name for names in ASSIGNMENTS.values() for name in names]


def _names(code) -> set:
    """The global names a code object and the functions and comprehensions inside it use."""
    return set(code.co_names).union(*(_names(c) for c in code.co_consts if inspect.iscode(c)))


def _pasted(function) -> str:
    """``function``'s source as a student would paste it into a cell, with the imports it needs."""
    module = sys.modules[function.__module__]
    names = sorted(n for n in _names(function.__code__) if n in vars(module))
    return (f"from __future__ import annotations\nfrom {module.__name__} import {', '.join(names)}\n"
            f"{inspect.getsource(function)}")


# What a student who borrows grto_lib's implementation hands in, for the exercises grto_lib implements: the library's
# function itself, a wrapper calling it (under another name), or a pasted copy of its source.
BORROWED = {
    "group_advantages": "from grto_lib import losses\ngroup_advantages = losses.group_advantages",
    "score_function_gradient": """
def score_function_gradient(logits, picks, rewards):
    theta = logits.clone().requires_grad_()
    logp = torch.log_softmax(theta, 0)[picks][:, None]
    loss = losses.clipped_policy_loss(logp, logp.detach(), rewards, torch.ones_like(logp))
    return -torch.autograd.grad(loss, theta)[0]""",
    "tool_gradient": """
import dataclasses
from grto_lib.tinyworld.toy import exact_gradient as exact
def tool_gradient(problem, picks):
    counts = torch.bincount(picks, minlength=len(problem.policy_probs)).double()
    return exact(dataclasses.replace(problem, policy_probs=counts / counts.sum()))""",
    "tool_loss_weights": """
import grto_lib
def tool_loss_weights(advantages, valid, scheme):
    return grto_lib.tool_loss_weights(advantages, valid, scheme)""",
    "parse_box": _pasted(rewards.parse_box),
    "tool_loss": "import functools\nfrom grto_lib import losses\ntool_loss = functools.partial(losses.tool_loss)",
    "clipped_policy_loss": """
from grto_lib import losses as L
def clipped_policy_loss(logps, old_logps, advantages, mask, epsilon=0.2):
    return L.clipped_policy_loss(logps, old_logps, advantages, mask, epsilon)""",
    "on_target_weights": """
from grto_lib.geometry import box_on_target
def on_target_weights(valid, boxes, target_masks):
    hits = torch.as_tensor(box_on_target(boxes.numpy(), target_masks.numpy()))
    return losses.tool_loss_weights(torch.zeros(len(valid)), valid, "on_target", hits)""",
    "giou_ciou": """
from grto_lib import segmentation_scores
def giou_ciou(preds, gts, ignores):
    scores = segmentation_scores(preds, gts, ignores)
    return scores["giou"], scores["ciou"]""",
}


def _nbgrader(course, *args) -> subprocess.Popen:
    """``nbgrader ARGS`` started in ``course``, as the README says (the venv need not be on PATH)."""
    return subprocess.Popen([sys.executable, "-m", "nbgrader", *args], cwd=course, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _printed(process: subprocess.Popen) -> str:
    """What a finished nbgrader command printed; it must have succeeded."""
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output[-6000:]
    return output


def _borrowing(release: Path) -> nbformat.NotebookNode:
    """The release with every exercise grto_lib implements answered by borrowing it; the others left unanswered."""
    notebook = nbformat.read(release, as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in BORROWED:
            cell.source = BORROWED[grade_id].strip()
    return notebook


STUDENTS = ("solutions", "unanswered", "borrowed")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A copy of course/ with the release generated as ``make course`` does, then every assignment autograded for
    three students: the instructor's solutions, the release as handed out, and the release answered by borrowing
    grto_lib (one nbgrader run a student, side by side, each in a copy of the course with its own gradebook).
    Returns ({student: its course folder}, what generate_assignment printed, {(assignment, student): {grade id:
    (score, max score)}})."""
    from nbgrader.api import Gradebook

    course = tmp_path_factory.mktemp("course") / "course"
    shutil.copytree(ROOT / "course", course,
                    ignore=shutil.ignore_patterns("release", "submitted", "autograded", "feedback", "gradebook.db"))
    printed = _printed(_nbgrader(course, "generate_assignment", "*"))
    courses, runs = {}, []
    for student in STUDENTS:
        courses[student] = shutil.copytree(course, course.parent / student)
        for assignment in ASSIGNMENTS:
            release = course / "release" / assignment / f"{assignment}.ipynb"
            target = courses[student] / "submitted" / student / assignment / release.name
            target.parent.mkdir(parents=True)
            if student == "borrowed":
                nbformat.write(_borrowing(release), target)
            else:
                shutil.copy(course / "source" / assignment / release.name if student == "solutions" else release,
                            target)
        runs.append(_nbgrader(courses[student], "autograde", "*", "--create"))
    for run in runs:
        _printed(run)
    scores = {}
    for student, folder in courses.items():
        with Gradebook(f"sqlite:///{folder / 'gradebook.db'}") as gradebook:
            scores.update({(a, student): {g.name: (g.score, g.max_score)
                                          for g in gradebook.find_submission(a, student).notebooks[0].grades}
                           for a in ASSIGNMENTS})
    return courses, printed, scores


def _check_errors(courses, assignment, student) -> dict:
    """{exercise: the error output of its check cell} in a student's autograded notebook."""
    path = courses[student] / "autograded" / student / assignment / f"{assignment}.ipynb"
    errors = {}
    for cell in json.loads(path.read_text())["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id", "")
        failed = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
        if grade_id.startswith("check_") and failed:
            errors[grade_id.removeprefix("check_")] = failed[0]
    return errors


def _hint_alone(error) -> bool:
    """Whether a failed check's output shows its message alone, in lines nbgrader's Validate dialog shows whole."""
    return " ".join(error["traceback"]).split() == error["evalue"].split() and max(map(len, error["traceback"])) <= 87


def test_the_course_has_fourteen_exercises_over_four_assignments_and_make_course_warns_of_nothing(graded):
    courses, printed, scores = graded
    assert "WARNING" not in printed, printed
    assert sorted(p.name for p in (courses["unanswered"] / "release").iterdir()) == sorted(ASSIGNMENTS)
    for assignment, names in ASSIGNMENTS.items():
        assert sorted(scores[assignment, "solutions"]) == sorted(f"check_{n}" for n in names)
    assert len(EXERCISES) >= 12 and "on_target_weights" in EXERCISES


def test_the_solutions_earn_full_marks_hidden_tests_included(graded):
    _, _, scores = graded
    for assignment in ASSIGNMENTS:
        solutions = scores[assignment, "solutions"]
        assert all(score == maximum == 2 for score, maximum in solutions.values()), (assignment, solutions)


def test_the_unanswered_release_scores_zero_with_the_hint_alone(graded):
    courses, _, scores = graded
    for assignment, names in ASSIGNMENTS.items():
        assert {n: s for n, (s, _) in scores[assignment, "unanswered"].items()} == {f"check_{n}": 0 for n in names}
        errors = _check_errors(courses, assignment, "unanswered")
        assert sorted(errors) == sorted(names)
        for name, error in errors.items():
            assert error["ename"] == "CheckFailed"
            assert error["evalue"].startswith(f"{name} is not implemented yet: replace `raise NotImplementedError()`")
            assert _hint_alone(error), error


def test_answers_borrowed_from_grto_lib_score_zero_saying_why(graded):
    courses, _, scores = graded
    for assignment, names in ASSIGNMENTS.items():
        assert all(score == 0 for score, _ in scores[assignment, "borrowed"].values())
        errors = _check_errors(courses, assignment, "borrowed")
        for name in set(names) & set(BORROWED):
            message = errors[name]["evalue"]
            assert "grto_lib's" in message and "scores no marks" in message and _hint_alone(errors[name]), message


def test_the_release_holds_no_solution_and_no_hidden_test(graded):
    courses, _, _ = graded
    course = courses["unanswered"]
    for assignment, names in ASSIGNMENTS.items():
        source = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
        release = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
        released = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release.cells}
        hidden = [c for c in source.cells if "### BEGIN HIDDEN TESTS" in c.source]
        assert hidden, f"{assignment} has no hidden test"
        for cell in source.cells:
            text = released[cell.metadata["nbgrader"]["grade_id"]]
            if cell.metadata["nbgrader"]["solution"]:
                assert "BEGIN SOLUTION" in cell.source and "BEGIN SOLUTION" not in text
                assert text.splitlines()[0] == cell.source.splitlines()[0] and "raise NotImplementedError()" in text
            if cell in hidden:
                assert "HIDDEN TESTS" not in text and "reference" not in text
                assert text.startswith(cell.source.split("### BEGIN HIDDEN TESTS")[0].strip())


def test_no_function_of_grto_lib_exercises_passes_a_check():
    """The checks hold no reference a student could call: none of the module's functions is an answer."""
    functions = [f for f in vars(exercises).values() if inspect.isfunction(f) and f.__module__ == exercises.__name__]
    assert not set(EXERCISES) & {f.__name__ for f in functions}
    for name in EXERCISES:
        for function in functions:
            with pytest.raises(exercises.CheckFailed):
                getattr(exercises, f"check_{name}")(function)


@pytest.mark.parametrize("name", sorted(BORROWED))
def test_every_form_of_borrowing_is_refused(name, tmp_path):
    library = {"group_advantages": losses.group_advantages, "tool_loss_weights": losses.tool_loss_weights,
               "parse_box": rewards.parse_box, "tool_loss": losses.tool_loss, "giou_ciou": metrics.segmentation_scores,
               "clipped_policy_loss": losses.clipped_policy_loss, "on_target_weights": geometry.box_on_target,
               "score_function_gradient": losses.group_advantages, "tool_gradient": toy.exact_gradient}[name]
    check = getattr(exercises, f"check_{name}")
    path = tmp_path / "pasted.py"
    path.write_text(_pasted(library))
    spec = importlib.util.spec_from_file_location("pasted", path)
    pasted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pasted)
    namespace = {"torch": torch, "losses": losses}
    exec(BORROWED[name], namespace)
    for answer, says in [(library, "is grto_lib's own"), (functools.partial(library), "is grto_lib's own"),
                         (getattr(pasted, library.__name__), "is a copy of grto_lib's"),
                         (namespace[name], "grto_lib's")]:
        with pytest.raises(exercises.CheckFailed, match=says):
            check(answer)


def _ge_half(valid, boxes, masks):
    """on_target_weights with box IoU >= 0.5 (and the tight box right)."""
    hits = []
    for ok, box, mask in zip(valid, boxes.tolist(), masks):
        rows, columns = torch.nonzero(mask, as_tuple=True)
        tight = [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1] if len(rows) else [0, 0, 0, 0]
        inter = max(0, min(box[2], tight[2]) - max(box[0], tight[0])) * max(0, min(box[3], tight[3]) - max(box[1],
                                                                                                            tight[1]))
        union = (box[2] - box[0]) * (box[3] - box[1]) + (tight[2] - tight[0]) * (tight[3] - tight[1]) - inter
        hits.append(bool(ok) and union > 0 and inter / union >= 0.5)
    hits = torch.tensor(hits, dtype=torch.float32)
    return hits / hits.sum() if hits.sum() else hits


@functools.cache
def _solution(name):
    """The instructor's solution of an exercise, from its source notebook."""
    assignment = next(a for a, names in ASSIGNMENTS.items() if name in names)
    notebook = nbformat.read(ROOT / "course" / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    namespace = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and not cell.metadata["nbgrader"]["grade"]:
            exec(cell.source, namespace)
    return namespace[name]


def _grads_of(loss_of, problem, picks):
    return -torch.cat([g.flatten() for g in torch.autograd.grad(loss_of(problem, picks), problem.parameters())])


MASKED = lambda ratio, a, e: torch.min(ratio * a[:, None], ratio.clamp(1 - e, 1 + e) * a[:, None])  # noqa: E731
# A typical wrong answer of each exercise and the hint its check must lead with.
WRONG = [
    ("group_advantages", lambda r, g: (r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)).flatten(),
     "divide by the group's std"),
    ("group_advantages", lambda r, g: (r - r.mean()) / (r.std() + 1e-4), "not the batch's"),
    ("group_advantages", lambda r, g: ((r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)) / (
        r.view(-1, g).std(1, unbiased=False, keepdim=True) + 1e-4)).flatten(), "use the unbiased std"),
    ("group_advantages", lambda r, g: ((r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)) / r.view(-1, g).std(
        1, keepdim=True)).flatten(), "add eps = 1e-4"),
    ("score_function_gradient", lambda l, p, r: (r[:, None] * F.one_hot(p, len(l))).mean(0), "you left out - pi"),
    ("score_function_gradient", lambda l, p, r: -(r[:, None] * (F.one_hot(p, len(l)) - l.softmax(0))).mean(0),
     "the sign is flipped"),
    ("score_function_gradient", lambda l, p, r: (r[:, None] * (F.one_hot(p, len(l)) - l.softmax(0))).sum(0),
     "do not sum"),
    ("score_function_gradient", lambda l, p, r: (r[:, None] * l.softmax(0)[p, None] * (F.one_hot(p, len(l))
                                                                                       - l.softmax(0))).mean(0),
     "grad pi_k / pi_k"),
    ("tool_gradient", lambda problem, picks: _grads_of(lambda q, k: toy.per_prompt_tool_loss(q).mean(), problem, picks),
     "ignores which prompts were sampled"),
    ("tool_gradient", lambda problem, picks: _grads_of(
        lambda q, k: (q.policy_probs[k] * toy.per_prompt_tool_loss(q)[k]).mean(), problem, picks), "counts it twice"),
    ("tool_gradient", lambda problem, picks: _grads_of(lambda q, k: toy.per_prompt_tool_loss(q)[k].sum(), problem,
                                                       picks), "do not sum"),
    ("tool_gradient", lambda problem, picks: -_grads_of(lambda q, k: toy.per_prompt_tool_loss(q)[k].mean(), problem,
                                                        picks), "the sign is flipped"),
    ("tool_gradient", lambda problem, picks: torch.zeros(3), "return the gradient flattened"),
    ("tool_loss_weights", lambda a, v, s: torch.full_like(a, 1 / len(a)), "an invalid rollout"),
    ("tool_loss_weights", lambda a, v, s: v.float() / v.float().sum(), "every weight is 0"),
    ("tool_loss_weights", lambda a, v, s: torch.where(v, a, 0.0) / torch.where(v, a, 0.0).sum() if s == "advantage"
     else _solution("tool_loss_weights")(a, v, s), "clamp negative advantages"),
    ("parse_box", lambda v: tuple(map(float, v)) if isinstance(v, list) and len(v) == 4 and all(
        isinstance(x, (int, float)) for x in v) else None, "it is not a valid box: parse_box([30, 20, 10, 40])"),
    ("parse_box", lambda v: None if _solution("parse_box")(v) is None else tuple(map(float, v)),
     "clamp each coordinate to +-COORD_LIMIT = 1e+06"),
    ("parse_box", lambda v: None if _solution("parse_box")(v) is None else list(_solution("parse_box")(v)),
     "a tuple of 4 floats"),
    ("tool_loss", lambda l, t, i=None: _solution("tool_loss")(l, t, i).mean(), "one loss per rollout"),
    ("tool_loss", lambda l, t, i=None: _solution("tool_loss")(l, t), "leave the ignore pixels out"),
    ("tool_loss", lambda l, t, i=None: F.binary_cross_entropy_with_logits(l, t.float(), reduction="none").mean(
        (1, 2)) + 1 - 2 * (l.sigmoid() * t).sum((1, 2)) / (l.sigmoid().sum((1, 2)) + t.sum((1, 2))), "add smooth = 1"),
    ("tool_loss", lambda l, t, i=None: F.binary_cross_entropy_with_logits(l, t.float(), reduction="none").mean((1, 2)),
     "BCE only"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: losses_.mean(), "leave out the rollouts that are not usable"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: (losses_ * u).sum() / u.sum(), "weight each rollout by rho_i"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: (torch.softmax((r - p).masked_fill(~u, -math.inf), 0)
                                                       * losses_).sum(), "upside down"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: (torch.exp(p - r) * u * losses_).sum() / u.sum(),
     "divide by the sum of the weights"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: (torch.exp(p) * u * losses_).sum() / (torch.exp(p) * u).sum(),
     "leaves the float range"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: (torch.softmax((p - r).masked_fill(~u, -math.inf), 0)
                                                       * losses_).sum(), "return 0, not NaN"),
    ("off_policy_tool_loss", lambda *args: _solution("off_policy_tool_loss")(*args).item(), "graph of tool_losses"),
    ("clipped_policy_loss", lambda l, o, a, m, e=0.2: -((torch.max(torch.exp(l - o) * a[:, None], torch.exp(
        l - o).clamp(1 - e, 1 + e) * a[:, None]) * m).sum(1) / m.sum(1)).mean(), "not the max"),
    ("clipped_policy_loss", lambda l, o, a, m, e=0.2: -((torch.exp(l - o) * a[:, None] * m).sum(1) / m.sum(1)).mean(),
     "clip the ratio"),
    ("clipped_policy_loss", lambda l, o, a, m, e=0.2: -(MASKED(torch.exp(l - o), a, e) * m).sum() / m.sum(),
     "each completion's tokens first"),
    ("clipped_policy_loss", lambda l, o, a, m, e=0.2: -MASKED(torch.exp(l - o), a, e).mean(1).mean(),
     "multiply by mask"),
    ("clipped_policy_loss", lambda *args: -_solution("clipped_policy_loss")(*args), "the objective negated"),
    ("clipped_policy_loss", lambda l, *args: _solution("clipped_policy_loss")(l.detach(), *args),
     "a gradient w.r.t. logps"),
    ("on_target_weights", _ge_half, "IoU > 0.5, strictly"),
    ("on_target_weights", lambda v, b, t: _solution("on_target_weights")(torch.ones_like(v), b, t),
     "an invalid rollout gets weight 0"),
    ("on_target_weights", lambda v, b, t: v.float() / v.sum(), "whose box matches the target's"),
    ("on_target_weights", lambda v, b, t: (lambda w: w if w.sum() > 0 else w / w.sum())(
        _solution("on_target_weights")(v, b, t)), "not NaN"),
    ("micro_batch_loss", lambda p, l, w, lam, k: p + lam * (w * l).sum(), "divide the tool term by accumulation_steps"),
    ("micro_batch_loss", lambda p, l, w, lam, k: (p + lam * (w * l).sum()) / k, "already divided"),
    ("micro_batch_loss", lambda p, l, w, lam, k: p + lam * l.mean() / k, "not their plain mean"),
    ("pass_at_k", lambda c, k: (1 - (1 - c.float().mean(1)) ** k).mean().item(), "without replacement"),
    ("pass_at_k", lambda c, k: c.any(1).float().mean().item(), "that is pass@n"),
    ("pass_at_k", lambda c, k: c.float().mean().item(), "that is pass@1"),
    ("paired_difference", lambda a, b: ((a - b).mean(), math.sqrt((a.var() + b.var()) / len(a))), "are paired"),
    ("paired_difference", lambda a, b: ((a - b).mean(), (a - b).std(unbiased=False) / len(a) ** 0.5), "unbiased std"),
    ("paired_difference", lambda a, b: ((a - b).mean(), (a - b).std()), "divide the std by sqrt(n)"),
    ("paired_difference", lambda a, b: ((b - a).mean(), (a - b).std() / len(a) ** 0.5), "the difference is a - b"),
]


def _surrogate(detach=True, tool_weight=None, reduce="mean", policy=True):
    """grto_surrogate, or a typical wrong variant of it."""
    def surrogate(logps, old_logps, mask, tool_logits, targets, other_rewards, group_size, weight):
        reward = other_rewards + exercises.soft_mask_reward(tool_logits, targets)
        advantages = losses.group_advantages(reward.detach() if detach else reward, group_size)
        tool = getattr(losses.tool_loss(tool_logits, targets), reduce)()
        loss = (tool_weight or weight) * tool + (losses.clipped_policy_loss(logps, old_logps, advantages, mask)
                                                 if policy else 0 * logps.sum())
        return weight * loss if tool_weight else loss
    return surrogate


WRONG += [
    ("grto_surrogate", _surrogate(detach=False), "through the advantages"),
    ("grto_surrogate", _surrogate(tool_weight=1.0), "the policy's gradient changes with tool_weight"),
    ("grto_surrogate", _surrogate(reduce="sum"), "do not sum them"),
    ("grto_surrogate", _surrogate(policy=False), "get no gradient: add the clipped policy loss"),
    ("grto_surrogate", lambda *args: _surrogate()(*args).item(), "must return a scalar tensor with a gradient"),
    ("giou_ciou", lambda p, g, i: _solution("giou_ciou")(p, g, [None] * len(g)), "leave the ignore pixels out"),
    ("giou_ciou", lambda p, g, i: _solution("giou_ciou")(*zip(*[s for s in zip(p, g, i) if s[0] is not None])),
     "never drop it"),
    ("giou_ciou", lambda p, g, i: (_solution("giou_ciou")(p, g, i)[0],) * 2, "not the mean of the ratios"),
    ("giou_ciou", lambda p, g, i: _solution("giou_ciou")(p, g, i)[::-1], "you swapped them"),
]


@pytest.mark.parametrize("name,answer,hint", WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_each_check_leads_with_the_hint_for_a_typical_wrong_answer(name, answer, hint):
    with pytest.raises(exercises.CheckFailed) as failure:
        getattr(exercises, f"check_{name}")(answer)
    assert hint in str(failure.value), str(failure.value)
