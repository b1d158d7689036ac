"""The hidden tests of the course's exercises and the grading process that runs them outside the student's kernel.

``check_hidden(answer, exercise, seed, want)`` runs an answer on cases drawn from ``seed`` (``hidden_cases``) and
compares what ``EXERCISES[exercise].observe`` makes of each result with ``want``, what a reference gave on them.
course/hidden_tests.py writes these calls, with their values, into the source notebooks' hidden-test regions; the
student's release has neither. At grading, nbgrader runs them in the student's kernel, and course/grading.py runs
them again outside it, in a process per exercise that calls ``grade_hidden`` (served by ``serve_hidden_tests``).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from grto_lib import losses
from grto_lib.course.rules import CheckFailed, _Answer, _disabled, _implementations, refused
from grto_lib.tinyworld import toy


def _surrogate_case(generator: torch.Generator, n=8, tokens=6, size=12):
    """(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size) of n rollouts."""
    old_logps = -torch.rand(n, tokens, generator=generator)
    logps = old_logps + 0.1 * torch.randn(n, tokens, generator=generator)  # a later update of the same rollouts
    completion_mask = torch.ones(n, tokens)
    completion_mask[::3, tokens - 2:] = 0
    targets = torch.zeros(n, size, size, dtype=torch.bool)
    targets[:, size // 4:size * 3 // 4, size // 3:size * 5 // 6] = True
    return (logps, old_logps, completion_mask, 2 * torch.randn(n, size, size, generator=generator), targets,
            torch.rand(n, generator=generator), n // 2)


# --- Hidden tests -----------------------------------------------------------------------------------------------
def _plain(value):
    """``value`` as JSON data, what hidden tests compare: tensors and arrays as nested lists, every number (bool
    included) as a float, tuples as lists, None as None, anything else as ``"<its type>"``."""
    if torch.is_tensor(value):
        return _plain(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None if value is None else f"<{type(value).__name__}>"


def _result(answer, case):
    """What is compared for most exercises: the answer's result."""
    return _plain(answer(*case))


def _with_gradients(*of: int) -> Callable:
    """What is compared for a loss: its value and its gradient w.r.t. the arguments at positions ``of`` (zeros
    when it has none: a constant loss is judged by its value)."""
    def observe(answer, case):
        inputs = [a.clone().requires_grad_() if i in of else a for i, a in enumerate(case)]
        value = answer(*inputs)
        tensor = value if torch.is_tensor(value) and value.numel() == 1 else None
        needed = [inputs[i] for i in of]
        gradients = torch.autograd.grad(tensor.sum(), needed, allow_unused=True) \
            if tensor is not None and tensor.requires_grad else [None] * len(needed)
        return [_plain(value), *(_plain(torch.zeros_like(x) if g is None else g) for x, g in zip(needed, gradients))]
    return observe


def _box(answer, case):
    """parse_box is compared with the types it returns: ["tuple", ["float", ...], values] or None."""
    got = answer(*case)
    if got is None:
        return None
    kinds = [type(v).__name__ for v in got] if isinstance(got, (list, tuple)) else None
    return [type(got).__name__, kinds, _plain(got)]


def _group_advantages_cases(g):
    rewards_ = torch.cat([torch.rand(4, generator=g), torch.full((4,), 0.7)])  # its second group all equal
    return [(torch.randn(12, generator=g), 3), (rewards_, 4), (torch.randint(0, 2, (10,), generator=g).float(), 5)]


def _score_function_cases(g):
    return [(torch.randn(6, generator=g), torch.randint(6, (10,), generator=g), torch.randn(10, generator=g))
            for _ in range(3)]


def _tool_gradient_cases(g):
    return [(toy.make_toy_problem(num_prompts=4, dim=2, seed=int(torch.randint(10 ** 6, (), generator=g))),
             torch.randint(4, (n,), generator=g)) for n in (3, 7)]


def _tool_loss_weights_cases(g):
    cases = []
    for scheme in ("uniform", "positive", "advantage", "positive", "advantage"):
        advantages = torch.randn(8, generator=g)
        advantages[torch.randint(8, (2,), generator=g)] = 0.0
        cases.append((advantages, torch.rand(8, generator=g) > 0.3, scheme))
    return cases + [(torch.randn(8, generator=g), torch.zeros(8, dtype=torch.bool), "uniform")]


def _parse_box_cases(g):
    x1, y1, w, h = (100 * torch.rand(4, generator=g)).tolist()
    box, whole = [x1, y1, x1 + w, y1 + h], [int(x1), int(y1), int(x1 + w) + 1, int(y1 + h) + 1]
    values = [whole, box, [x1, y1, x1, y1 + h], [x1 + w, y1, x1, y1 + h], [x1, y1 + h, x1 + w, y1], tuple(box),
              whole[:3], whole + [1], [float("nan"), *box[1:]], [*box[:3], -float("inf")], [False, *whole[1:]],
              [str(x1), *box[1:]], [-(10 ** 9), y1, x1, 10 ** 7], [box[:2], box[2:], 1, 2], {"bbox": whole}, None]
    return [(v,) for v in values]


def _tool_loss_cases(g):
    cases = []
    for ignore in (None, True):
        logits, targets = 3 * torch.randn(3, 5, 5, generator=g), torch.rand(3, 5, 5, generator=g) > 0.5
        targets[2] = False
        cases.append((logits, targets, None if ignore is None else torch.rand(3, 5, 5, generator=g) > 0.7))
    return cases


def _off_policy_cases(g):
    cases = []
    for shift, share in ((0.0, 0.6), (100.0, 0.6), (0.0, 0.0)):
        reference = -200 + 3 * torch.randn(6, generator=g)
        usable = torch.rand(6, generator=g) < share
        usable[0] = share > 0
        cases.append((3 * torch.rand(6, generator=g), reference + shift + torch.randn(6, generator=g), reference,
                      usable))
    return cases


def _clipped_cases(g):
    cases = []
    for epsilon in (0.2, 0.3):
        old = -torch.rand(3, 4, generator=g) - 0.5
        mask = torch.ones(3, 4)
        mask[1, 2:] = 0
        cases.append((old + 0.5 * torch.randn(3, 4, generator=g), old, torch.randn(3, generator=g), mask, epsilon))
    return cases


def _on_target_cases(g):
    cases = []
    for shift in (0, 0, 20):  # the last case's boxes are all off target
        targets = torch.zeros(6, 8, 8, dtype=torch.bool)
        corner = torch.randint(0, 3, (6, 2), generator=g)
        for k, (x, y) in enumerate(corner.tolist()[:5]):  # target 5 empty
            targets[k, y:y + 4, x:x + 4] = True
        boxes = torch.cat([corner, corner + 4], 1) + torch.randint(-1, 2, (6, 4), generator=g)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2])
        boxes[0] = torch.cat([corner[0], corner[0] + torch.tensor([4, 8])])  # IoU 0.5 exactly
        boxes[1:3] = torch.cat([corner[1:3], corner[1:3] + 4], 1)  # on target, rollout 1 invalid
        valid = torch.rand(6, generator=g) > 0.2
        valid[1], valid[2] = False, True
        cases.append((valid, boxes.float() + shift, targets))
    return cases


def _surrogate_cases(g):
    return [(*_surrogate_case(g, n=4, tokens=3, size=4), weight) for weight in (0.7, 0.3)]


def _micro_batch_cases(g):
    return [(torch.rand((), generator=g), torch.rand(4, generator=g), torch.softmax(torch.randn(4, generator=g), 0),
             weight, k) for weight, k in ((0.5, 2), (0.1, 3), (2.0, 1))]


def _giou_ciou_cases(g):
    cases = []
    for n in (4, 5):
        gts = [torch.rand(5, 5, generator=g).numpy() > 0.5 for _ in range(n)]
        preds = [torch.rand(5, 5, generator=g).numpy() > 0.5 for _ in range(n)]
        gts[0][:], preds[0][:] = False, False  # an empty union
        preds[1] = None  # a missing answer
        ignores = [None if k % 2 else torch.rand(5, 5, generator=g).numpy() > 0.8 for k in range(n)]
        cases.append((preds, gts, ignores))
    return cases


def _pass_at_k_cases(g):
    correct = torch.rand(4, 6, generator=g) > 0.6
    correct[0] = False
    return [(correct, k) for k in (1, 3, 6)]


def _paired_cases(g):
    return [(torch.rand(n, generator=g), torch.rand(n, generator=g)) for n in (6, 15)]


@dataclasses.dataclass(frozen=True)
class Exercise:
    """What the checks and the grader know of an exercise besides its visible check."""

    borrowed: tuple[str, ...]
    """The grto_lib modules and functions it re-implements (dotted names): an answer may not be, copy or call them."""
    allowed: tuple[str, ...]
    """The grto_lib names its text tells the student to use; course/grading.py flags an answer that uses others."""
    hidden_cases: Callable[[torch.Generator], list[tuple]]
    """Draws the hidden tests' arguments, one tuple a call."""
    hidden: str
    """What the hidden cases try that the visible check does not show, in words (never their values)."""
    observe: Callable = _result
    """(answer, arguments) -> what is compared with the reference, as JSON data (``_plain``)."""


TOY = "grto_lib.tinyworld.toy."
EXERCISES = {
    "group_advantages": Exercise(("grto_lib.losses",), (), _group_advantages_cases,
                                 "other group sizes, a group of equal rewards, rewards of 0 and 1"),
    "score_function_gradient": Exercise(("grto_lib.losses",), (), _score_function_cases,
                                        "6 answers, 10 samples with repeated picks"),
    "tool_gradient": Exercise(tuple(TOY + n for n in ("exact_gradient", "tool_objective", "grto_gradient_estimate",
                                                      "finite_difference_gradient")),
                              (TOY + "make_toy_problem", TOY + "per_prompt_tool_loss"), _tool_gradient_cases,
                              "other toy problems (4 prompts, d = 2), 3 and 7 picks"),
    "tool_loss_weights": Exercise(("grto_lib.losses",), (), _tool_loss_weights_cases,
                                  "advantages of exactly 0, other valid masks, none valid"),
    "parse_box": Exercise(("grto_lib.rewards",), ("grto_lib.rewards.COORD_LIMIT",), _parse_box_cases,
                          "float boxes, a tuple, -infinity, False, coordinates beyond -COORD_LIMIT", observe=_box),
    "tool_loss": Exercise(("grto_lib.losses",), (), _tool_loss_cases,
                          "5 x 5 masks, an empty target, scattered ignore pixels"),
    "off_policy_tool_loss": Exercise((), (), _off_policy_cases,
                                     "other log-probabilities, log-ratios near 100, nothing usable",
                                     _with_gradients(0)),
    "clipped_policy_loss": Exercise(("grto_lib.losses",), (), _clipped_cases,
                                    "epsilon 0.3, padding, the loss's value and its gradient", _with_gradients(0)),
    "on_target_weights": Exercise(("grto_lib.losses", "grto_lib.geometry"), (), _on_target_cases,
                                  "8 x 8 targets, jittered boxes, an IoU of exactly 0.5, an invalid rollout on "
                                  "target, no box on target"),
    "grto_surrogate": Exercise((), ("grto_lib.course.exercises.soft_mask_reward", "grto_lib.losses.group_advantages",
                                    "grto_lib.losses.clipped_policy_loss", "grto_lib.losses.tool_loss"),
                               _surrogate_cases, "groups of 2, tool weights 0.7 and 0.3, both gradients",
                               _with_gradients(0, 3)),
    "micro_batch_loss": Exercise((), (), _micro_batch_cases, "other losses, weights and steps"),
    "giou_ciou": Exercise(("grto_lib.metrics",), (), _giou_ciou_cases,
                          "random 5 x 5 masks, an empty union, a missing answer, scattered ignore pixels"),
    "pass_at_k": Exercise((), (), _pass_at_k_cases, "6 samples a prompt, k = 1, 3 and 6, a prompt with none correct"),
    "paired_difference": Exercise((), (), _paired_cases, "6 and 15 samples"),
}
"""Every graded exercise by name: the name of the student's function and of its solution cell in course/source."""


def hidden_cases(exercise: str, seed: int) -> list[tuple]:
    """The hidden tests' arguments of ``exercise``, drawn from ``seed`` (the same on every machine)."""
    return EXERCISES[exercise].hidden_cases(torch.Generator().manual_seed(seed))


def same(got, want, tolerance: float = 1e-4) -> bool:
    """Whether an observation (``_plain`` data) matches the reference's: numbers within ``tolerance``, absolute and
    relative; lists of the same length, item by item; anything else equal. Pure Python: course/grading.py compares
    with it data that the student's code produced."""
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(same(g, w, tolerance) for g, w in zip(got, want))
    if isinstance(want, float):
        return type(got) is float and abs(got - want) <= tolerance * (1 + abs(want))
    return type(got) is type(want) and got == want


def hidden_failure(name: str, exercise: str, number: int, total: int) -> str:
    """What a failed hidden test says: which one, and what the hidden tests try, never their values."""
    return (f"{name} fails hidden test {number} of {total}: its result differs from the reference's on a case the "
            f"visible check does not show (the hidden tests try {EXERCISES[exercise].hidden})")


def _observed(exercise: str, answer: _Answer, case: tuple):
    """``EXERCISES[exercise].observe`` of the answer on one hidden case; a failure of the comparison itself (the
    result has no gradient to take, say) is a ``CheckFailed`` that shows no value."""
    try:
        return EXERCISES[exercise].observe(answer, case)
    except CheckFailed:
        raise
    except Exception as error:
        raise CheckFailed(f"{answer.name}'s result on a hidden test could not be compared with the reference's "
                          f"({type(error).__name__})") from None


def check_hidden(answer, exercise: str, seed: int, want: list) -> None:
    """The hidden tests of ``exercise``: the answer on ``hidden_cases(exercise, seed)``, each result compared with
    ``want``. Raises ``CheckFailed`` at the first that differs, saying which; ``_Answer`` refuses borrowing."""
    answer = _Answer(answer, EXERCISES[exercise].borrowed, hidden=True)
    cases = hidden_cases(exercise, seed)
    if len(cases) != len(want):
        raise ValueError(f"{exercise}'s hidden test has {len(want)} values for {len(cases)} cases: rewrite it "
                         f"(course/hidden_tests.py)")
    for number, (case, expected) in enumerate(zip(cases, want), 1):
        if not same(_observed(exercise, answer, case), expected):
            raise CheckFailed(hidden_failure(answer.name, exercise, number, len(want)))


REFUSED_EVENTS = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                  "os.kill", "os.killpg", "signal.pthread_kill", "sys.addaudithook", "sys.setprofile", "sys.settrace")
"""Audit events refused while a notebook's code is graded (``grade_hidden``), besides opening files."""
SYSTEM_FOLDERS = ("/usr/", "/lib/", "/lib64/", "/etc/", "/sys/", "/proc/self/", "/proc/cpuinfo", "/proc/meminfo",
                  "/dev/null", "/dev/urandom")
"""What a notebook's code may read while it is graded, besides the Python installation: what libraries read at
import, none of it where a user's process writes (not /tmp, /dev/shm, a home folder or another process's /proc)."""
GRTO_LIB = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep
"""grto_lib's folder (this module is in grto_lib/course/): the files of the modules whose functions grading disables
are in it."""


def _while_grading(imported: set) -> Callable:
    """An audit hook (it cannot be removed) for the process that grades a notebook's code. Files may be opened only
    to be read, and only those of the Python installation, of the system (``SYSTEM_FOLDERS``) and of grto_lib's
    modules not imported yet, so that imports work; no file of a module already imported (``imported``: no reload,
    no ``inspect.getsource`` of a module, no ``exec`` of its file, so the disabled functions stay disabled), and
    nothing of the user's (the notebooks, the gradebook, what the student's kernel may have written). No socket,
    process, signal or further hook either: the answer gets its data from its arguments only."""
    installed = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = os.path.realpath(os.fsdecode(args[0])), args[1], args[2]
            reading = not any(c in mode for c in "wax+") if isinstance(mode, str) else \
                flags is not None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) == 0
            if not reading or path in imported or not path.startswith((*installed, *SYSTEM_FOLDERS, GRTO_LIB)):
                raise PermissionError(f"{path} may not be opened while a notebook's code is graded")
        elif event.startswith(REFUSED_EVENTS):
            raise PermissionError(f"{event} is refused while a notebook's code is graded")
    return hook


def grade_hidden(exercise: str, answer_name: str, seed: int, cells: list[str], send: Callable[[bytes], None]) -> None:
    """The hidden tests of one exercise on the code of a submitted notebook, in a process of its own that nothing
    else uses (``serve_hidden_tests`` forks one an exercise).

    In order: the cases are drawn; the functions the exercise borrows are disabled for the rest of the process and
    the audit hook ``_while_grading`` installed; the notebook's ``cells`` (Python source) run in one namespace, as
    in a kernel (a cell that raises stops there, and the next one runs); then the function named ``answer_name``
    runs on each case. ``send`` gets, as JSON bytes, one entry a case:
    ``{"observed": ...}`` or ``{"failed": message}``. The expected values never reach this process: the grader
    compares."""
    cases = hidden_cases(exercise, seed)
    borrowed = EXERCISES[exercise].borrowed
    implementations = _implementations(borrowed)
    imported = {os.path.realpath(m.__file__) for m in list(sys.modules.values()) if isinstance(
        getattr(m, "__file__", None), str) and os.path.realpath(m.__file__).startswith(GRTO_LIB)}
    imported |= {os.path.realpath(importlib.util.cache_from_source(f)) for f in imported if f.endswith(".py")}
    with _disabled(implementations):
        sys.addaudithook(_while_grading(imported))
        namespace, stopped = {"__name__": "__main__"}, []
        for number, source in enumerate(cells):
            try:
                exec(compile(source, f"<cell {number}>", "exec"), namespace)
            except BaseException as error:  # noqa: B036 (as in a kernel: the next cell runs)
                stopped.append(f"{type(error).__name__}: {error}"[:300])
        results = []
        try:
            if not callable(namespace.get(answer_name)):
                raise CheckFailed(f"{answer_name} is not defined: its cell must define a function of that name"
                                  + (f" (a cell stopped with {stopped[0]})" if stopped else ""))
            answer = _Answer(namespace[answer_name], borrowed, hidden=True)
            for case in cases:
                try:
                    results.append({"observed": _observed(exercise, answer, case)})
                except CheckFailed as failure:
                    results.append({"failed": str(failure)})
        except CheckFailed as refusal:
            results = [{"failed": str(refusal)}] * len(cases)
        except BaseException as error:  # noqa: B036 (the answer may raise anything, SystemExit included)
            results = [{"failed": f"{answer_name} stopped the grading: {type(error).__name__}"}] * len(cases)
    send(json.dumps(results).encode())


PRELOADED = ("grto_lib.losses", "grto_lib.geometry", "grto_lib.metrics", "grto_lib.rewards", "grto_lib.tinyworld.toy")
"""What the grading server imports once, besides this module: what the notebooks import, and what they borrow."""


def serve_hidden_tests() -> None:
    """The grading server, a fresh Python that course/grading.py starts once: it imports torch and grto_lib, then
    answers requests, one JSON line each on stdin, ``{"tests": [[exercise, answer_name, seed], ...], "cells": [...],
    "timeout": seconds}``, with one JSON line on stdout, ``{exercise: grade_hidden's entries, or why there are
    none}``. Each exercise runs in a process forked for it (``grade_hidden``), whose standard streams lead nowhere;
    those still running at the timeout are killed. Nothing a notebook's code does outlives its request."""
    for name in PRELOADED:
        importlib.import_module(name)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        sys.stdout.buffer.write(json.dumps(_grade_notebook(**request)).encode() + b"\n")
        sys.stdout.buffer.flush()


def _grade_notebook(tests: list, cells: list[str], timeout: float) -> dict:
    """One request of ``serve_hidden_tests``: a process an exercise, all at once, all within ``timeout`` s."""
    running = {}
    for exercise, answer_name, seed in tests:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the exercise's process
            try:
                os.close(read)
                nowhere = os.open(os.devnull, os.O_RDWR)
                for stream in (0, 1, 2):
                    os.dup2(nowhere, stream)
                grade_hidden(exercise, answer_name, seed, cells, functools.partial(_write, write))
            finally:
                os._exit(0)
        os.close(write)
        running[exercise] = pid, read
    deadline, reports = time.monotonic() + timeout, {}
    for exercise, (pid, read) in running.items():
        data = _read(read, deadline)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read)
        try:
            reports[exercise] = json.loads(data) if data else \
                f"its hidden tests ran for more than {timeout:g} s" if data is None else "its process stopped"
        except ValueError:
            reports[exercise] = "its process reported nonsense"
    return reports


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read(fd: int, deadline: float, limit: int = 10 ** 7) -> bytes | None:
    """What a pipe holds until its writer closes it (at most ``limit`` bytes), or None at ``deadline``."""
    data = b""
    while len(data) < limit:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    return data
