"""The checks of the course's graded exercises (``course/source/``; the README's syllabus lists them).

``check_<exercise>(answer)`` calls a student's function on fixed cases and returns nothing when it is right, else
raises ``CheckFailed``: its message starts with what is wrong and how to fix it, and IPython shows it alone, with no
traceback (so do nbgrader's Validate dialog and feedback). An exercise that re-implements a ``grto_lib`` function is
compared with it, and an answer that is that function, calls it under any name or is a renamed copy of its source
scores nothing. The other exercises have no reference here: their cases are worked out by hand in the comments, or
properties pin the answer down; their hidden tests (in ``course/source``, not in the release) pass a reference,
``check_<exercise>(answer, reference)``, for more cases.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import math
import sys
import textwrap
import traceback

import numpy as np
import torch
import torch.nn.functional as F

from grto_lib import geometry, losses, metrics, rewards
from grto_lib.tinyworld import toy


class CheckFailed(AssertionError):
    """A failed check. IPython shows its message, the hint, instead of a traceback, in lines Validate shows whole."""

    def _render_traceback_(self) -> list[str]:
        return textwrap.wrap(str(self), 80, break_long_words=False, break_on_hyphens=False)


# --- Calling a student's function -----------------------------------------------------------------------------
def _qualified(function) -> str:
    return f"{function.__module__.removeprefix('grto_lib.')}.{function.__qualname__}"


def _unwrapped(function):
    while getattr(function, "func", None) or getattr(function, "__wrapped__", None):  # a partial, a decorator
        function = getattr(function, "func", None) or function.__wrapped__
    return function


def _shape(function) -> str | None:
    """The function's arguments and body (docstring left out) as an AST dump with every name numbered in order of
    appearance: two functions of one shape are one piece of code under other names. None without source."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    if not isinstance(node, ast.FunctionDef):
        return None
    body = node.body[1:] if ast.get_docstring(node) is not None else node.body
    tree, names = ast.Module(body=[node.args, *body], type_ignores=[]), {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            n.id = names.setdefault(n.id, f"v{len(names)}")
        elif isinstance(n, ast.arg):
            n.arg = names.setdefault(n.arg, f"v{len(names)}")
    return ast.dump(tree)


def _implementations(borrowed) -> list:
    """The functions of ``borrowed``: functions, and every function defined in the modules it names."""
    modules = [b for b in borrowed if not inspect.isfunction(b)]
    return [b for b in borrowed if inspect.isfunction(b)] + [
        f for m in modules for f in vars(m).values() if inspect.isfunction(f) and f.__module__ == m.__name__]


@contextlib.contextmanager
def _calls_into(borrowed):
    """Yields a list that receives the name of each function of ``borrowed`` (see ``_implementations``) that code
    outside ``grto_lib`` calls while the block runs: found by code object, so an alias or a wrapper is seen too, and
    what ``grto_lib``'s other functions call on their own is not counted."""
    codes = {f.__code__: _qualified(f) for f in _implementations(borrowed)}
    called = []

    def profile(frame, event, _):
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if event == "call" and frame.f_code in codes and (caller == __name__ or not caller.startswith("grto_lib.")):
            called.append(codes[frame.f_code])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(previous)


class _Answer:
    """A student's function as the checks call it: ``grto_lib``'s own implementations refused (``borrowed``: the
    functions and modules the exercise re-implements), and ``NotImplementedError`` or any other exception turned
    into a ``CheckFailed`` that names the call."""

    def __init__(self, function, borrowed=()):
        self.function, self.borrowed = function, borrowed
        self.name = getattr(function, "__name__", type(function).__name__)
        shape = _shape(function)
        for implementation in _implementations(borrowed):
            if _unwrapped(function) is implementation:
                raise self._refused(f"is grto_lib's own {_qualified(implementation)}")
            if shape is not None and shape == _shape(implementation):
                raise self._refused(f"is a copy of grto_lib's {_qualified(implementation)}")

    def _refused(self, what: str) -> CheckFailed:
        return CheckFailed(f"{self.name} {what}: the exercise is to write it yourself, and an answer that uses "
                           f"grto_lib's implementation scores no marks")

    def __call__(self, *args):
        try:
            with _calls_into(self.borrowed) as called:
                result = self.function(*args)
        except NotImplementedError:
            raise CheckFailed(f"{self.name} is not implemented yet: replace `raise NotImplementedError()` in its "
                              f"cell with your code, run the cell, then this one") from None
        except Exception as error:
            code = getattr(self.function, "__code__", None)
            lines = [f for f in traceback.extract_tb(error.__traceback__) if code and f.filename == code.co_filename]
            where = f" at `{lines[-1].line}`" if lines else ""
            raise CheckFailed(f"{self.name} raised {type(error).__name__}: {error}{where}, called as {self.name}("
                              f"{', '.join(_show(a) for a in args)})") from None
        if called:
            raise self._refused(f"calls grto_lib's {called[0]}")
        return result


# --- Comparing results ----------------------------------------------------------------------------------------
def _tensor(value) -> torch.Tensor | None:
    """``value`` as a float64 tensor, or None when it is not numbers (None, a string, ragged lists...)."""
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64) if not torch.is_tensor(value) else value,
                               dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _close(a, b, atol=1e-5) -> bool:
    a, b = _tensor(a), _tensor(b)
    return a is not None and b is not None and a.shape == b.shape and torch.allclose(a, b, atol=atol, equal_nan=True)


def _show(value) -> str:
    """A short, readable form of an argument or a result."""
    if isinstance(value, np.generic) or (torch.is_tensor(value) and value.dim() == 0):
        value = value.item()
    if torch.is_tensor(value) or isinstance(value, np.ndarray):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) > 8 or value.ndim > 2:
            return f"<{type(value).__name__} of shape {list(value.shape)}>"
        value = value.tolist()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _compare(call: str, got, want, mistakes=(), atol=1e-5, otherwise="wrong result") -> None:
    """Raise ``CheckFailed`` unless ``got`` is ``want``. ``mistakes``: (what a typical wrong answer returns, hint);
    the message leads with the hint of the first one ``got`` matches, else with ``otherwise``."""
    if _close(got, want, atol):
        return
    hint = next((h for wrong, h in mistakes if _close(got, wrong, atol)), otherwise)
    raise CheckFailed(f"{hint}: {call} returned {_show(got)}, expected {_show(want)}")


def _hidden(reference, cases, check_case) -> None:
    """The hidden tests' extra cases: ``check_case(*case, want=reference(*case))`` for each."""
    if reference is not None:
        for case in cases:
            check_case(*case, want=reference(*case))


# --- Assignment 1: the derivation (notebook 01) ---------------------------------------------------------------
def check_group_advantages(answer) -> None:
    """``group_advantages(rewards [B], group_size) -> [B]``: A_i = (r_i - mean_g) / (std_g + 1e-4), unbiased std."""
    answer = _Answer(answer, (losses,))
    cases = [torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([0.5, 0.5, 0.5, 1.0, 2.0, 0.0]),
             torch.randn(32, generator=torch.Generator().manual_seed(0))]
    for rewards_, group_size in zip(cases, (2, 3, 8)):
        grouped = rewards_.view(-1, group_size)
        centred = grouped - grouped.mean(1, keepdim=True)
        _compare(f"group_advantages({_show(rewards_)}, group_size={group_size})", answer(rewards_.clone(), group_size),
                 losses.group_advantages(rewards_, group_size), [
                     (centred.flatten(), "divide by the group's std: you only subtract the group mean"),
                     ((rewards_ - rewards_.mean()) / (rewards_.std() + 1e-4),
                      "use each group's mean and std (rows of group_size consecutive rewards), not the batch's"),
                     ((centred / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)).flatten(),
                      "use the unbiased std (divide by G - 1), as GRPO and TRL do"),
                     ((centred / grouped.std(1, keepdim=True)).flatten(),
                      "add eps = 1e-4 to the std: a group whose rewards are all equal must get advantages 0, not NaN")])


def check_score_function_gradient(answer, reference=None) -> None:
    """``score_function_gradient(logits [K], picks [N], rewards [N]) -> [K]``: (1/N) sum_i r_i (e_{k_i} - pi)."""
    answer = _Answer(answer, (losses,))

    def check(logits, picks, rewards_, want):
        pi, onehot = torch.softmax(logits, 0), F.one_hot(picks, len(logits)).double()
        r = rewards_.double()[:, None]
        _compare(f"score_function_gradient(logits={_show(logits)}, picks={_show(picks)}, rewards={_show(rewards_)})",
                 answer(logits.clone(), picks.clone(), rewards_.clone()), want, [
                     ((r * onehot).mean(0), "the score is grad log pi_k = e_k - pi: you left out - pi (the softmax's "
                                            "normaliser depends on every logit)"),
                     ((r * pi[picks, None] * (onehot - pi)).mean(0),
                      "use grad log pi_k = grad pi_k / pi_k: you multiplied by pi_k, which gives grad pi_k"),
                     (-torch.as_tensor(want), "the sign is flipped: the estimate is of grad J, the ascent direction"),
                     (len(picks) * torch.as_tensor(want), "average over the N samples, do not sum")])

    # uniform pi = (1/3, 1/3, 1/3): (1/2) [1 (2/3, -1/3, -1/3) + 3 (-1/3, -1/3, 2/3)] = (-1/6, -2/3, 5/6)
    check(torch.zeros(3), torch.tensor([0, 2]), torch.tensor([1.0, 3.0]), want=[-1 / 6, -2 / 3, 5 / 6])
    # pi = (1/2, 1/4, 1/4), one sample of answer 1 with reward 2: 2 (e_1 - pi) = (-1, 3/2, -1/2)
    check(torch.tensor([0.5, 0.25, 0.25]).log(), torch.tensor([1]), torch.tensor([2.0]), want=[-1.0, 1.5, -0.5])
    logits, returns = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    theta = logits.clone().requires_grad_()
    exact = torch.autograd.grad((torch.softmax(theta, 0) * returns).sum(), theta)[0]  # grad of J = sum_k pi_k R_k
    _compare(f"sum_k pi_k score_function_gradient(logits={_show(logits)}, [k], [R_k]), with R = {_show(returns)},",
             sum(p * _tensor(answer(logits.clone(), torch.tensor([k]), returns[k:k + 1].clone()))
                 for k, p in enumerate(torch.softmax(logits, 0))), exact,
             otherwise="the estimate is biased: its mean over the policy must be grad J")
    generator = torch.Generator().manual_seed(3)
    _hidden(reference, [(torch.randn(6, generator=generator), torch.randint(6, (10,), generator=generator),
                         torch.randn(10, generator=generator)) for _ in range(3)], check)


def check_tool_gradient(answer) -> None:
    """``tool_gradient(problem, picks [N]) -> [P]``: -(1/N) sum_i grad_phi L_{k_i}, pinned down by properties: the
    mean of one-prompt estimates g(k), independent of pi and unbiased for every pi, so each g(k) is -grad L_k."""
    answer = _Answer(answer, (toy.exact_gradient, toy.tool_objective, toy.grto_gradient_estimate,
                              toy.finite_difference_gradient))
    problem = toy.make_toy_problem(seed=1)
    size = sum(p.numel() for p in problem.parameters())

    def estimate(picks, of=problem):
        got = _tensor(answer(of, torch.tensor(picks)))
        if got is None or got.shape != (size,):
            raise CheckFailed(f"return the gradient flattened, one tensor of {size} numbers (W's then b's, as "
                              f"toy.exact_gradient does): tool_gradient(problem, picks={picks}) returned {_show(got)}")
        return got

    one = [estimate([k]) for k in range(len(problem.policy_probs))]
    if _close(one[0], one[1]):
        raise CheckFailed("your estimate ignores which prompts were sampled: tool_gradient(problem, [0]) equals "
                          "tool_gradient(problem, [1]); it must be built from the losses of the prompts in picks")
    other = dataclasses.replace(problem, policy_probs=problem.policy_probs.flip(0))
    if not _close(estimate([0], other), one[0]):
        raise CheckFailed("your estimate changes with problem.policy_probs: the picks were drawn from pi already, so "
                          "weighting them by pi counts it twice (and pi does not depend on phi: no score term)")
    _compare("tool_gradient(problem, picks=[0, 1, 1])", estimate([0, 1, 1]), (one[0] + 2 * one[1]) / 3,
             [(one[0] + 2 * one[1], "average over the picks, do not sum")], atol=1e-9)
    exact = toy.exact_gradient(problem)
    _compare("the mean of your estimate over the policy, sum_k pi_k tool_gradient(problem, [k]),",
             sum(p * g for p, g in zip(problem.policy_probs, one)), exact,
             [(-exact, "the sign is flipped: J = -E[L], so its gradient is minus the loss's")], atol=1e-9)


def check_tool_loss_weights(answer) -> None:
    """``tool_loss_weights(advantages [N], valid [N] bool, scheme) -> [N]`` for uniform, positive, advantage."""
    answer = _Answer(answer, (losses,))
    advantages = torch.tensor([1.2, -0.4, 0.0, 0.8, -1.6, 0.5])
    cases = [(advantages, torch.tensor([True, True, False, True, True, False])),
             (advantages, torch.zeros(6, dtype=torch.bool)), (-advantages.abs(), torch.ones(6, dtype=torch.bool))]
    for scheme in ("uniform", "positive", "advantage"):
        for adv, valid in cases:
            got, want = answer(adv.clone(), valid.clone(), scheme), losses.tool_loss_weights(adv, valid, scheme)
            weights, signed = _tensor(got), torch.where(valid, adv, torch.zeros_like(adv))
            invalid_weighted = weights is not None and weights.shape == valid.shape and (weights[~valid] != 0).any()
            _compare(f"tool_loss_weights(advantages={_show(adv)}, valid={_show(valid)}, scheme={scheme!r})", got, want,
                     [(signed / signed.sum(), "clamp negative advantages to 0: a negative weight would maximise the "
                                              "tool loss")] if scheme == "advantage" else [],
                     otherwise="when no rollout is selected every weight is 0 (not NaN, not uniform)" if want.sum() == 0
                     else "an invalid rollout has no prompt for the tool, so its weight must be 0" if invalid_weighted
                     else "the weights of the selected rollouts must sum to 1")


# --- Assignment 2: the bootstrap (notebook 02) ----------------------------------------------------------------
def check_parse_box(answer) -> None:
    """``parse_box(value) -> (x1, y1, x2, y2) | None`` for the ``"bbox"`` value of a decoded JSON answer."""
    answer = _Answer(answer, (rewards,))
    cases = {
        "a box": [10, 20, 30, 40], "floats": [1.5, 2.0, 3.25, 4.0], "a degenerate box (x1 == x2)": [5, 5, 5, 9],
        "three numbers": [1, 2, 3], "five numbers": [1, 2, 3, 4, 5], "a dict": {"x1": 1}, "a string": "1,2,3,4",
        "x2 < x1": [30, 20, 10, 40], "y2 < y1": [10, 40, 30, 20], "a string coordinate": ["10", 20, 30, 40],
        "a boolean coordinate": [True, 20, 30, 40], "NaN": [float("nan"), 20, 30, 40],
        "infinity": [10, 20, float("inf"), 40], "a nested list": [[10, 20], [30, 40], 1, 2],
        "a huge coordinate": [0, 0, 10 ** 30, 5], "None": None,
    }
    for name, value in cases.items():
        got, want = answer(value), rewards.parse_box(value)
        same = (got is None) == (want is None) and (want is None or (isinstance(got, tuple) and _close(got, want)))
        if not same:
            rule = ("it is not a valid box" if want is None else
                    f"clamp each coordinate to +-COORD_LIMIT = {rewards.COORD_LIMIT:g}" if "huge" in name else
                    "a valid box comes back as a tuple of 4 floats")
            raise CheckFailed(f"{rule}: parse_box({value!r}) ({name}) returned {got!r}, expected {want!r}")


def check_tool_loss(answer) -> None:
    """``tool_loss(logits [N, H, W], targets [N, H, W] bool, ignore [N, H, W] bool or None) -> [N]``: BCE + Dice."""
    answer = _Answer(answer, (losses,))
    generator = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(4, 6, 6, generator=generator)
    targets = torch.rand(4, 6, 6, generator=generator) > 0.6
    targets[3], logits[3] = False, -8.0  # an empty target, an (almost) empty prediction: smooth keeps Dice near 0
    ignore = torch.zeros(4, 6, 6, dtype=torch.bool)
    ignore[:2, :, :2] = True
    for mask in (None, ignore):
        w = torch.ones_like(logits) if mask is None else (~mask).float()
        p, t = torch.sigmoid(logits), targets.float()
        bce_pixels = w * F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        bce = bce_pixels.sum((1, 2)) / w.sum((1, 2))
        dice = 1 - (2 * (w * p * t).sum((1, 2)) + 1) / ((w * p).sum((1, 2)) + (w * t).sum((1, 2)) + 1)
        want = losses.tool_loss(logits, targets, mask)
        call = f"tool_loss(logits, targets, ignore={'None' if mask is None else 'a mask of the first 2 columns'})"
        _compare(call, answer(logits.clone(), targets.clone(), None if mask is None else mask.clone()), want, [
            (want.mean(), "return one loss per rollout, shape [N]: the weights average them later"),
            (bce + 1 - (2 * (w * logits * t).sum((1, 2)) + 1) / ((w * logits).sum((1, 2)) + (w * t).sum((1, 2)) + 1),
             "Dice works on probabilities: p = sigmoid(logits)"),
            (bce + 1 - 2 * (w * p * t).sum((1, 2)) / ((w * p).sum((1, 2)) + (w * t).sum((1, 2))),
             "add smooth = 1 to Dice's numerator and denominator: an empty target with an empty prediction must "
             "cost about 0, not 1 or NaN"),
            (losses.tool_loss(logits, targets), "leave the ignore pixels out of BCE and Dice: weight pixels by "
                                                "w = 1 - ignore"),
            (bce_pixels.sum((1, 2)) / 36 + dice, "average BCE over the pixels that count: divide by sum w"),
            (bce, "the loss is BCE + Dice: you return BCE only"), (dice, "the loss is BCE + Dice: not Dice only")])


def check_off_policy_tool_loss(answer, reference=None) -> None:
    """``off_policy_tool_loss(tool_losses [N], logp_policy [N], logp_reference [N], usable [N] bool) -> scalar``:
    sum_usable rho_i L_i / sum_usable rho_i with rho_i = pi_theta(o_i) / pi_ref(o_i); 0 when nothing is usable."""
    answer = _Answer(answer)

    def check(tool_losses, logp_policy, logp_reference, usable, want):
        call = (f"off_policy_tool_loss({_show(tool_losses)}, logp_policy={_show(logp_policy)}, "
                f"logp_reference={_show(logp_reference)}, usable={_show(usable)})")
        got = answer(tool_losses.clone(), logp_policy.clone(), logp_reference.clone(), usable.clone())
        rho = torch.exp(logp_policy.double() - logp_reference.double()) * usable
        upside_down = torch.exp(logp_reference.double() - logp_policy.double()) * usable
        if not usable.any():
            _compare(call, got, 0.0, [(math.nan, "no rollout is usable: return 0, not NaN")])
            return
        _compare(call, got, want, [
            ((upside_down * tool_losses).sum() / upside_down.sum(),
             "the ratio is upside down: rho_i = pi_theta(o_i) / pi_ref(o_i)"),
            ((rho * tool_losses).sum() / usable.sum(), "normalise: divide by the sum of the weights, not the count"),
            ((tool_losses * usable).sum() / usable.sum(), "weight each rollout by rho_i = exp(logp_policy - "
             "logp_reference): the plain mean is BTO's loss, right only while the policy is the reference"),
            (tool_losses.mean(), "leave out the rollouts that are not usable"),
            (math.nan, "exp of a log-probability or of a large log-ratio leaves the float range: subtract the "
                       "largest usable log-ratio before exp (torch.softmax does)")])
        weighted = tool_losses.clone().requires_grad_()
        value = answer(weighted, logp_policy, logp_reference, usable)
        if not (torch.is_tensor(value) and value.requires_grad):
            raise CheckFailed(f"return a tensor with the graph of tool_losses (no .item(), float() or detach): the "
                              f"tool learns from this loss. {call} returned {_show(value)}")

    reference_logps = torch.tensor([-300.0, -310.0, -305.0, -320.0])
    tool_losses, everyone = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4, dtype=torch.bool)
    # the policy is the reference: uniform weights, the plain mean (1 + 2 + 3 + 4) / 4; then without rollout 1
    check(tool_losses, reference_logps, reference_logps, everyone, want=2.5)
    check(tool_losses, reference_logps, reference_logps, torch.tensor([True, False, True, True]), want=8 / 3)
    # rollout 1 three times likelier now: rho = (1, 3, 1, 1), (1 + 6 + 3 + 4) / 6
    check(tool_losses, reference_logps + torch.tensor([0.0, math.log(3), 0.0, 0.0]), reference_logps, everyone,
          want=7 / 3)
    # log-ratios of about 100 (exp overflows float32): rho proportional to (1, e, 1, 1)
    check(tool_losses, reference_logps + torch.tensor([100.0, 101.0, 100.0, 100.0]), reference_logps, everyone,
          want=(8 + 2 * math.e) / (3 + math.e))
    check(tool_losses, reference_logps, reference_logps, torch.zeros(4, dtype=torch.bool), want=0.0)
    generator = torch.Generator().manual_seed(5)
    _hidden(reference, [(torch.rand(8, generator=generator), -300 + 3 * torch.randn(8, generator=generator),
                         -300 + 3 * torch.randn(8, generator=generator), torch.rand(8, generator=generator) > 0.3)
                        for _ in range(3)], check)


# --- Assignment 3: joint training (notebook 03) ---------------------------------------------------------------
def check_clipped_policy_loss(answer) -> None:
    """``clipped_policy_loss(logps [B, T], old_logps [B, T], advantages [B], mask [B, T], epsilon) -> scalar``."""
    answer = _Answer(answer, (losses,))
    generator = torch.Generator().manual_seed(6)
    old = -torch.rand(4, 5, generator=generator) - 0.5
    logps = old + 0.5 * torch.randn(4, 5, generator=generator)  # ratios from about 0.4 to 2.5: clipping matters
    advantages, mask = torch.tensor([1.0, -0.5, 0.8, -1.3]), torch.ones(4, 5)
    mask[1, 3:], mask[2, 1:] = 0, 0
    for epsilon in (0.2, 0.1):
        ratio, a = torch.exp(logps - old), advantages[:, None]
        clipped = ratio.clamp(1 - epsilon, 1 + epsilon) * a
        completions = lambda per_token: -((per_token * mask).sum(1) / mask.sum(1)).mean()  # noqa: E731
        x = logps.clone().requires_grad_()
        got = answer(x, old.clone(), advantages.clone(), mask.clone(), epsilon)
        want = losses.clipped_policy_loss(logps, old, advantages, mask, epsilon)
        _compare(f"clipped_policy_loss(logps, old_logps, advantages={_show(advantages)}, mask, epsilon={epsilon})",
                 got, want, [
                     (completions(torch.max(ratio * a, clipped)), "take the min of the two terms, not the max: the "
                                                                  "clipped objective is a pessimistic bound"),
                     (completions(ratio * a), "clip the ratio to [1 - epsilon, 1 + epsilon]"),
                     (-(torch.min(ratio * a, clipped) * mask).sum() / mask.sum(),
                      "average each completion's tokens first, then the completions (you averaged all tokens at once)"),
                     (-torch.min(ratio * a, clipped).mean(1).mean(), "only completion tokens count: multiply by mask "
                                                                     "and divide by each completion's mask sum"),
                     (-want, "the loss is the objective negated (the optimizer minimises it)")])
        if not torch.is_tensor(got) or not got.requires_grad:
            raise CheckFailed("return a tensor with a gradient w.r.t. logps: the policy learns from this loss")
        x_want = logps.clone().requires_grad_()
        gradient = torch.autograd.grad(got, x, allow_unused=True)[0]
        _compare("the gradient w.r.t. logps of your loss", torch.zeros(4, 5) if gradient is None else gradient,
                 torch.autograd.grad(losses.clipped_policy_loss(x_want, old, advantages, mask, epsilon), x_want)[0],
                 [(torch.zeros(4, 5), "the loss must be differentiable in logps: do not detach them")])


def check_on_target_weights(answer) -> None:
    """``on_target_weights(valid [N] bool, boxes [N, 4], target_masks [N, H, W] bool) -> [N]``: uniform over the valid
    rollouts whose box has IoU > 0.5 with the target's tight box; all 0 when none."""
    answer = _Answer(answer, (losses, geometry))
    target = torch.zeros(6, 10, 10, dtype=torch.bool)
    target[:5, 2:6, 2:6] = True  # tight box (2, 2, 6, 6), area 16; rollout 5's target is empty
    boxes = torch.tensor([[2, 2, 6, 6], [2, 2, 6, 10], [3, 3, 6, 6], [2, 2, 6, 6], [7, 7, 9, 9], [2, 2, 6, 6]],
                         dtype=torch.float32)  # box IoUs 1, 16/32 = 0.5, 9/16, 1 (invalid), 0, 0 (empty target)
    valid = torch.tensor([True, True, True, False, True, True])
    third, fifth = 1 / 3, 1 / 5
    _compare("on_target_weights(valid, boxes, target_masks) on the case in the exercise's text",
             answer(valid.clone(), boxes.clone(), target.clone()), [0.5, 0, 0.5, 0, 0, 0], [
                 ([third, third, third, 0, 0, 0], "on target means box IoU > 0.5, strictly: rollout 1's IoU is 0.5"),
                 ([1, 0, 0, 0, 0, 0], "the tight box's x2 and y2 are pixel edges, the last column or row + 1: "
                                      "rollout 2's box (3, 3, 6, 6) has IoU 9/16 with (2, 2, 6, 6)"),
                 ([third, 0, third, third, 0, 0], "an invalid rollout gets weight 0, even with a box on target"),
                 ([fifth, 0, fifth, 0, 0, 0], "normalise over the selected rollouts: their weights sum to 1"),
                 ([fifth] * 3 + [0] + [fifth] * 2, "weight only the rollouts whose box matches the target's"),
                 ([third, 0, third, 0, 0, third], "an empty target is never matched")])
    _compare("on_target_weights(valid, boxes, target_masks) with no box on target",
             answer(valid.clone(), boxes[[4, 4, 4, 4, 4, 4]], target.clone()), [0.0] * 6,
             [([math.nan] * 6, "when no rollout is selected every weight is 0, not NaN")])


def soft_mask_reward(tool_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A differentiable mask reward [N] of logits [N, H, W] against bool targets [N, H, W]: the soft IoU,
    1 - ``losses.tool_loss(kind="soft_iou")``, in [0, 1]."""
    return 1 - losses.tool_loss(tool_logits, targets, kind="soft_iou")


def _surrogate_case(seed: int):
    """(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size) of 8 rollouts."""
    generator = torch.Generator().manual_seed(seed)
    old_logps = -torch.rand(8, 6, generator=generator)
    logps = old_logps + 0.1 * torch.randn(8, 6, generator=generator)  # a later update of the same rollouts
    completion_mask = torch.ones(8, 6)
    completion_mask[::3, 4:] = 0
    targets = torch.zeros(8, 12, 12, dtype=torch.bool)
    targets[:, 3:9, 4:10] = True
    return (logps, old_logps, completion_mask, 2 * torch.randn(8, 12, 12, generator=generator), targets,
            torch.rand(8, generator=generator), 4)


def check_grto_surrogate(answer, reference=None) -> None:
    """``grto_surrogate(logps, old_logps, completion_mask, tool_logits, targets, other_rewards, group_size,
    tool_weight) -> scalar``, checked through what the stop-gradient implies (and against ``reference``)."""
    answer = _Answer(answer)
    name = answer.name

    def run(case, tool_weight):
        x, y = case[0].clone().requires_grad_(), case[3].clone().requires_grad_()
        value = answer(x, case[1].clone(), case[2].clone(), y, case[4].clone(), case[5].clone(), case[6], tool_weight)
        if not torch.is_tensor(value) or value.dim() != 0 or not value.requires_grad:
            raise CheckFailed(f"{name} must return a scalar tensor with a gradient, got {_show(value)}")
        gradients = torch.autograd.grad(value, (x, y), allow_unused=True)
        return value.detach(), *(torch.zeros_like(t) if g is None else g for t, g in zip((x, y), gradients))

    case = _surrogate_case(0)
    value, policy_grad, tool_grad = run(case, 0.5)
    if not policy_grad.abs().sum() > 0:
        raise CheckFailed("the policy's log-probabilities get no gradient: add the clipped policy loss")
    moved = (case[0] + 0.3, *case[1:])
    if not _close(run(moved, 0.5)[2], tool_grad):
        raise CheckFailed("the policy loss sends gradient into the tool through the advantages (the tool's gradient "
                          "changes when only the policy's log-probs do): compute them from the rewards with a "
                          "stop-gradient (rewards.detach()), so the tool learns only from tool_weight * its own loss")
    y = case[3].clone().requires_grad_()
    mean_loss = losses.tool_loss(y, case[4]).mean()
    own = torch.autograd.grad(0.5 * mean_loss, y)[0]
    _compare(f"the tool's gradient of {name}(..., tool_weight=0.5)", tool_grad, own, [
        (own / 0.5, "multiply the tool loss by tool_weight"),
        (own * len(y), "average the tool losses with uniform weights 1/N, do not sum them")], atol=1e-6)
    if not _close(run(case, 0.0)[1], policy_grad):
        raise CheckFailed("the policy's gradient changes with tool_weight: tool_weight multiplies the tool loss only")
    on_policy = (case[1].clone(), *case[1:])  # ratio 1: the policy loss is -mean(A) = 0, A summing to 0 per group
    _compare(f"{name} on its first update (logps == old_logps), where the policy loss is -mean A = 0,",
             run(on_policy, 0.5)[0], 0.5 * mean_loss.detach(), atol=1e-5)

    for seed in (1, 2) if reference is not None else ():
        case = _surrogate_case(seed)
        x, y = case[0].clone().requires_grad_(), case[3].clone().requires_grad_()
        wanted = reference(x, *case[1:3], y, *case[4:], 0.7)
        expected = (wanted.detach(), *torch.autograd.grad(wanted, (x, y)))
        for what, got, want in zip(("the loss", "the policy's gradient", "the tool's gradient"), run(case, 0.7),
                                   expected):
            _compare(f"{what} of {name} on a hidden case (seed {seed})", got, want, atol=1e-5)


def check_micro_batch_loss(answer, reference=None) -> None:
    """``micro_batch_loss(policy_loss, tool_losses [n], weights [n], tool_weight, accumulation_steps) -> scalar``."""
    answer = _Answer(answer)
    already_divided = "the policy loss arrives already divided by accumulation_steps: divide only the tool term"

    def check(policy_loss, tool_losses, weights, tool_weight, steps, want):
        weighted = (weights * tool_losses).sum()
        call = (f"micro_batch_loss(policy_loss={policy_loss.item():.4g}, tool_losses={_show(tool_losses)}, "
                f"weights={_show(weights)}, tool_weight={tool_weight}, accumulation_steps={steps})")
        _compare(call, answer(policy_loss.clone(), tool_losses.clone(), weights.clone(), tool_weight, steps), want, [
            (policy_loss + tool_weight * weighted, "divide the tool term by accumulation_steps, as TRL divides its "
                                                   "policy loss: else the tool's step is accumulation_steps times "
                                                   "too large"),
            ((policy_loss + tool_weight * weighted) / steps, already_divided),
            (policy_loss / steps + tool_weight * weighted, already_divided),
            (policy_loss + tool_weight * tool_losses.mean() / steps, "weight the tool losses with weights, not their "
                                                                      "plain mean")])

    # 0.6 + 0.2 (0.25 * 1 + 0.75 * 3) / 4 = 0.6 + 0.5 / 4
    check(torch.tensor(0.6), torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75]), 0.2, 4, want=0.725)
    check(torch.tensor(0.6), torch.tensor([1.0, 3.0]), torch.tensor([0.25, 0.75]), 0.2, 1, want=1.1)
    generator = torch.Generator().manual_seed(7)
    _hidden(reference, [(torch.rand((), generator=generator), torch.rand(4, generator=generator),
                         torch.softmax(torch.randn(4, generator=generator), 0), 0.5, k) for k in (2, 3)], check)


# --- Assignment 4: evaluation (notebook 04) -------------------------------------------------------------------
def check_giou_ciou(answer) -> None:
    """``giou_ciou(preds, gts, ignores) -> (giou, ciou)``: lists of (H, W) bool arrays, a pred None when missing."""
    answer = _Answer(answer, (metrics,))
    gts = [np.zeros((6, 6), dtype=bool) for _ in range(4)]
    gts[0][1:4, 1:5] = gts[1][2:5, 2:5] = gts[3][0:2, 0:3] = True  # sample 2: an empty target
    first = np.zeros((6, 6), dtype=bool)
    first[1:5, 2:6] = True
    ignore = np.zeros((6, 6), dtype=bool)
    ignore[4:, :] = True  # drops sample 0's prediction's last row
    preds, ignores = [first, None, np.zeros((6, 6), dtype=bool), gts[3].copy()], [ignore, None, None, None]
    both = lambda s: (s["giou"], s["ciou"])  # noqa: E731
    want = both(metrics.segmentation_scores(preds, gts, ignores))
    unions = [metrics.mask_iou(np.zeros_like(g) if p is None else p, g, m) for p, g, m in zip(preds, gts, ignores)]
    kept = [k for k, p in enumerate(preds) if p is not None]
    dropped = metrics.segmentation_scores(*([seq[k] for k in kept] for seq in (preds, gts, ignores)))
    got = answer([None if p is None else p.copy() for p in preds], [g.copy() for g in gts], list(ignores))
    _compare("giou_ciou(preds, gts, ignores) on the exercise's four samples", got, want, [
        (both(metrics.segmentation_scores(preds, gts)), "leave the ignore pixels out of I and U"),
        (both(dropped),
         "a missing answer (None) counts as an empty mask, IoU 0: never drop it"),
        ((np.mean([i / u if u else 0.0 for i, u in unions]), want[1]),
         "a sample whose union is empty (empty target, empty prediction) counts 1.0 in gIoU, as LISA does"),
        ((want[0], want[0]), "cIoU is sum of I / sum of U over the samples, not the mean of the ratios"),
        ((want[1], want[0]), "you swapped them: gIoU is the mean of the ratios, cIoU the ratio of the sums")])
    empty, hint = [np.zeros((3, 3), dtype=bool)] * 2, "when every union is empty cIoU is 1.0 (nothing to miss)"
    _compare("giou_ciou([empty, empty], [empty, empty], [None, None])", answer(list(empty), list(empty), [None, None]),
             (1.0, 1.0), [((1.0, 0.0), f"{hint}, not 0"), ((1.0, math.nan), f"{hint}, not NaN")])


def check_pass_at_k(answer, reference=None) -> None:
    """``pass_at_k(correct [S, n] bool, k) -> float``: mean over prompts of 1 - C(n - c, k) / C(n, k)."""
    answer = _Answer(answer)

    def check(correct, k, want):
        c, n = correct.sum(1).double(), correct.shape[1]
        _compare(f"pass_at_k({correct.int().tolist()}, k={k})", answer(correct.clone(), k), want, [
            ((1 - (1 - c / n) ** k).mean(), "draw k distinct samples of the n (without replacement): C(n - c, k) / "
                                            "C(n, k) is the chance that none of them is correct"),
            ((c > 0).double().mean(), "pass@k depends on k: that is pass@n, some of all n samples correct"),
            ((c / n).mean(), "pass@k depends on k: that is pass@1, the share of correct samples")])

    two = torch.tensor([[True, False, False, True]])
    check(two, 1, want=0.5)
    check(two, 2, want=5 / 6)  # 1 - C(2, 2) / C(4, 2) = 1 - 1/6
    check(two, 4, want=1.0)
    check(torch.zeros(1, 4, dtype=torch.bool), 2, want=0.0)
    check(torch.tensor([[True, False, False, True], [False, False, False, True]]), 2, want=(5 / 6 + 1 / 2) / 2)
    generator = torch.Generator().manual_seed(8)
    _hidden(reference, [(torch.rand(5, 6, generator=generator) > 0.6, k) for k in (1, 3, 5)], check)


def check_paired_difference(answer, reference=None) -> None:
    """``paired_difference(iou_a [n], iou_b [n]) -> (mean, standard_error)`` of d_i = a_i - b_i, SE = s_d / sqrt(n)."""
    answer = _Answer(answer)

    def check(a, b, want):
        d, n = (a - b).double(), len(a)
        _compare(f"paired_difference({_show(a)}, {_show(b)})", answer(a.clone(), b.clone()), want, [
            ((d.mean(), math.sqrt((a.double().var() + b.double().var()) / n)),
             "the samples are paired (both methods on the same test images): use the std of the differences, "
             "not of each method"),
            ((d.mean(), d.std(unbiased=False) / math.sqrt(n)), "use the unbiased std of the differences (n - 1)"),
            ((d.mean(), d.std()), "divide the std by sqrt(n): the standard error is of the mean"),
            ((-d.mean(), d.std() / math.sqrt(n)), "the difference is a - b")])

    # d = (0.1, 0.2, 0, 0.3): mean 0.15, squared deviations sum 0.05, s = sqrt(0.05 / 3), SE = s / 2
    check(torch.tensor([0.5, 0.7, 0.2, 0.6]), torch.tensor([0.4, 0.5, 0.2, 0.3]), want=(0.15, math.sqrt(0.05 / 3) / 2))
    generator = torch.Generator().manual_seed(9)
    _hidden(reference, [(torch.rand(n, generator=generator), torch.rand(n, generator=generator)) for n in (5, 20)],
            check)
