"""The course (course/, nbgrader): four assignments, one per notebook, graded by nbgrader itself.

Autograded (tests/course_attacks.py builds the submissions): the solutions score full marks with no warning and no
flag; the release as handed out scores 0, each check cell showing its hint alone; every kind of attempt to get the
marks without the work scores 0, refused or failing the hidden tests, and is flagged where it cannot be refused;
the instructor notes' table is what autograde gives; the feedback holds no hidden test. Without nbgrader: each check
names the mistake of a typical wrong answer, the hidden tests catch them too, the release holds neither the
solutions nor the hidden tests, which are those course/hidden_tests.py writes, and reading the code finds what it
should and nothing in the solutions."""
import functools
import importlib.util
import inspect
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from grto_lib import geometry, losses, metrics, rewards
from grto_lib.course import exercises
from grto_lib.tinyworld import toy
from tests import course_attacks as attacks

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "course"))
import grading  # noqa: E402  (course/grading.py, as course/nbgrader_config.py imports it)
import hidden_tests  # noqa: E402

ASSIGNMENTS = attacks.ASSIGNMENTS
EXERCISES = attacks.EXERCISES
KINDS = attacks.kinds()
ATTACKS = [k for k, kind in KINDS.items() if not kind.copied]

# What a student who borrows grto_lib's implementation hands in, checked in the kernel: a wrapper calling it, under
# another name, or through a helper.
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
    "parse_box": attacks._pasted(rewards.parse_box),
    "tool_loss": "import functools\nfrom grto_lib import losses\ntool_loss = functools.partial(losses.tool_loss)",
    "clipped_policy_loss": """
from concurrent.futures import ThreadPoolExecutor
from grto_lib import losses as L
def clipped_policy_loss(logps, old_logps, advantages, mask, epsilon=0.2):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(L.clipped_policy_loss, logps, old_logps, advantages, mask, epsilon).result()""",
    "on_target_weights": """
from grto_lib.geometry import box_on_target
def on_target_weights(valid, boxes, target_masks):
    hits = torch.as_tensor(box_on_target(boxes.numpy(), target_masks.numpy()))
    return losses.tool_loss_weights(torch.zeros(len(valid)), valid, "on_target", hits)""",
    "giou_ciou": """
import sys
def _scores(preds, gts, ignores):
    sys.setprofile(None)
    return sys.modules["grto_lib.metrics"].segmentation_scores(preds, gts, ignores)
def giou_ciou(preds, gts, ignores):
    scores = _scores(preds, gts, ignores)
    return scores["giou"], scores["ciou"]""",
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> attacks.Graded:
    """Every kind of submission of tests/course_attacks.py, autograded by nbgrader in copies of course/."""
    return attacks.autograde(KINDS, tmp_path_factory.mktemp("graded"))


def _errors(outputs: list) -> list:
    return [o for o in outputs if o["output_type"] == "error"]


def _hint_alone(error) -> bool:
    """Whether a failed check's output shows its message alone, in lines nbgrader's Validate dialog shows whole."""
    return " ".join(error["traceback"]).split() == error["evalue"].split() and max(map(len, error["traceback"])) <= 87


def test_make_course_releases_the_four_assignments_and_warns_of_nothing(graded):
    assert "WARNING" not in graded.generated, graded.generated
    release = graded.courses["honest"] / "release"
    assert sorted(p.name for p in release.iterdir()) == sorted(ASSIGNMENTS)
    assert sorted(graded.scores["honest"]) == sorted(EXERCISES)
    assert len(EXERCISES) == 14 and "on_target_weights" in EXERCISES


def test_release_and_fetch_from_the_repository_root_warn_of_nothing(graded, tmp_path):
    """On a fresh machine, Formgrader's release and a student's fetch, from the repository root: the exchange is
    created with the permissions release wants, so it changes none and says nothing, and the fetched copy lands in
    a folder git ignores."""
    repository, home = tmp_path / "repository", str(tmp_path / "home")
    shutil.copytree(graded.courses["honest"], repository / "course",
                    ignore=shutil.ignore_patterns("submitted", "autograded", "feedback"))
    shutil.copy(ROOT / "nbgrader_config.py", repository)
    released = attacks.printed(attacks.nbgrader(repository, "release_assignment", "a1_derivation", HOME=home))
    fetched = attacks.printed(attacks.nbgrader(repository, "fetch_assignment", "a1_derivation", HOME=home))
    assert "WARNING" not in released + fetched, released + fetched
    assert (repository / "a1_derivation" / "a1_derivation.ipynb").is_file()
    ignored = subprocess.run(["git", "check-ignore", "-q", "a1_derivation/a1_derivation.ipynb"], cwd=ROOT)
    assert ignored.returncode == 0


def test_the_solutions_earn_full_marks_with_no_warning_and_no_flag(graded):
    assert graded.scores["honest"] == {e: 2 for e in EXERCISES}
    for student in ("honest", "unanswered"):  # no checksum, kernel transport or gradebook warning
        assert "WARNING" not in graded.logs[student] and "Warning" not in graded.logs[student], graded.logs[student]
    outputs = graded.check_outputs("honest")
    assert all(not _errors(o) and not attacks.flagged(o) for o in outputs.values()), outputs


def test_the_unanswered_release_scores_zero_with_the_hint_alone(graded):
    assert graded.scores["unanswered"] == {e: 0 for e in EXERCISES}
    for name, outputs in graded.check_outputs("unanswered").items():
        error, = _errors(outputs)
        assert error["ename"] == "CheckFailed"
        assert error["evalue"].startswith(f"{name} is not implemented yet: replace `raise NotImplementedError()`")
        assert _hint_alone(error), error


# What each attack's check cells say, at least: refused, or failing a hidden test; and what is flagged.
SAYS = {"library": "grto_lib's", "pasted": "is a copy of grto_lib's", "untyped": "is a copy of grto_lib's",
        "helper": "grto_lib's", "patched_checks": "fails hidden test 1 of", "patched_library": "grto_lib's",
        "lookup_table": "", "evasions": "grto_lib's", "reloaded": "", "private": "grto_lib's",
        "private_scores": "grto_lib's"}
FLAGS = {"patched_checks": "uses setattr", "patched_library": "assigns grto_lib.course.exercises._implementations",
         "lookup_table": "", "evasions": "", "reloaded": "", "private": "uses grto_lib.", "private_scores": "uses "
         "grto_lib.evaluate._scores", "trl": "uses trl.trainer.grpo_trainer.GRPOTrainer._compute_loss"}


@pytest.mark.parametrize("student", [a for a in ATTACKS if a != "trl"])
def test_every_attempt_without_the_work_scores_nothing(graded, student):
    kind = KINDS[student]
    assert graded.scores[student] and set(graded.scores[student].values()) == {0}, graded.scores[student]
    outputs = graded.check_outputs(student)
    for exercise in kind.answers:
        errors = _errors(outputs[exercise])
        assert errors and SAYS[student] in errors[0]["evalue"] and _hint_alone(errors[0]), (exercise, errors)
        if "hidden test" in errors[0]["evalue"]:  # a hidden test's message shows no argument and no value
            assert not re.search(r"returned|expected|called as", errors[0]["evalue"]), errors[0]["evalue"]
        if student in FLAGS:
            notes = [o["text"] for o in outputs[exercise] if attacks.flagged([o])]
            assert notes and FLAGS[student] in notes[0], (exercise, notes)


def test_what_cannot_be_refused_is_flagged(graded):
    """TRL's own loss computes clipped_policy_loss, and grto_lib cannot disable TRL: it scores, flagged."""
    assert graded.scores["trl"]["clipped_policy_loss"] == 2
    notes = [o["text"] for o in graded.check_outputs("trl")["clipped_policy_loss"] if attacks.flagged([o])]
    assert notes and FLAGS["trl"] in notes[0]
    assert f"Flagged for the instructor (the score is unchanged): clipped_policy_loss {FLAGS['trl']}" in \
        graded.logs["trl"]


def test_patching_the_kernel_passes_there_and_nowhere_else(graded):
    """A solution cell patched every check of grto_lib.course.exercises to pass: the kernel printed "correct" under
    each, the grader failed each on its hidden tests, and logged it."""
    for exercise, outputs in graded.check_outputs("patched_checks").items():
        assert "fails hidden test 1 of" in outputs[0]["evalue"], outputs
        assert any(o.get("text") == "correct\n" for o in outputs), outputs
    assert graded.logs["patched_checks"].count("passed in the student's kernel, not outside it") == len(EXERCISES)


def test_the_instructor_notes_hold_the_table_autograde_gives(graded):
    committed = attacks.NOTES.read_text().split(attacks.BEGIN_TABLE)[1].split(attacks.END_TABLE)[0].strip()
    assert attacks.table(graded, KINDS) == committed, "regenerate it: .venv/bin/python -m tests.course_attacks"


def test_feedback_holds_no_hidden_test(graded):
    regions = [cell.source.split(grading.BEGIN)[1].split(grading.END)[0]
               for path in (ROOT / "course" / "source").glob("*/*.ipynb")
               for cell in nbformat.read(path, as_version=4).cells if grading.BEGIN in cell.source]
    hidden = [line.strip() for region in regions for line in region.splitlines() if len(line.strip()) > 12]
    assert len(regions) == len(EXERCISES) and len(hidden) > len(EXERCISES)
    pages = []
    for course in set(graded.courses.values()):
        output = attacks.printed(attacks.nbgrader(course, "generate_feedback", "*"))
        assert "WARNING" not in output, output
        pages += [p.read_text() for p in (course / "feedback").rglob("*.html")]
    assert len(pages) == sum(1 for s, c in graded.courses.items() for a in ASSIGNMENTS
                             if (c / "autograded" / s / a).is_dir())
    for page in pages:
        text = re.sub(r"<[^>]+>", "", page).replace("&quot;", '"').replace("&#39;", "'")
        assert "HIDDEN TESTS" not in text and "check_hidden" not in text and "want=" not in text
        assert not [line for line in hidden if line in text or line in page]
    assert any("fails hidden test" in page for page in pages)  # the grader's verdicts are kept
    assert any("Flagged for the instructor" in page for page in pages)


def test_the_release_holds_no_solution_and_no_hidden_test(graded):
    course = graded.courses["unanswered"]
    for assignment, names in ASSIGNMENTS.items():
        source = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
        release = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
        released = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release.cells}
        hidden = [c for c in source.cells if "### BEGIN HIDDEN TESTS" in c.source]
        assert len(hidden) == len(names), f"{assignment}: an exercise without hidden tests"
        for cell in source.cells:
            text = released[cell.metadata["nbgrader"]["grade_id"]]
            if cell.metadata["nbgrader"]["solution"]:
                assert "BEGIN SOLUTION" in cell.source and "BEGIN SOLUTION" not in text
                assert text.splitlines()[0] == cell.source.splitlines()[0] and "raise NotImplementedError()" in text
            if cell in hidden:
                assert "HIDDEN TESTS" not in text and "check_hidden" not in text and "want" not in text
                assert text == grading.without_hidden_tests(cell.source)


def test_the_hidden_tests_are_those_the_generator_writes():
    """course/hidden_tests.py, run again with the committed seed (34, or a class's own), writes the cells as
    committed: their values are the references' on today's cases, and the solutions pass them."""
    for path in sorted((ROOT / "course" / "source").glob("*/*.ipynb")):
        committed = nbformat.read(path, as_version=4)
        seed = grading.hidden_test(next(c for c in committed.cells if "check_hidden" in c.source)).seed
        rewritten = hidden_tests.rewrite(nbformat.read(path, as_version=4), seed)
        assert [c.source for c in rewritten.cells] == [c.source for c in committed.cells], path


def _scanned(exercise: str, source: str | None = None) -> grading.Findings:
    """What reading the code finds when ``source`` (by default the solution) answers ``exercise`` in its source
    notebook."""
    assignment = next(a for a, names in ASSIGNMENTS.items() if exercise in names)
    notebook = nbformat.read(ROOT / "course" / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == exercise and source is not None:
            cell.source = source
    codes, tests = grading.read_notebook(notebook)
    return grading.scan(exercise, exercise, codes, grading.imports(codes))


def test_reading_the_solutions_finds_nothing():
    for exercise in EXERCISES:
        assert _scanned(exercise) == grading.Findings(), exercise


@pytest.mark.parametrize("student", ["library", "pasted", "untyped", "helper", "patched_library", "evasions",
                                     "reloaded"])
def test_reading_the_code_refuses_or_flags_each_borrowing(student):
    for exercise, source in KINDS[student].answers.items():
        found = _scanned(exercise, source)
        assert found.refusal or found.flags, (student, exercise)


def test_reading_the_code_flags_what_it_cannot_refuse():
    patched = "from grto_lib.course import exercises\nexercises.check_pass_at_k = lambda *a, **k: None\n" \
              "def pass_at_k(correct, k):\n    return 0.5"
    assert _scanned("pass_at_k", patched) == grading.Findings(None, [
        "assigns grto_lib.course.exercises.check_pass_at_k"])
    private = "from grto_lib import evaluate\ndef giou_ciou(preds, gts, ignores):\n" \
              "    return getattr(evaluate, '_sc' + 'ores')(preds, gts, ignores, None, False)"
    assert _scanned("giou_ciou", private) == grading.Findings(None, ["uses grto_lib.evaluate"])
    named = private.replace("'_sc' + 'ores'", "'_scores'")
    assert _scanned("giou_ciou", named) == grading.Findings(None, ["uses grto_lib.evaluate._scores"])
    used = _scanned("grto_surrogate", "def grto_surrogate(*args):\n    return losses.tool_loss_weights(*args)")
    assert used.flags == ["uses grto_lib.losses.tool_loss_weights"] and used.refusal is None


def test_no_function_of_grto_lib_course_passes_a_check():
    """The checks hold no reference a student could call: no function of their modules is an answer."""
    from grto_lib.course import grading as hidden_grading, rules

    functions = [f for module in (exercises, rules, hidden_grading) for f in vars(module).values()
                 if inspect.isfunction(f) and f.__module__ == module.__name__]
    assert not set(EXERCISES) & {f.__name__ for f in functions}
    for name in EXERCISES:
        for function in functions:
            with pytest.raises(exercises.CheckFailed):
                getattr(exercises, f"check_{name}")(function)


@pytest.mark.parametrize("name", sorted(BORROWED))
def test_every_form_of_borrowing_is_refused_in_the_kernel(name, tmp_path):
    library = {"group_advantages": losses.group_advantages, "tool_loss_weights": losses.tool_loss_weights,
               "parse_box": rewards.parse_box, "tool_loss": losses.tool_loss, "giou_ciou": metrics.segmentation_scores,
               "clipped_policy_loss": losses.clipped_policy_loss, "on_target_weights": geometry.box_on_target,
               "score_function_gradient": losses.group_advantages, "tool_gradient": toy.exact_gradient}[name]
    check = getattr(exercises, f"check_{name}")
    path = tmp_path / "pasted.py"
    path.write_text(attacks.FUTURE + attacks._pasted(library))
    spec = importlib.util.spec_from_file_location("pasted", path)
    pasted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pasted)
    untyped = tmp_path / "untyped.py"
    untyped.write_text(attacks._pasted(library, untyped=True))
    spec = importlib.util.spec_from_file_location("untyped", untyped)
    light = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(light)
    namespace = {"torch": torch, "losses": losses}
    exec(BORROWED[name], namespace)
    for answer, says in [(library, "is grto_lib's own"), (functools.partial(library), "is grto_lib's own"),
                         (getattr(pasted, library.__name__), "is a copy of grto_lib's"),
                         (getattr(light, library.__name__), "is a copy of grto_lib's"),
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


_solution = functools.cache(attacks._solution)


def _dice_over_the_batch(logits, targets):
    """tool_loss with Dice's sums over the whole batch."""
    p, t = torch.sigmoid(logits), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((1, 2))
    return bce + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)


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
    ("group_advantages", lambda r, g: ((r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)) / (r.view(-1, g).std(
        1, keepdim=True) + 1e-8)).flatten(), "with a smaller eps (1e-8) or none"),
    ("group_advantages", lambda r, g: (r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True)) / (r.view(-1, g).std(
        1, keepdim=True) + 1e-4), "return shape [4], not [2, 2]: the values are right"),
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
    ("tool_loss_weights", lambda a, v, s: exercises._selected_weights(v & (a >= 0)) if s == "positive"
     else _solution("tool_loss_weights")(a, v, s), "positive means A_i > 0, strictly"),
    ("parse_box", lambda v: tuple(map(float, v)) if isinstance(v, list) and len(v) == 4 and all(
        isinstance(x, (int, float)) for x in v) else None, "it is not a valid box: parse_box([30, 20, 10, 40])"),
    ("parse_box", lambda v: None if _solution("parse_box")(v) is None else tuple(map(float, v)),
     "clamp each coordinate to +-COORD_LIMIT = 1e+06"),
    ("parse_box", lambda v: None if _solution("parse_box")(v) is None else list(_solution("parse_box")(v)),
     "a tuple of 4 floats"),
    ("parse_box", lambda v: None if _solution("parse_box")(v) is None else tuple(
        int(x) if x == int(x) else x for x in _solution("parse_box")(v)), "convert each number with float() (yours "
                                                                          "holds int)"),
    ("tool_loss", lambda l, t, i=None: _solution("tool_loss")(l, t, i).mean(), "one loss per rollout"),
    ("tool_loss", lambda l, t, i=None: _solution("tool_loss")(l, t), "leave the ignore pixels out"),
    ("tool_loss", lambda l, t, i=None: _solution("tool_loss")(l, t, i if i is None else ~i),
     "w = 1 - ignore: you kept only the ignore pixels"),
    ("tool_loss", lambda l, t, i=None: _dice_over_the_batch(l, t), "compute Dice per rollout"),
    ("tool_loss", lambda l, t, i=None: F.binary_cross_entropy_with_logits(l, t.float(), reduction="none").mean(
        (1, 2)) + 1 - 2 * (l.sigmoid() * t).sum((1, 2)) / (l.sigmoid().sum((1, 2)) + t.sum((1, 2))), "add smooth = 1"),
    ("tool_loss", lambda l, t, i=None: F.binary_cross_entropy_with_logits(l, t.float(), reduction="none").mean((1, 2)),
     "BCE only"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: losses_.mean(), "leave out the rollouts that are not usable"),
    ("off_policy_tool_loss", lambda losses_, p, r, u: (torch.softmax(p - r, 0) * u * losses_).sum(),
     "leave the unusable rollouts out of the normalisation too"),
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
    ("clipped_policy_loss", lambda l, o, a, m, e=0.2: -((torch.min(torch.exp(l - o) * a[:, None], (torch.exp(
        l - o) * a[:, None]).clamp(1 - e, 1 + e)) * m).sum(1) / m.sum(1)).mean(), "clip the ratio, not its product"),
    ("clipped_policy_loss", lambda l, o, a, m, e=0.2: -((MASKED(l / o, a, e) * m).sum(1) / m.sum(1)).mean(),
     "log-probabilities subtract"),
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
    ("micro_batch_loss", lambda p, l, w, lam, k: p + (w * l).sum() / k, "multiply the tool term by tool_weight"),
    ("pass_at_k", lambda c, k: (1 - (1 - c.float().mean(1)) ** k).mean().item(), "without replacement"),
    ("pass_at_k", lambda c, k: c.any(1).float().mean().item(), "that is pass@n"),
    ("pass_at_k", lambda c, k: c.float().mean().item(), "that is pass@1"),
    ("pass_at_k", lambda c, k: _solution("pass_at_k")(c, k) + 0.01, "close, but off by up to 0.01"),
    ("paired_difference", lambda a, b: ((a - b).mean(), math.sqrt((a.var() + b.var()) / len(a))), "are paired"),
    ("paired_difference", lambda a, b: ((a - b).mean(), (a - b).std(unbiased=False) / len(a) ** 0.5), "unbiased std"),
    ("paired_difference", lambda a, b: ((a - b).mean(), (a - b).std()), "divide the std by sqrt(n)"),
    ("paired_difference", lambda a, b: ((a - b).mean(), (a - b).std() / len(a)), "not by n"),
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


@pytest.mark.parametrize("name,answer,hint", WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_the_hidden_tests_catch_each_typical_wrong_answer_too(name, answer, hint):
    cell = next(c for p in (ROOT / "course" / "source").glob("*/*.ipynb") for c in nbformat.read(p, 4).cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == f"check_{name}")
    test = grading.hidden_test(cell)
    with pytest.raises(exercises.CheckFailed, match="fails hidden test|raised|could not be compared"):
        exercises.check_hidden(answer, name, test.seed, test.want)


def test_a_wrong_tensor_is_shown_by_its_values():
    """A result too large to print whole shows its first values and where it differs most, not only its shape."""
    with pytest.raises(exercises.CheckFailed) as failure:
        exercises.check_tool_gradient(lambda problem, picks: 2 * _solution("tool_gradient")(problem, picks))
    assert re.search(r"returned <Tensor of shape \[64\]: -?\d\.\d+, -?\d", str(failure.value)), str(failure.value)
    assert re.search(r"differ most at index \[\d+\]: -?\d\.\d+ instead of -?\d\.\d+", str(failure.value))
