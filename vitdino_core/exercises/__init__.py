"""Self-checks for the workshop exercises in notebooks 01-08.

Each exercise in a notebook has one `check_<name>(fn)`: it calls the learner's function on several
shapes, seeds and edge cases, compares it with the finished code in `vitdino_core`, and then either
prints one short line or raises an `ExerciseMistake` (an `AssertionError`) that names the likely
mistake in the learner's words ("softmax over the wrong axis: rows do not sum to 1"). It never shows
the solution.

    check_patchify(patchify_by_hand)          # ok: patchify - matches vitdino_core on 5 cases
    patchify_fn = pick("patchify", patchify_by_hand, patchify)   # yours once its check passed

The checks live in two files, one per half of the course: `vit.py` (notebooks 01-04, the Vision
Transformer) and `dino.py` (notebooks 05-08, DINO and its evaluation). This file keeps the record of
which checks ran and how they ended, so that later cells can fall back to the core's version and a
notebook's last cell (`assert_checked([...])`) can prove that every check really ran.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence, TypeVar

import torch

F = TypeVar("F", bound=Callable)

# name -> "passed" | "failed" | "todo" (the stub still raises NotImplementedError)
#         | "broken" (the check passed although the function is still the stub: a bug in the check)
STATUS: dict[str, str] = {}
# name -> the core's version of the exercise, with the learner's signature (see `reference`)
REFERENCES: dict[str, Callable] = {}


class ExerciseMistake(AssertionError):
    """A check failed; the message names the likely mistake."""


def mistake(message: str) -> ExerciseMistake:
    return ExerciseMistake(message)


def is_stub(fn: Callable) -> bool:
    """True for a function (or a class's methods) whose code still raises NotImplementedError."""
    codes = []
    if inspect.isclass(fn):
        codes = [f.__code__ for f in vars(fn).values() if inspect.isfunction(f)]
    elif hasattr(fn, "__code__"):
        codes = [fn.__code__]
    return any("NotImplementedError" in c.co_names for c in codes)


def check(name: str) -> Callable[[Callable], Callable]:
    """Decorator for `check_<name>(fn)` functions: records the outcome and prints the verdict.

    The body calls `fn` and raises `mistake("...")` when it finds one; what it returns (a short
    string such as "matches vitdino_core on 5 cases") ends the success line.
    """

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(fn: Callable, *args, **kwargs) -> None:
            __tracebackhide__ = True  # IPython and pytest show the learner's cell, not this frame
            try:
                detail = body(fn, *args, **kwargs)
            except NotImplementedError as e:
                STATUS[name] = "todo"
                task = str(e) or "replace the `raise NotImplementedError` line with your code"
                raise ExerciseMistake(f"{name}: not written yet - {task}") from None
            except ExerciseMistake as e:
                STATUS[name] = "failed"
                raise ExerciseMistake(f"{name}: {e}") from None
            except Exception as e:  # the learner's code crashed: show its error, not ours
                STATUS[name] = "failed"
                raise ExerciseMistake(f"{name}: your function raised {type(e).__name__}: {e}") from e
            if is_stub(fn):
                STATUS[name] = "broken"
                raise ExerciseMistake(f"{name}: the check passed a function that still raises "
                                      "NotImplementedError; the check itself is wrong")
            STATUS[name] = "passed"
            print(f"ok: {name}" + (f" - {detail}" if detail else ""))

        run.exercise = name
        return run

    return decorate


def reference(name: str) -> Callable[[F], F]:
    """Decorator: register the core's version of exercise `name` (same signature as the learner's)."""

    def register(fn: F) -> F:
        REFERENCES[name] = fn
        return fn

    return register


def passed(name: str) -> bool:
    return STATUS.get(name) == "passed"


def pick(name: str, mine: F, core: F | None = None) -> F:
    """The learner's function once its check passed, else the core's (and say so).

    `core` defaults to the version registered for `name` with `@reference(name)`."""
    if passed(name):
        return mine
    if core is None:
        if name not in REFERENCES:
            raise KeyError(f"no core version registered for exercise {name!r}; pass it as pick's third argument")
        core = REFERENCES[name]
    print(f"note: {name} - using vitdino_core's version until your check passes")
    return core


def summary() -> dict[str, str]:
    """Print and return each exercise checked in this kernel and its outcome."""
    for name, status in STATUS.items():
        print(f"{status:>7}  {name}")
    return dict(STATUS)


def assert_checked(names: Sequence[str]) -> None:
    """Fail unless every named check ran (passed, failed or found the stub) and none passed a stub.

    A notebook's last cell calls it with all its exercises: in CI the exercise versions run with
    their stubs in place, and this proves that each check cell ran and recognised the stub.
    """
    summary()
    missing = [n for n in names if n not in STATUS]
    assert not missing, f"these checks never ran: {missing}"
    broken = [n for n in names if STATUS[n] == "broken"]
    assert not broken, f"these checks passed a stub that raises NotImplementedError: {broken}"
    todo = [n for n in names if STATUS[n] != "passed"]
    print(f"{len(names) - len(todo)} of {len(names)} exercises pass" + (f"; still to do: {', '.join(todo)}"
                                                                        if todo else ""))


def reset() -> None:
    """Forget every outcome (tests use it)."""
    STATUS.clear()


# ---- helpers for writing checks: each raises `mistake(...)` with a message in the learner's terms

def expect_tensor(got, what: str = "your function") -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise mistake(f"{what} returned {type(got).__name__}, expected a torch.Tensor")
    return got


def expect_shape(got, want: Sequence[int], axes: Sequence[str] | None = None, what: str = "output") -> None:
    """Compare shapes; when the sizes are right but in another order, say which axes look swapped."""
    got = expect_tensor(got)
    shape, want = tuple(got.shape), tuple(want)
    if shape == want:
        return
    axes = list(axes) if axes else [f"axis {i}" for i in range(len(want))]
    named = "(" + ", ".join(f"{a}={n}" for a, n in zip(axes, want)) + ")"
    message = f"wrong {what} shape {shape}, expected {want} = {named}"
    if len(shape) == len(want) and sorted(shape) == sorted(want):
        moved = [axes[i] for i in range(len(want)) if shape[i] != want[i]]
        message += f": the axes {' and '.join(moved)} look swapped"
    elif got.numel() == torch.Size(want).numel():
        message += ": the right number of values, grouped into the wrong axes"
    raise mistake(message)


def close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol)


def expect_close(got, want: torch.Tensor, hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Shapes first (with the swapped-axes message), then values; `hint` says what to look at."""
    expect_shape(got, want.shape)
    if not close(got, want, atol, rtol):
        err = (got.float() - want.float()).abs().max().item()
        raise mistake(f"wrong values (largest difference {err:.3g}): {hint}")


def first_match(got: torch.Tensor, candidates: dict[str, torch.Tensor], atol: float = 1e-5) -> str | None:
    """The name of the first typical wrong answer `got` equals, if any."""
    for label, value in candidates.items():
        if close(got, value, atol=atol):
            return label
    return None


# the checks, one file per half of the course (each defines __all__)
from .vit import *  # noqa: E402,F401,F403  notebooks 01-04
from .dino import *  # noqa: E402,F401,F403  notebooks 05-08
