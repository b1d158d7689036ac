"""What every check of the course's exercises shares (``grto_lib.course.exercises``): the failure a student sees
(``CheckFailed``), what an answer may not use (the ``grto_lib`` functions an exercise re-implements: an answer that
is one, copies one or calls one is refused, and ``_disabled`` makes them raise while it runs) and how a result is
compared with the expected one, with values shown where they differ."""
from __future__ import annotations

import ast
import contextlib
import copy
import functools
import importlib
import importlib.util
import inspect
import math
import sys
import textwrap
import traceback

import numpy as np
import torch

from grto_lib import losses


class CheckFailed(AssertionError):
    """A failed check. IPython shows its message, the hint, instead of a traceback, in lines Validate shows whole."""

    def _render_traceback_(self) -> list[str]:
        return textwrap.wrap(str(self), 80, break_long_words=False, break_on_hyphens=False)


# --- What an answer may not use -------------------------------------------------------------------------------
def _qualified(function) -> str:
    return f"{function.__module__.removeprefix('grto_lib.')}.{function.__qualname__}"


def _unwrapped(function):
    """The function under a ``functools.partial`` or a decorator (``__wrapped__``)."""
    for _ in range(10):
        inner = function.func if isinstance(function, functools.partial) else getattr(function, "__wrapped__", None)
        if not callable(inner):
            return function
        function = inner
    return function


def _implementations(borrowed) -> list:
    """The functions ``borrowed`` names (dotted names of grto_lib modules and functions): a function itself, or
    every function a module defines, each unwrapped from its decorators."""
    functions = []
    for name in borrowed:
        try:
            target = importlib.import_module(name)
        except ModuleNotFoundError:
            module, _, attribute = name.rpartition(".")
            target = getattr(importlib.import_module(module), attribute)
        if inspect.ismodule(target):
            functions += [_unwrapped(f) for f in vars(target).values()
                          if inspect.isfunction(f) and f.__module__ == target.__name__]
        else:
            functions.append(_unwrapped(target))
    return functions


DISABLED = "grto_lib's {} is disabled while an answer to this exercise runs"


@functools.cache
def _disabled_code(function):
    """A code object for ``function`` that raises ``RuntimeError(DISABLED...)``, whatever it is called with."""
    namespace = {}
    exec(compile(f"def disabled(*args, **kwargs):\n    raise RuntimeError({DISABLED.format(_qualified(function))!r})\n",
                 f"<disabled {_qualified(function)}>", "exec"), namespace)
    return namespace["disabled"].__code__.replace(co_name=function.__name__)


@contextlib.contextmanager
def _disabled(functions):
    """While the block runs, every function of ``functions`` raises instead of running: its ``__code__`` is
    swapped, so every name for the function object (an alias, a ``functools.partial``, ``sys.modules``, another
    module's import of it, a thread) reaches the disabled code, and ``inspect.getsource`` finds none of its source.
    Functions with a closure keep their code (none of the borrowed modules' functions has one)."""
    swapped = [(f, f.__code__) for f in functions if not f.__closure__]
    for function, _ in swapped:
        function.__code__ = _disabled_code(function)
    try:
        yield
    finally:
        for function, code in swapped:
            function.__code__ = code


def _disabled_name(error: BaseException) -> str | None:
    """The qualified name of the disabled function whose call raised ``error``, or None."""
    prefix, suffix = DISABLED.split("{}")
    text = str(error)
    return text[len(prefix):-len(suffix)] if isinstance(error, RuntimeError) and text.startswith(prefix) and \
        text.endswith(suffix) else None


def shape_of(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """A function's arguments and body as an AST dump that two functions share when one is the other renamed,
    reformatted, or without docstrings, comments and type hints: every name is numbered in order of appearance."""
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n.returns, n.decorator_list = None, []
            if ast.get_docstring(n) is not None:
                n.body = n.body[1:] or [ast.Pass()]
        if isinstance(n, ast.arg):
            n.annotation = None
    body = [ast.Assign(targets=[s.target], value=s.value) if isinstance(s, ast.AnnAssign) and s.value else s
            for s in node.body if not (isinstance(s, ast.AnnAssign) and s.value is None)]
    tree, names = ast.Module(body=[node.args, *body], type_ignores=[]), {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            n.id = names.setdefault(n.id, f"v{len(names)}")
        elif isinstance(n, ast.arg):
            n.arg = names.setdefault(n.arg, f"v{len(names)}")
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n.name = names.setdefault(n.name, f"v{len(names)}")
    return ast.dump(tree)


def _shape(function) -> str | None:
    """``shape_of`` of a function object's source, or None without source."""
    return _shape_of_code(function, getattr(function, "__code__", None))


@functools.lru_cache(maxsize=4096)
def _shape_of_code(function, code) -> str | None:
    """``_shape``, cached by function and code object (``_disabled`` swaps the code)."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    return shape_of(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _code_names(code) -> set:
    """The global and attribute names a code object and the functions and comprehensions inside it use."""
    return set(code.co_names).union(*(_code_names(c) for c in code.co_consts if inspect.iscode(c)))


def _uses(function) -> list:
    """The functions ``function`` uses by name: the functions of its own namespace (the notebook's), followed
    through each other, and the grto_lib functions it names, directly or as a module's (``losses.tool_loss``)."""
    answer = _unwrapped(function)
    namespace, found, todo = getattr(answer, "__globals__", {}), [], [answer] if inspect.isfunction(answer) else []
    while todo:
        names = _code_names(todo.pop().__code__)
        values = [namespace.get(n) for n in names]
        values += [getattr(m, n, None) for m in values if inspect.ismodule(m) for n in names]
        for value in (_unwrapped(v) for v in values if callable(v)):
            if not inspect.isfunction(value) or value is answer or value in found:
                continue
            if value.__globals__ is namespace:
                found.append(value)
                todo.append(value)
            elif (value.__module__ or "").startswith("grto_lib"):
                found.append(value)
    return found


def refused(name: str, what: str) -> str:
    """What a refused answer says: ``what`` it does with grto_lib's implementation, and that it scores nothing."""
    return f"{name} {what}: the exercise is to write it yourself, and an answer that uses grto_lib's implementation " \
           f"scores no marks"


class _Answer:
    """A student's function as the checks call it: ``grto_lib``'s own implementations refused (``borrowed``, see
    ``EXERCISES``), and ``NotImplementedError`` or any other exception turned into a ``CheckFailed`` that names
    the call, or only where it failed for a hidden test (``hidden``: its inputs are not shown)."""

    def __init__(self, function, borrowed=(), hidden=False):
        self.function, self.hidden = function, hidden
        self.name = getattr(function, "__name__", None) or getattr(_unwrapped(function), "__name__", "the answer")
        self.implementations = _implementations(borrowed)
        shapes = {_shape(f): f for f in self.implementations}
        shapes.pop(None, None)
        answer = _unwrapped(function)
        for used in [answer, *_uses(function)]:
            if used in self.implementations:
                raise self._refused(f"is grto_lib's own {_qualified(used)}" if used is answer else
                                    f"calls grto_lib's {_qualified(used)}")
            copied = shapes.get(_shape(used)) if inspect.isfunction(used) else None
            if copied:
                raise self._refused(f"is a copy of grto_lib's {_qualified(copied)}" if used is answer else
                                    f"calls {used.__name__}, a copy of grto_lib's {_qualified(copied)}")

    def _refused(self, what: str) -> CheckFailed:
        return CheckFailed(refused(self.name, what))

    def __call__(self, *args):
        try:
            with _disabled(self.implementations):
                return self.function(*args)
        except Exception as error:
            if isinstance(error, NotImplementedError) and not self.hidden:
                raise CheckFailed(f"{self.name} is not implemented yet: replace `raise NotImplementedError()` in "
                                  f"its cell with your code, run the cell, then this one") from None
            if _disabled_name(error):
                raise self._refused(f"calls grto_lib's {_disabled_name(error)}") from None
            code = getattr(self.function, "__code__", None)
            lines = [f for f in traceback.extract_tb(error.__traceback__) if code and f.filename == code.co_filename]
            where = f" at `{lines[-1].line}`" if lines and lines[-1].line else ""
            if self.hidden:
                raise CheckFailed(f"{self.name} raised {type(error).__name__}{where} on a hidden test") from None
            raise CheckFailed(f"{self.name} raised {type(error).__name__}: {error}{where}, called as {self.name}("
                              f"{', '.join(_show(a) for a in args)})") from None


# --- Comparing results ----------------------------------------------------------------------------------------
def _tensor(value) -> torch.Tensor | None:
    """``value`` as a float64 tensor, or None when it is not numbers (None, a string, ragged lists...)."""
    if value is None:
        return None
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64) if not torch.is_tensor(value) else value,
                               dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _close(a, b, atol=1e-5) -> bool:
    a, b = _tensor(a), _tensor(b)
    return a is not None and b is not None and a.shape == b.shape and torch.allclose(a, b, atol=atol, equal_nan=True)


def _show(value) -> str:
    """A short, readable form of an argument or a result: a large tensor by its shape and first values."""
    if isinstance(value, np.generic) or (torch.is_tensor(value) and value.dim() == 0):
        value = value.item()
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) > 8 or value.ndim > 2:
            first = ", ".join(_show(v) for v in value.flatten()[:5].tolist())
            return f"<{type(value).__name__} of shape {list(value.shape)}: {first}, ...>"
        value = value.tolist()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(got, want, atol) -> tuple[str | None, str | None, str]:
    """What any wrong result may show: a hint on its shape, a hint when it is close to ``want``, and for a large
    result where it differs most (None, None, '' when there is nothing to say)."""
    g, w = _tensor(got), _tensor(want)
    if got is None:
        return "return the result (a function without `return` gives None)", None, ""
    if g is None or w is None:
        return None, None, ""
    if g.shape != w.shape:
        right = g.numel() == w.numel() and torch.allclose(g.flatten(), w.flatten(), atol=atol, equal_nan=True)
        return (f"return shape {list(w.shape)}, not {list(g.shape)}" + (": the values are right" if right else ""),
                None, "")
    where = ""
    if w.numel() > 8:
        index = tuple(map(int, np.unravel_index(int((g - w).abs().nan_to_num(math.inf).argmax()), tuple(w.shape))))
        where = f"; they differ most at index {list(index)}: {g[index].item():.4g} instead of {w[index].item():.4g}"
    difference = (g - w).abs().max().item()
    close = math.isfinite(difference) and difference <= 0.02 * max(1.0, w.abs().max().item())
    return None, f"close, but off by up to {difference:.2g}: look for rounding, an added constant or another eps" \
        if close else None, where


def _compare(call: str, got, want, mistakes=(), atol=1e-5, otherwise="wrong result") -> None:
    """Raise ``CheckFailed`` unless ``got`` is ``want``. ``mistakes``: (what a typical wrong answer returns, hint).
    The message leads with the hint of the first mistake ``got`` matches, else a wrong shape, else ``otherwise``
    when the check gives one, else a near miss; then the call, both results, and where a large one differs most."""
    if _close(got, want, atol):
        return
    shape, near, where = _differences(got, want, atol)
    hint = next((h for wrong, h in mistakes if _close(got, wrong, atol)), None) or shape or \
        (otherwise if otherwise != "wrong result" else near or otherwise)
    raise CheckFailed(f"{hint}: {call} returned {_show(got)}, expected {_show(want)}{where}")


