"""How the course grades beyond nbgrader's defaults: three preprocessors, which course/nbgrader_config.py installs.

``RestoreHiddenTests`` (autograde, while it sanitizes the submission). nbgrader restores every locked cell from the
gradebook and warns when the submitted one differs. Every grade cell differs, since the release leaves its hidden
tests out: this one puts them back without a warning, and still warns when a student changed what they were given.

``GradeOutsideKernel`` (autograde, after the notebook ran in the student's kernel, before nbgrader saves the grades).
The kernel ran the checks, but anything the student's code did to that kernel first (patching
``grto_lib.course.exercises``, switching off a profiler, faking outputs) could change what they report. This grades each
exercise again, where the student's code cannot reach the checks:

* it reads the submitted code (``scan``): an answer that calls a function the exercise re-implements
  (``exercises.EXERCISES[...].borrowed``) or holds a copy of one, renamed, reformatted, without docstrings or type
  hints, also in a helper it calls, is refused; what may be borrowing but cannot be refused reliably is flagged for
  the instructor (another grto_lib or trl function than those the exercise's text gives; ``exec``, ``importlib``,
  ``inspect``, threads, ``sys.modules``, files; assigning to a module's attributes);
* it runs the code: one fresh process an exercise (forked from a server that imported torch and grto_lib once,
  ``exercises.serve_hidden_tests``) runs ``exercises.grade_hidden``: the borrowed functions raise there, no file
  can be opened but to import, the notebook's cells run, then the answer on the hidden cases. Only the results
  come back, as JSON; they are compared here with the hidden test's ``want``, which that process never sees.

A check cell that passed in the kernel but not here gets an error output first (nbgrader then scores it 0); flags
add a line of output. Both show in Formgrader and in the feedback; flags, and cells the kernel passed but this
failed, are also logged as warnings.

``WithoutHiddenTests`` (generate_feedback). Feedback is the autograded notebook as HTML: this removes the hidden
tests from the grade cells, and any output that quotes one of their lines.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
from IPython.core.inputtransformer2 import TransformerManager
from nbformat.notebooknode import NotebookNode
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor, OverwriteCells
from traitlets import Integer, List

BEGIN, END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
FLAGGED_NAMES = {"exec", "eval", "compile", "__import__", "globals", "vars", "setattr", "delattr", "open",
                 "get_ipython", "breakpoint"}
FLAGGED_MODULES = {"importlib", "inspect", "threading", "_thread", "concurrent", "multiprocessing", "subprocess",
                   "ctypes", "gc", "builtins", "linecache", "marshal", "socket", "signal", "os", "io", "shutil",
                   "pathlib", "tempfile"}
FLAGGED_ATTRIBUTES = {"__code__", "__globals__", "__builtins__", "__closure__", "__subclasses__", "__dict__",
                      "f_globals", "f_locals", "f_back", "modules", "setprofile", "settrace", "_getframe",
                      "addaudithook"}
COPY_SIZE = 40
"""Syntax-tree nodes a function needs before a copy of it, when it is not what the exercise borrows, is flagged:
a two-line helper may look like grto_lib's by chance."""


def _exercises():
    """grto_lib.course.exercises, imported when first needed (it imports torch): the config file imports this
    module."""
    from grto_lib.course import exercises
    return exercises


# --- Restoring the hidden tests, and leaving them out of the feedback -----------------------------------------
def without_hidden_tests(source: str) -> str:
    """``source`` as nbgrader releases it: its hidden-test region left out."""
    cell = NotebookNode(cell_type="code", source=source, metadata={})
    ClearHiddenTests()._remove_hidden_test_region(cell)
    return cell.source


class RestoreHiddenTests(OverwriteCells):
    """nbgrader's OverwriteCells, which restores a grade cell's hidden tests silently when the rest of it is what
    the release gave."""

    def preprocess_cell(self, cell, resources, cell_index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None:
            try:
                source = self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
            except MissingEntry:
                source = None
            if source is not None and source.locked and BEGIN in source.source and \
                    cell.source == without_hidden_tests(source.source):
                cell.source = source.source
        return super().preprocess_cell(cell, resources, cell_index)


class WithoutHiddenTests(ClearHiddenTests):
    """nbgrader's ClearHiddenTests for the feedback: each grade cell without its hidden tests, and without any
    output that quotes one of their lines (a traceback would)."""

    display_data_priority = List(config=True, help="Set by the HTML exporter for every preprocessor; unused")

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code" or BEGIN not in cell.source:
            return cell, resources
        region = cell.source.split(BEGIN, 1)[1].split(END, 1)[0]
        quoted = [line.strip() for line in region.splitlines() if len(line.strip()) >= 12]
        cell, resources = super().preprocess_cell(cell, resources, cell_index)
        cell.outputs = [o for o in cell.outputs if not any(line in json.dumps(o) or line in _text(o)
                                                           for line in quoted)]
        return cell, resources


def _text(output) -> str:
    return "\n".join([str(output.get("text", "")), str(output.get("evalue", "")), *output.get("traceback", []),
                      *map(str, output.get("data", {}).values())])


# --- Reading a submitted notebook -----------------------------------------------------------------------------
@dataclasses.dataclass
class HiddenTest:
    """A grade cell's ``exercises.check_hidden(answer, "exercise", seed=..., want=...)``."""

    cell: NotebookNode
    exercise: str
    answer: str
    seed: int
    want: list


@dataclasses.dataclass
class Code:
    """A code cell that is not a grade cell, as Python (IPython's syntax translated)."""

    source: str
    tree: ast.Module | None
    by_student: bool
    """False for the cells the student could not change (locked ones, which nbgrader restored)."""
    exercise: str | None = None
    """The exercise of the next grade cell: the one this cell answers."""


def hidden_test(cell) -> HiddenTest | None:
    """The hidden test of a grade cell, read from its source (restored by nbgrader: the student's cannot count)."""
    for node in ast.walk(ast.parse(cell.source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "check_hidden":
            keywords = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            return HiddenTest(cell, ast.literal_eval(node.args[1]), node.args[0].id, keywords["seed"],
                              keywords["want"])
    return None


def read_notebook(notebook) -> tuple[list[Code], list[HiddenTest]]:
    """The notebook's code cells that are not grade cells, each given the exercise of the grade cell after it, and
    the grade cells' hidden tests."""
    codes, tests, pending = [], [], []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        nbgrader = cell.metadata.get("nbgrader", {})
        if nbgrader.get("grade") and not nbgrader.get("solution"):
            test = hidden_test(cell)
            for code in pending:
                code.exercise = test.exercise if test else None
            tests += [test] if test else []
            pending = []
            continue
        source = TransformerManager().transform_cell(cell.source)
        try:
            tree = ast.parse(source)
        except SyntaxError:
            tree = None
        pending.append(Code(source, tree, by_student=not nbgrader.get("locked", False)))
        codes.append(pending[-1])
    return codes, tests


# --- What the code uses ---------------------------------------------------------------------------------------
@functools.cache
def library() -> dict[str, ast.FunctionDef]:
    """Every function grto_lib's source defines, at any depth, by dotted name (``grto_lib.losses.tool_loss``,
    ``grto_lib.losses.tool_loss.ratio``), read from its files."""
    import grto_lib

    package = Path(grto_lib.__file__).resolve().parent
    functions = {}

    def add(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    functions[name] = child
                add(child, name)
            else:
                add(child, prefix)

    for path in sorted(package.rglob("*.py")):
        module = ".".join(("grto_lib", *path.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
        add(ast.parse(path.read_text()), module)
    return functions


@functools.cache
def library_shapes() -> dict[str, str]:
    """``exercises.shape_of`` of every grto_lib function worth flagging a copy of, to its dotted name."""
    return {_exercises().shape_of(node): name for name, node in library().items()
            if sum(1 for _ in ast.walk(node)) >= COPY_SIZE}


def borrowed_functions(exercise: str) -> set[str]:
    """The dotted names of the functions ``exercise`` re-implements: those it names, and every function the modules
    it names define at their top level."""
    names = set()
    for borrowed in _exercises().EXERCISES[exercise].borrowed:
        names |= {f for f in library() if f == borrowed or f.rpartition(".")[0] == borrowed}
    return names


def imports(codes: list[Code]) -> dict[str, str]:
    """What each name the notebook imports stands for, as a dotted name (``L`` -> ``grto_lib.losses``)."""
    names = {}
    for tree in (c.tree for c in codes if c.tree):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update({a.asname or a.name.split(".")[0]: a.name if a.asname else a.name.split(".")[0]
                              for a in node.names})
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return names


def dotted(node, names: dict[str, str]) -> str | None:
    """The dotted name an expression stands for (``losses.tool_loss``, ``getattr(losses, "tool_loss")``), through
    the notebook's imports, with grto_lib's own exports resolved (``grto_lib.tool_loss``); else None."""
    if isinstance(node, ast.Name):
        name = names.get(node.id)
    elif isinstance(node, ast.Attribute):
        base = dotted(node.value, names)
        name = base and f"{base}.{node.attr}"
    elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2 and \
            isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        base = dotted(node.args[0], names)
        name = base and f"{base}.{node.args[1].value}"
    else:
        return None
    if name and name.startswith("grto_lib."):
        import grto_lib

        first, _, rest = name.removeprefix("grto_lib.").partition(".")
        if first in grto_lib._EXPORTS:
            name = f"grto_lib.{grto_lib._EXPORTS[first]}.{first}" + (f".{rest}" if rest else "")
    return name


def reachable(answer: str, codes: list[Code]) -> list[ast.AST]:
    """The student's code an answer runs, as far as names tell: the definitions (``def`` or assignment) of
    ``answer`` in the student's cells, then of every name of such a cell that they use, and so on."""
    definitions: dict[str, list[ast.AST]] = {}
    for tree in (c.tree for c in codes if c.tree and c.by_student):
        for statement in tree.body:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                definitions.setdefault(statement.name, []).append(statement)
            elif isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
                for target in getattr(statement, "targets", [getattr(statement, "target", None)]):
                    if isinstance(target, ast.Name):
                        definitions.setdefault(target.id, []).append(statement.value)
    found, todo, seen = [], [answer], {answer}
    while todo:
        for node in definitions.get(todo.pop(), []):
            found.append(node)
            for name in (n.id for n in ast.walk(node) if isinstance(n, ast.Name)):
                if name in definitions and name not in seen:
                    seen.add(name)
                    todo.append(name)
    return found


@dataclasses.dataclass
class Findings:
    """What reading an exercise's code found: why it is refused (or None), and what to flag for the instructor."""

    refusal: str | None = None
    flags: list[str] = dataclasses.field(default_factory=list)

    def flag(self, text: str) -> None:
        if text not in self.flags:
            self.flags.append(text)


def _constructs(tree: ast.AST, names: dict[str, str], findings: Findings) -> None:
    """Flags what reaches beyond an answer's arguments: code run from text, introspection, threads, processes,
    files, and assigning to an imported module's attributes (patching it)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FLAGGED_NAMES and node.id not in names:
            findings.flag(f"uses {node.id}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in FLAGGED_MODULES:
                    findings.flag(f"imports {module}")
        elif isinstance(node, ast.Attribute) and node.attr in FLAGGED_ATTRIBUTES:
            findings.flag(f"uses {dotted(node, names) or '.' + node.attr}")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            for target in getattr(node, "targets", None) or [node.target]:
                base = target.value if isinstance(target, (ast.Attribute, ast.Subscript)) else None
                name = dotted(base, names) if base is not None else None
                if name and isinstance(target, ast.Attribute):
                    findings.flag(f"assigns {name}.{target.attr}")
                elif name:
                    findings.flag(f"assigns an item of {name}")


def scan(exercise: str, answer: str, codes: list[Code], names: dict[str, str]) -> Findings:
    """Reads the code of one exercise: its answer and what the answer uses (``reachable``), and the rest of the
    student's cells before its check."""
    exercises, findings = _exercises(), Findings()
    borrowed = borrowed_functions(exercise)
    shapes = {exercises.shape_of(library()[name]): name for name in borrowed}
    allowed = set(exercises.EXERCISES[exercise].allowed)
    short = lambda name: name.removeprefix("grto_lib.")  # noqa: E731 (as exercises' messages name them)
    code = reachable(answer, codes)
    for node in code:
        local = {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)} | {
            n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        here = {k: v for k, v in names.items() if k not in local} if isinstance(node, ast.FunctionDef) else names
        inner = {n.value for n in ast.walk(node) if isinstance(n, ast.Attribute)}  # `losses` of `losses.tool_loss`
        inner |= {n.args[0] for n in ast.walk(node) if isinstance(n, ast.Call) and dotted(n, here)}  # getattr(x, "y")
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                shape = exercises.shape_of(sub)
                if shape in shapes and not findings.refusal:
                    findings.refusal = (f"is a copy of grto_lib's {short(shapes[shape])}" if sub.name == answer else
                                        f"calls {sub.name}, a copy of grto_lib's {short(shapes[shape])}")
                elif shape in library_shapes():
                    findings.flag(f"holds a copy of {library_shapes()[shape]}")
            name = dotted(sub, here) if isinstance(sub, (ast.Name, ast.Attribute, ast.Call)) else None
            if sub in inner or not name or not name.startswith(("grto_lib.", "trl")):
                continue
            if name in borrowed and not findings.refusal:
                findings.refusal = f"calls grto_lib's {short(name)}"
            elif name not in borrowed | allowed and not any(a.startswith(name + ".") for a in allowed):
                findings.flag(f"uses {name}")
    for tree in [c.tree for c in codes if c.tree and c.by_student and c.exercise == exercise] + code:
        _constructs(tree, names, findings)
    return findings


# --- Running it -----------------------------------------------------------------------------------------------
_server: subprocess.Popen | None = None


def run_hidden_tests(tests: list[HiddenTest], cells: list[str], timeout: float) -> dict[str, list | str]:
    """``exercises.grade_hidden`` of each test on the notebook's ``cells``, by the grading server
    (``exercises.serve_hidden_tests``: one fresh Python, started on first use, that imported torch and grto_lib and
    forks a process an exercise). Each result is the list of one entry a case, or why there is none."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, "-c", "from grto_lib.course.exercises import serve_hidden_tests; "
                                    "serve_hidden_tests()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL)
    request = {"tests": [[t.exercise, t.answer, t.seed] for t in tests], "cells": cells, "timeout": timeout}
    try:
        _server.stdin.write(json.dumps(request).encode() + b"\n")
        _server.stdin.flush()
        if select.select([_server.stdout], [], [], timeout + 120)[0]:  # its start, then the tests
            return json.loads(_server.stdout.readline())
    except (OSError, ValueError):
        pass
    _server.kill()
    return {t.exercise: "the grading server did not answer" for t in tests}


def verdict(test: HiddenTest, result: list | str) -> str | None:
    """Why a hidden test fails, compared with ``want`` here, or None when every case matches."""
    exercises = _exercises()
    if isinstance(result, str) or not isinstance(result, list) or len(result) != len(test.want):
        return f"{test.answer} could not be graded: {result if isinstance(result, str) else 'a malformed report'}"
    for number, (entry, want) in enumerate(zip(result, test.want), 1):
        if not isinstance(entry, dict) or "observed" not in entry:
            return str(entry.get("failed") if isinstance(entry, dict) else entry)[:600]
        if not exercises.same(entry["observed"], want):
            return exercises.hidden_failure(test.answer, test.exercise, number, len(test.want))
    return None


def _error(message: str) -> NotebookNode:
    return nbformat.v4.new_output("error", ename="CheckFailed", evalue=message,
                                  traceback=textwrap.wrap(message, 80, break_long_words=False, break_on_hyphens=False))


class GradeOutsideKernel(NbGraderPreprocessor):
    """Grades each exercise again from the submitted code, out of the student's kernel's reach (see the module's
    docstring); a grade cell that fails here gets an error output first, so that nbgrader scores it 0."""

    timeout = Integer(120, help="Seconds the hidden tests of one notebook may run, all exercises together").tag(
        config=True)

    def preprocess(self, nb, resources):
        codes, tests = read_notebook(nb)
        if not tests:
            return nb, resources
        who = "{student} {assignment}".format(**resources.get("nbgrader", {"student": "?", "assignment": "?"}))
        names = imports(codes)
        findings = {t.exercise: scan(t.exercise, t.answer, codes, names) for t in tests}
        results = run_hidden_tests([t for t in tests if not findings[t.exercise].refusal],
                                   [c.source for c in codes], self.timeout)
        for test in tests:
            found = findings[test.exercise]
            failure = _exercises().refused(test.answer, found.refusal) if found.refusal else \
                verdict(test, results[test.exercise])
            if failure and not any(o.output_type == "error" for o in test.cell.outputs):
                self.log.warning("%s: %s passed in the student's kernel, not outside it: %s", who, test.exercise,
                                 failure)
                test.cell.outputs.insert(0, _error(failure))
            if found.flags:
                note = f"Flagged for the instructor (the score is unchanged): {test.answer} {'; '.join(found.flags)}"
                self.log.warning("%s: %s", who, note)
                test.cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text=note + "\n"))
        return nb, resources
