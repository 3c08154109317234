"""Self-checks for the workshop exercises in notebooks 01-08.

Each exercise in a notebook has one `check_<name>(fn)`: it calls the learner's function on several
shapes, seeds and edge cases, compares it with the finished code in `vitdino_core`, and then either
prints one short line or raises an `AssertionError` that names the likely mistake in the learner's
words ("softmax over the wrong axis: rows do not sum to 1"). It never shows the solution.

    check_patchify(patchify)                               # ok: patchify - matches the core on 4 cases
    patchify = pick("patchify", patchify, core_patchify)   # yours once its check passed, else the core's

The checks live in two files, one per half of the course: `vit.py` (notebooks 01-04, the Vision
Transformer) and `dino.py` (notebooks 05-08, DINO and its evaluation). This file keeps the record of
which checks ran and passed, so that later cells can fall back to the core's version and CI can
prove that every check really ran.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

# name -> "passed" | "failed" | "todo" (the stub still raises NotImplementedError)
STATUS: dict[str, str] = {}


class ExerciseMistake(AssertionError):
    """A check failed; the message names the likely mistake."""


def mistake(message: str) -> ExerciseMistake:
    return ExerciseMistake(message)


def check(name: str) -> Callable[[Callable], Callable]:
    """Decorator for `check_<name>(fn)` functions: records the outcome and prints the verdict."""

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(fn: Callable, *args, **kwargs) -> None:
            try:
                detail = body(fn, *args, **kwargs)
            except NotImplementedError as e:
                STATUS[name] = "todo"
                raise ExerciseMistake(f"{name}: not written yet ({e or 'the stub still raises'})") from None
            except ExerciseMistake as e:
                STATUS[name] = "failed"
                raise ExerciseMistake(f"{name}: {e}") from None
            except Exception as e:  # the learner's code crashed: show its error, not ours
                STATUS[name] = "failed"
                raise ExerciseMistake(f"{name}: your function raised {type(e).__name__}: {e}") from e
            STATUS[name] = "passed"
            print(f"ok: {name}" + (f" - {detail}" if detail else ""))

        run.exercise = name
        return run

    return decorate


def passed(name: str) -> bool:
    return STATUS.get(name) == "passed"


def pick(name: str, mine: F, core: F) -> F:
    """The learner's function once its check passed, else the core's (and say so)."""
    if passed(name):
        return mine
    print(f"note: {name} - using vitdino_core's version until your check passes")
    return core


def summary() -> dict[str, str]:
    """Print and return each exercise checked in this kernel and its outcome."""
    for name, status in STATUS.items():
        print(f"{status:>7}  {name}")
    return dict(STATUS)


def assert_checked(names: list[str]) -> None:
    """Fail unless every named check ran (passed, failed or found a stub): proof for CI."""
    missing = [n for n in names if n not in STATUS]
    assert not missing, f"these checks never ran: {missing}"


from .dino import *  # noqa: E402,F401,F403  the checks of notebooks 05-08 (check_dino_loss, ...) and their core_* fallbacks
