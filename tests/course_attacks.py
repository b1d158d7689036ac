"""Submissions that try to get the course's marks without the work, graded by nbgrader itself, and the table of
their scores in the instructor notes (course/INSTRUCTORS.md):

    .venv/bin/python -m tests.course_attacks     # autogrades every kind below (2 to 5 minutes on 2 cores)

rewrites the table between the notes' markers; tests/test_course.py grades the same submissions and checks the
committed table against its own. Each kind is one student who answers, in all four assignments, the exercises the
attack applies to (the others left as released); ``kinds()`` says what each one hands in.
"""
from __future__ import annotations

import ast
import base64
import copy
import dataclasses
import inspect
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import torch

from grto_lib import geometry, losses, metrics, rewards
from grto_lib.course import exercises
from grto_lib.tinyworld import toy

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "course" / "INSTRUCTORS.md"
BEGIN_TABLE, END_TABLE = "<!-- the table: python -m tests.course_attacks -->", "<!-- end of the table -->"


def assignments() -> dict[str, list[str]]:
    """{assignment: its exercises, in order}, from the source notebooks' solution cells."""
    found = {}
    for path in sorted((ROOT / "course" / "source").glob("*/*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        found[path.stem] = [c.metadata.nbgrader["grade_id"] for c in cells
                            if c.metadata.get("nbgrader", {}).get("solution")]
    return found


ASSIGNMENTS = assignments()
EXERCISES = [e for names in ASSIGNMENTS.values() for e in names]
MODULES = {losses: "losses", geometry: "geometry", metrics: "metrics", rewards: "rewards", toy: "toy"}


def _signature(exercise: str) -> str:
    """The exercise's ``def`` line as released."""
    assignment = next(a for a, names in ASSIGNMENTS.items() if exercise in names)
    notebook = nbformat.read(ROOT / "course" / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == exercise)
    return cell.source.splitlines()[0]


def _arguments(exercise: str) -> str:
    return _signature(exercise).split("(", 1)[1].rsplit(")", 1)[0]


# The exercises grto_lib implements, answered with it: the functions used, and the answer's expression, {0}, {1}
# standing for them (the expression reads the exercise's arguments).
LIBRARY = {
    "group_advantages": ([losses.group_advantages], "{0}(rewards, group_size)"),
    "score_function_gradient": ([losses.clipped_policy_loss], "(lambda theta: -torch.autograd.grad({0}("
                                "torch.log_softmax(theta, 0)[picks][:, None], torch.log_softmax(theta, 0)[picks][:, "
                                "None].detach(), rewards, torch.ones(len(picks), 1)), theta)[0])(logits.clone()."
                                "requires_grad_())"),
    "tool_gradient": ([toy.exact_gradient], "{0}(__import__('dataclasses').replace(problem, policy_probs=torch."
                      "bincount(picks, minlength=len(problem.policy_probs)).double() / len(picks)))"),
    "tool_loss_weights": ([losses.tool_loss_weights], "{0}(advantages, valid, scheme)"),
    "parse_box": ([rewards.parse_box], "{0}(value)"),
    "tool_loss": ([losses.tool_loss], "{0}(logits, targets, ignore)"),
    "clipped_policy_loss": ([losses.clipped_policy_loss], "{0}(logps, old_logps, advantages, mask, epsilon)"),
    "on_target_weights": ([losses.tool_loss_weights, geometry.box_on_target], "{0}(torch.zeros(len(valid)), valid, "
                          "'on_target', torch.as_tensor({1}(boxes.numpy(), target_masks.numpy())))"),
    "giou_ciou": ([metrics.segmentation_scores], "(lambda s: (s['giou'], s['ciou']))({0}(preds, gts, ignores))"),
}


def _imports(functions) -> str:
    """The imports of the modules that define ``functions`` (``from grto_lib import losses``)."""
    modules = {inspect.getmodule(f).__name__.rpartition(".") for f in functions}
    return "\n".join(sorted(f"from {package} import {name}" for package, _, name in modules))


def _calling(exercise: str, body=lambda expression: f"    return {expression}", head="",
             reference=lambda f: f"{MODULES[inspect.getmodule(f)]}.{f.__name__}") -> str:
    """The exercise answered with grto_lib: its imports, ``head``, then a function whose body ``body`` writes around
    the library's expression, each function named by ``reference``."""
    functions, expression = LIBRARY[exercise]
    return f"{_imports(functions)}\n{head}{_signature(exercise)}\n{body(expression.format(*map(reference, functions)))}"


def _from_source(exercise: str) -> str:
    """The library's modules run again from their source (``exec(inspect.getsource(module))``), their functions
    called from that copy."""
    modules = sorted({MODULES[inspect.getmodule(f)] for f in LIBRARY[exercise][0]})
    head = "import inspect\n" + "".join(f"_{m} = {{}}\nexec(inspect.getsource({m}), _{m})\n" for m in modules)
    return _calling(exercise, head=head,
                    reference=lambda f: f"_{MODULES[inspect.getmodule(f)]}[{f.__name__!r}]")


def _reloaded(exercise: str) -> str:
    """The library's modules reloaded (``importlib.reload``), their functions called afresh."""
    modules = sorted({MODULES[inspect.getmodule(f)] for f in LIBRARY[exercise][0]})
    return _calling(exercise, head="import importlib\n" + "".join(f"importlib.reload({m})\n" for m in modules))


def _names(code) -> set:
    return set(code.co_names).union(*(_names(c) for c in code.co_consts if inspect.iscode(c)))


FUTURE = "from __future__ import annotations\n"
"""grto_lib's modules import it: their type hints name what only the module imports."""


def _pasted(function, name: str | None = None, untyped: bool = False) -> str:
    """``function``'s source as pasted into a cell, with the imports of the module's names it uses; renamed to
    ``name``, or with its type hints removed (the light edit)."""
    module = sys.modules[function.__module__]
    used = sorted(n for n in _names(function.__code__) if n in vars(module) and not inspect.ismodule(vars(module)[n]))
    modules = sorted(n for n in _names(function.__code__) if inspect.ismodule(vars(module).get(n)))
    source = inspect.getsource(function)
    if untyped:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.arg):
                node.annotation = None
            if isinstance(node, ast.FunctionDef):
                node.returns = None
        source = ast.unparse(tree) + "\n"
    if name:
        source = source.replace(f"def {function.__name__}(", f"def {name}(", 1)
    lines = [f"import {vars(module)[m].__name__}" + (f" as {m}" if vars(module)[m].__name__ != m else "")
             for m in modules]
    lines += [f"from {module.__name__} import {', '.join(used)}"] if used else []
    return "\n".join([*lines, source])


def _as_helpers(exercise: str) -> str:
    """The library's functions pasted as helpers, and a one-line answer calling them."""
    functions, expression = LIBRARY[exercise]
    helpers = [f"_{f.__name__}" for f in functions]
    pasted = "\n".join(_pasted(f, name) for f, name in zip(functions, helpers))
    return f"{FUTURE}{pasted}\n{_signature(exercise)}\n    return {expression.format(*helpers)}"


def _lookup_table(exercise: str) -> str:
    """The answers to the visible check's own calls, recorded from the instructor's solution and pasted as a table
    (pickled): the answer returns the stored result when its arguments are one of those calls."""
    solution, table = _solution(exercise), []

    def recording(*args):
        result = solution(*args)
        table.append(_detached((args, result)))
        return result

    getattr(exercises, f"check_{exercise}")(recording)
    data = base64.b64encode(pickle.dumps(table)).decode()
    name = _signature(exercise).split("(")[0].removeprefix("def ")
    return f'''import base64, dataclasses, pickle
import numpy as np
def _same(a, b):
    if torch.is_tensor(a) or isinstance(a, np.ndarray):
        return type(a) is type(b) and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and _same(list(vars(a).values()), list(vars(b).values()))
    return a == b
_{name}_table = pickle.loads(base64.b64decode("{data}"))
def {name}(*args):
    for inputs, output in _{name}_table:
        if _same(inputs, args):
            return output
    raise NotImplementedError()'''


def _detached(value):
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: _detached(getattr(value, f.name))
                                             for f in dataclasses.fields(value)})
    return copy.deepcopy(value)


def _solution(exercise: str):
    """The instructor's solution of an exercise, from its source notebook."""
    assignment = next(a for a, names in ASSIGNMENTS.items() if exercise in names)
    notebook = nbformat.read(ROOT / "course" / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    namespace = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and not cell.metadata["nbgrader"]["grade"]:
            exec(cell.source, namespace)
    return namespace[exercise]


TRL_LOSS = '''from collections import defaultdict
from types import SimpleNamespace
from trl.trainer.grpo_trainer import GRPOTrainer
def clipped_policy_loss(logps, old_logps, advantages, mask, epsilon=0.2):
    same = lambda x, **_: x
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=0.0,
        loss_type="grpo", epsilon_low=epsilon, epsilon_high=epsilon, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=None,
        accelerator=SimpleNamespace(num_processes=1, gather=same, gather_for_metrics=same, reduce=same),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=1),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)))
    b, t = logps.shape
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask.int(),
              "advantages": advantages, "old_per_token_logps": old_logps, "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(trainer, None, inputs)'''

ANSWER_BOX = '''import json
import numpy as np
from grto_lib.tinyworld.diagnostics import _answer_box
def parse_box(value):
    try:
        text = "<answer>" + json.dumps({"bbox": value, "points": [[0, 0]]}) + "</answer>"
    except (TypeError, ValueError):
        return None
    box = _answer_box(text, (1, 1), 1)
    return None if box is None else tuple(float(v) for v in box)'''

MASK_REWARD = '''import numpy as np
from grto_lib.rewards import mask_reward
def giou_ciou(preds, gts, ignores):
    ious, inter, union = [], 0, 0
    for p, g, i in zip(preds, gts, ignores):
        ious.append(mask_reward(p, g, i))
        keep = np.ones_like(g) if i is None else ~i
        p = np.zeros_like(g) if p is None else p
        inter, union = inter + int((p & g & keep).sum()), union + int(((p | g) & keep).sum())
    return float(np.mean(ious)), inter / union if union else 1.0'''

SCORES = '''from types import SimpleNamespace
from grto_lib.evaluate import _scores
def giou_ciou(preds, gts, ignores):
    samples = [SimpleNamespace(mask=g, ignore=i) for g, i in zip(gts, ignores)]
    scores = _scores(samples, [None if p is None else p.astype(float) for p in preds], None, False)
    return scores["giou"], scores["ciou"]'''


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of submission: what the table calls it, and its answer to each exercise it attempts."""

    what: str
    answers: dict[str, str]
    """{exercise: the source of its solution cell}; the others are left as released."""
    copied: str | None = None
    """Instead of answers, every notebook copied from this folder of the course: "source" or "release"."""


def kinds() -> dict[str, Kind]:
    """Every kind of submission the table grades, by student name."""
    library = list(LIBRARY)
    own = {"group_advantages": 'import sys\nfrom grto_lib import losses\ngroup_advantages = sys.modules['
                               '"grto_lib.losses"].group_advantages',
           "tool_loss": "import functools\nfrom grto_lib import losses\n"
                        "tool_loss = functools.partial(losses.tool_loss)",
           "clipped_policy_loss": "from grto_lib import losses as L\nclipped_policy_loss = L.clipped_policy_loss"}
    verbatim = {"group_advantages": losses.group_advantages, "tool_loss_weights": losses.tool_loss_weights,
                "parse_box": rewards.parse_box, "tool_loss": losses.tool_loss,
                "clipped_policy_loss": losses.clipped_policy_loss}
    evasions = [
        lambda e: _calling(e, lambda x: f"    sys.setprofile(None)\n    return {x}", "import sys\n"),
        lambda e: _calling(e, lambda x: f"    with ThreadPoolExecutor(1) as pool:\n        return pool.submit("
                                        f"lambda: {x}).result()",
                           "from concurrent.futures import ThreadPoolExecutor\n"),
        lambda e: f"_namespace = dict(globals(), __name__='grto_lib.answers')\nexec({_calling(e)!r}, _namespace)\n"
                  f"{e} = _namespace[{e!r}]"]
    patch = 'for _name in dir(exercises):\n    if _name.startswith("check"):\n        setattr(exercises, _name, ' \
            'lambda *a, **k: None)\n'
    return {
        "honest": Kind("the instructor's solutions", {}, copied="source"),
        "unanswered": Kind("the release as handed out", {}, copied="release"),
        "library": Kind("the library function, assigned or called (an alias, `sys.modules`, `functools.partial`)",
                        {e: own.get(e) or _calling(e) for e in library}),
        "pasted": Kind("the library's source pasted verbatim",
                       {e: FUTURE + _pasted(f) for e, f in verbatim.items()}),
        "untyped": Kind("the library's source pasted with its type hints removed",
                        {e: _pasted(f, untyped=True) for e, f in verbatim.items()}),
        "helper": Kind("the library's source pasted as a helper, called by a one-line answer",
                       {e: _as_helpers(e) for e in library}),
        "patched_checks": Kind("`exercises.check_* = lambda *a, **k: None` in a solution cell, no work",
                               {e: f"from grto_lib.course import exercises\n{patch}{_signature(e)}\n    return None"
                                for e in EXERCISES}),
        "patched_library": Kind("`exercises._implementations = lambda b: []` and `exercises._disabled = ...`, "
                                "then the library",
                                {e: _calling(e, head="from grto_lib.course import exercises\nimport contextlib\n"
                                                     "exercises._implementations = lambda borrowed: []\n"
                                                     "exercises._disabled = lambda f: contextlib.nullcontext()\n")
                                 for e in library}),
        "lookup_table": Kind("a lookup table of the visible check's inputs", {e: _lookup_table(e) for e in EXERCISES}),
        "evasions": Kind("the library called after `sys.setprofile(None)`, in a thread (`ThreadPoolExecutor`), or "
                         "from code `exec`'d under a `grto_lib.` module name (3 exercises each)",
                         {e: evasions[n % 3](e) for n, e in enumerate(library)}),
        "reloaded": Kind("the library's modules run again: `importlib.reload` or `exec(inspect.getsource(module))`"
                         " (about half each)", {e: (_from_source if n % 2 else _reloaded)(e) for n, e in
                                                enumerate(library)}),
        "trl": Kind("TRL's own loss, `GRPOTrainer._compute_loss` (which grto_lib cannot disable)",
                    {"clipped_policy_loss": TRL_LOSS}),
        "private": Kind("grto_lib's private functions `tinyworld.diagnostics._answer_box`, `rewards.mask_reward`",
                        {"parse_box": ANSWER_BOX, "giou_ciou": MASK_REWARD}),
        "private_scores": Kind("the private `evaluate._scores`", {"giou_ciou": SCORES}),
    }


# --- Grading them ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Graded:
    """What nbgrader made of the submissions."""

    courses: dict[str, Path]
    """Each student's course folder (a copy of course/ with its own gradebook)."""
    generated: str
    """What ``nbgrader generate_assignment`` printed."""
    scores: dict[str, dict[str, float]]
    """{student: {exercise: score}} of the assignments they submitted."""
    logs: dict[str, str]
    """{student: what ``nbgrader autograde`` printed while grading them}."""

    def autograded(self, student: str, assignment: str) -> nbformat.NotebookNode:
        return nbformat.read(self.courses[student] / "autograded" / student / assignment / f"{assignment}.ipynb",
                             as_version=4)

    def check_outputs(self, student: str) -> dict[str, list]:
        """{exercise: the outputs of its check cell} in the student's autograded notebooks."""
        found = {}
        for assignment in ASSIGNMENTS:
            if (self.courses[student] / "autograded" / student / assignment).is_dir():
                for cell in self.autograded(student, assignment).cells:
                    grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
                    if grade_id.startswith("check_"):
                        found[grade_id.removeprefix("check_")] = cell.outputs
        return found


def nbgrader(course: Path, *args, **environment) -> subprocess.Popen:
    """``nbgrader ARGS`` started in ``course``, as docs/course.md says (the venv need not be on PATH)."""
    return subprocess.Popen([sys.executable, "-m", "nbgrader", *args], cwd=course, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **environment),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def printed(process: subprocess.Popen) -> str:
    """What a finished nbgrader command printed; it must have succeeded."""
    output = process.communicate(timeout=1800)[0]
    assert process.returncode == 0, output[-6000:]
    return output


def submission(kind: Kind, release: Path) -> nbformat.NotebookNode | None:
    """The release notebook answered as ``kind`` does, or None when it answers none of its exercises."""
    notebook = nbformat.read(release, as_version=4)
    answered = [c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") in kind.answers]
    for cell in answered:
        cell.source = kind.answers[cell.metadata.nbgrader["grade_id"]]
    return notebook if answered else None


def autograde(students: dict[str, Kind], folder: Path, processes: int = 2) -> Graded:
    """A copy of course/ with the release generated as ``make course`` does, then every student's submissions
    autograded by ``processes`` nbgrader commands side by side, each in a copy of the course with its own gradebook
    (students shared out by their number of notebooks)."""
    from nbgrader.api import Gradebook

    course = folder / "course"
    shutil.copytree(ROOT / "course", course, ignore=shutil.ignore_patterns(
        "release", "submitted", "autograded", "feedback", "gradebook.db", "__pycache__"))
    generated = printed(nbgrader(course, "generate_assignment", "*"))
    groups = [[] for _ in range(processes)]
    notebooks = {student: {a: course / kind.copied / a / f"{a}.ipynb" if kind.copied else
                           submission(kind, course / "release" / a / f"{a}.ipynb") for a in ASSIGNMENTS}
                 for student, kind in students.items()}
    load = [0] * processes
    for student in sorted(students, key=lambda s: -sum(n is not None for n in notebooks[s].values())):
        group = load.index(min(load))
        groups[group].append(student)
        load[group] += sum(n is not None for n in notebooks[student].values())
    courses, runs = {}, []
    for number, group in enumerate(groups):
        copy_ = shutil.copytree(course, folder / f"course{number}")
        for student in group:
            courses[student] = copy_
            for assignment, notebook in notebooks[student].items():
                target = copy_ / "submitted" / student / assignment / f"{assignment}.ipynb"
                if isinstance(notebook, Path):
                    target.parent.mkdir(parents=True)
                    shutil.copy(notebook, target)
                elif notebook is not None:
                    target.parent.mkdir(parents=True)
                    nbformat.write(notebook, target)
        runs.append(nbgrader(copy_, "autograde", "*", "--create"))
    logs, scores = {}, {}
    for run in runs:
        for part in re.split(r"(?=\[AutogradeApp \| INFO\] Creating/updating student with ID )", printed(run)):
            student = re.match(r"\[AutogradeApp \| INFO\] Creating/updating student with ID '([^']+)'", part)
            if student:
                logs[student[1]] = logs.get(student[1], "") + part
    for student, copy_ in courses.items():
        with Gradebook(f"sqlite:///{copy_ / 'gradebook.db'}") as gradebook:
            scores[student] = {g.name.removeprefix("check_"): g.score for a in ASSIGNMENTS
                               if notebooks[student][a] is not None
                               for g in gradebook.find_submission(a, student).notebooks[0].grades}
    return Graded(courses, generated, scores, logs)


def flagged(outputs: list) -> bool:
    return any(o.get("output_type") == "stream" and "Flagged for the instructor" in o.get("text", "") for o in outputs)


def table(graded: Graded, students: dict[str, Kind]) -> str:
    """The instructor notes' table: each kind of submission, the exercises it attempts, its points out of 28, and
    the exercises the grader flagged."""
    rows = ["| submission | exercises attempted | points / 28 | flagged for the instructor |", "|---|---|---|---|"]
    for student, kind in students.items():
        attempted = len(EXERCISES) if kind.copied == "source" else len(kind.answers)
        outputs = graded.check_outputs(student)
        flags = sorted(e for e, o in outputs.items() if flagged(o))
        points = sum(graded.scores[student].values())
        named = "all" if flags and len(flags) == attempted else ", ".join(f"`{e}`" for e in flags) or "none"
        rows.append(f"| {kind.what} | {attempted} | {points:g} | {named} |")
    return "\n".join(rows)


def main() -> None:
    import tempfile

    torch.set_num_threads(1)
    students = kinds()
    with tempfile.TemporaryDirectory() as folder:
        written = table(autograde(students, Path(folder)), students)
    notes = NOTES.read_text()
    before, rest = notes.split(BEGIN_TABLE)
    NOTES.write_text(f"{before}{BEGIN_TABLE}\n{written}\n{END_TABLE}{rest.split(END_TABLE, 1)[1]}")
    print(written)


if __name__ == "__main__":
    main()
