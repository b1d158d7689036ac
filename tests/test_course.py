"""The graded exercises (course/, nbgrader): the solutions earn full marks, the student release scores zero on every
exercise with a message that says what is wrong, and the release holds no solution."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "grto_exercises"
CHECKS = ["check_group_advantages", "check_tool_loss_weights", "check_parse_box", "check_grto_surrogate"]


def _nbgrader(course, *args):
    """``nbgrader ARGS`` run in ``course`` with the venv's scripts on PATH (nbgrader calls ``alembic`` by name)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """A copy of course/ with the release generated and two submissions autograded: the instructor's solutions
    and the release as handed out, unanswered. Returns (course folder, {student: {grade cell: score}})."""
    from nbgrader.api import Gradebook

    course = tmp_path_factory.mktemp("course")
    shutil.copytree(ROOT / "course", course, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("release", "submitted", "autograded", "feedback", "gradebook.db"))
    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")
    submissions = {"solutions": course / "source", "unanswered": course / "release"}
    for student, folder in submissions.items():
        target = course / "submitted" / student / ASSIGNMENT
        target.mkdir(parents=True)
        shutil.copy(folder / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", target)
    _nbgrader(course, "autograde", ASSIGNMENT, "--create", "--force")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {student: {g.name: (g.score, g.max_score) for g in
                            gradebook.find_submission(ASSIGNMENT, student).notebooks[0].grades}
                  for student in submissions}
    return course, scores


def test_the_solutions_earn_full_marks(graded):
    _, scores = graded
    assert sorted(scores["solutions"]) == sorted(CHECKS)
    assert all(score == maximum == 2 for score, maximum in scores["solutions"].values()), scores["solutions"]


def test_the_unanswered_release_scores_zero_on_every_exercise_saying_what_is_wrong(graded):
    course, scores = graded
    assert {name: score for name, (score, _) in scores["unanswered"].items()} == {name: 0 for name in CHECKS}
    notebook = json.loads((course / "autograded" / "unanswered" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
    for cell in notebook["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in CHECKS:
            errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
            function = grade_id.removeprefix("check_")
            assert errors and errors[0]["ename"] == "AssertionError", cell["outputs"]
            assert errors[0]["evalue"].startswith(f"{function} is not implemented yet: replace `raise "
                                                  f"NotImplementedError()`"), errors[0]["evalue"]


def test_the_release_holds_no_solution(graded):
    course, _ = graded
    source = nbformat.read(course / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    release = nbformat.read(course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    solutions = [c for c in source.cells if c.metadata.get("nbgrader", {}).get("solution")]
    released = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release.cells if "nbgrader" in c.metadata}
    assert len(solutions) == 4
    for cell in solutions:
        text = released[cell.metadata["nbgrader"]["grade_id"]]
        assert "BEGIN SOLUTION" in cell.source and "BEGIN SOLUTION" not in text
        assert "raise NotImplementedError()" in text and text.splitlines()[0] == cell.source.splitlines()[0]


def _message(check, answer) -> str:
    with pytest.raises(AssertionError) as failure:
        check(answer)
    return str(failure.value)


def test_each_check_names_the_mistake_of_a_typical_wrong_answer():
    import torch

    from grto_lib import exercises, losses

    def centred_only(rewards, group_size):
        grouped = rewards.view(-1, group_size)
        return (grouped - grouped.mean(1, keepdim=True)).flatten()

    def leaky_surrogate(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size, weight):
        rewards = other_rewards + exercises.soft_mask_reward(tool_logits, targets)  # no stop-gradient
        advantages = losses.group_advantages(rewards, group_size)
        tool = losses.tool_loss(tool_logits, targets).mean()
        return losses.clipped_policy_loss(logps, old_logps, advantages, completion_mask) + weight * tool

    assert "do not divide by the group's std" in _message(exercises.check_group_advantages, centred_only)
    assert "an invalid rollout has no prompt" in _message(exercises.check_tool_loss_weights,
                                                          lambda a, v, s: torch.full_like(a, 1 / len(a)))
    assert "parse_box([30, 20, 10, 40]) (x2 < x1) returned (30, 20, 10, 40), expected None" in _message(
        exercises.check_parse_box, lambda v: tuple(v) if isinstance(v, list) and len(v) == 4 else None)
    assert "through the advantages" in _message(exercises.check_grto_surrogate, leaky_surrogate)
    for check, reference in [(exercises.check_group_advantages, losses.group_advantages),
                             (exercises.check_tool_loss_weights, losses.tool_loss_weights),
                             (exercises.check_grto_surrogate, exercises.grto_surrogate)]:
        check(reference)  # grto_lib's own functions pass
