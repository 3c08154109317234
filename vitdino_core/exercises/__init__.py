"""Self-checks for the workshop exercises in notebooks 01-08.

Each exercise in a notebook has one `check_<name>(fn)`: it calls the learner's function on several
shapes, seeds, settings and modes, compares the results with `reference_<name>` (the finished code
of `vitdino_core`, with the learner's signature), and then either prints one short line or raises an
`ExerciseMistake` that names the likely mistake in the learner's words. It never shows the solution.

    check_patchify(patchify_by_hand)          # ok: patchify - matches vitdino_core on 5 cases
    patchify_fn = pick("patchify", patchify_by_hand, patchify)   # yours once its check passed

Every check is written the same way, with the helpers below:

    @reference("attention")                   # what pick() falls back to
    def reference_attention(q, k, v, scale=True): ...

    @check("attention")                       # records the outcome, prints the verdict
    def check_attention(fn):
        for case in CASES:
            got = expect_tensor(fn(...))      # the learner's result
            expect_shape(got, want.shape, axes, "weights", known={wrong shape: "message"})
            expect_same(got, want, {          # the named wrong answers: message -> wrong value
                "the scores are scaled after the softmax: ...": lambda: ...,
            }, "what the result should be")   # when it matches none of them

`close` is the one tolerance rule; `first_match` returns the first wrong answer a result equals.
The checks live in three files: `vit.py` (notebooks 01-04), `dino.py` (notebooks 05-08) and
`dinov2.py` (notebook 10). This file keeps the record of which checks ran and how they ended, so
that later cells can fall back to the reference and a notebook's last cell (`assert_checked([...])`)
can prove that every check really ran.
"""

from __future__ import annotations

import functools
import inspect
import random
import sysconfig
import traceback
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch

F = TypeVar("F", bound=Callable)

# name -> "passed" | "failed" | "todo" (the stub still raises NotImplementedError)
#         | "broken" (the check passed although the function is still the stub: a bug in the check)
STATUS: dict[str, str] = {}
# name -> reference_<name>, the finished version with the learner's signature (see `reference`)
REFERENCES: dict[str, Callable] = {}

_CHECKER_DIR = str(Path(__file__).resolve().parent)
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")}
)


def _learners_frames(tb) -> list[traceback.FrameSummary]:
    """The frames of a traceback that are the learner's: not this checker, not torch or the standard
    library."""
    frames = []
    for frame in traceback.extract_tb(tb):
        path = (
            str(Path(frame.filename).resolve())
            if not frame.filename.startswith("<")
            else frame.filename
        )
        if not path.startswith(_CHECKER_DIR) and not path.startswith(_LIBRARY_DIRS):
            frames.append(frame)
    return frames


class ExerciseMistake(AssertionError):
    """A check failed; the message names the likely mistake.

    In a notebook the red box shows the learner's lines and the mistake, not the checker's code:
    IPython calls `_render_traceback_` instead of printing the traceback. When the learner's
    function raised, that error stays chained (`__cause__`) and its frames in the learner's code
    are shown above the message."""

    def _render_traceback_(self) -> list[str]:
        lines = []
        cause = self.__cause__
        if cause is not None:
            frames = _learners_frames(cause.__traceback__)
            if frames:
                lines.append("Your code raised an error here:")
                lines += "".join(traceback.format_list(frames)).rstrip("\n").splitlines()
        else:
            frames = _learners_frames(self.__traceback__)
            if frames:
                lines += "".join(traceback.format_list(frames[-1:])).rstrip("\n").splitlines()
        return lines + [f"ExerciseMistake: {self}"]


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
    """Register `check_<name>(fn)`: run the body with its own random state, record the outcome,
    print it.

    The body calls `fn` and raises `mistake("...")` when it finds one; what it returns (a short
    string such as "matches vitdino_core on 5 cases") ends the success line. The learner's global
    random state (torch's and Python's `random`) is left as it was.
    """

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def run(fn: Callable, *args, **kwargs) -> None:
            __tracebackhide__ = True  # pytest shows the learner's line, not this frame
            state = random.getstate()
            try:
                with torch.random.fork_rng():
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
                raise ExerciseMistake(
                    f"{name}: your function raised {type(e).__name__}: {e}"
                ) from e
            finally:
                random.setstate(state)
            if is_stub(fn):
                STATUS[name] = "broken"
                raise ExerciseMistake(
                    f"{name}: the check passed a function that still raises "
                    "NotImplementedError; the check itself is wrong"
                )
            STATUS[name] = "passed"
            print(f"ok: {name}" + (f" - {detail}" if detail else ""))

        run.exercise = name
        return run

    return decorate


def reference(name: str) -> Callable[[F], F]:
    """Register `reference_<name>`: the finished version of exercise `name`, with the learner's
    signature."""

    def register(fn: F) -> F:
        REFERENCES[name] = fn
        return fn

    return register


def passed(name: str) -> bool:
    return STATUS.get(name) == "passed"


def pick(name: str, mine: F, core: F | None = None) -> F:
    """The learner's function once its check passed, else the core's (and say so).

    `core` defaults to `reference_<name>`, registered with `@reference(name)`."""
    if passed(name):
        return mine
    if core is None:
        if name not in REFERENCES:
            raise KeyError(
                f"no core version registered for exercise {name!r}; pass it as pick's third"
                " argument"
            )
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
    print(
        f"{len(names) - len(todo)} of {len(names)} exercises pass"
        + (f"; still to do: {', '.join(todo)}" if todo else "")
    )


def reset() -> None:
    """Forget every outcome (tests use it)."""
    STATUS.clear()


# ---- the helpers every check uses: each raises `mistake(...)` with a message in the learner's
# terms

RTOL, ATOL = 1e-4, 1e-5  # the one tolerance rule, see `close`


def expect_tensor(got, what: str = "your function") -> torch.Tensor:
    """The learner's result as a tensor (a NumPy array is converted), else a named mistake."""
    if isinstance(got, np.ndarray):
        return torch.from_numpy(got)
    if not isinstance(got, torch.Tensor):
        raise mistake(f"{what} returned {type(got).__name__}, expected a torch.Tensor")
    return got


def expect_shape(
    got,
    want: Sequence[int],
    axes: Sequence[str] | None = None,
    what: str = "output",
    known: Mapping[tuple, str] | None = None,
) -> None:
    """Compare shapes; `known` maps typical wrong shapes to their message, and when the sizes are
    right but in another order, the message says which axes look swapped."""
    got = expect_tensor(got)
    shape, want = tuple(got.shape), tuple(want)
    if shape == want:
        return
    for wrong, message in (known or {}).items():
        if shape == tuple(wrong):
            raise mistake(message)
    axes = list(axes) if axes else [f"axis {i}" for i in range(len(want))]
    named = "(" + ", ".join(f"{a}={n}" for a, n in zip(axes, want)) + ")"
    message = f"wrong {what} shape {shape}, expected {want} = {named}"
    if len(shape) == len(want) and sorted(shape) == sorted(want):
        moved = [axes[i] for i in range(len(want)) if shape[i] != want[i]]
        message += f": the axes {' and '.join(moved)} look swapped"
    elif got.numel() == torch.Size(want).numel():
        message += ": the right number of values, grouped into the wrong axes"
    raise mistake(message)


def close(got, want) -> bool:
    """The one tolerance rule: same shape, and every value within RTOL of itself or ATOL of the
    largest value (in float64); booleans and integers must be equal. Lists and tuples compare
    item by item."""
    if isinstance(want, (list, tuple)):
        return (
            isinstance(got, (list, tuple))
            and len(got) == len(want)
            and all(close(a, b) for a, b in zip(got, want))
        )
    if isinstance(want, (int, float, np.ndarray)):
        want = torch.as_tensor(want)
    if isinstance(got, (int, float, np.ndarray)):
        got = torch.as_tensor(got)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return False
    got, want = got.detach().cpu(), want.detach().cpu()
    if not (want.is_floating_point() or got.is_floating_point()):
        return torch.equal(got.long(), want.long())
    got, want = got.double(), want.double()
    scale = want.abs().max().item() if want.numel() else 0.0
    return bool(torch.allclose(got, want, rtol=RTOL, atol=ATOL * max(scale, 1e-3)))


def first_match(got, wrong: Mapping[str, object]) -> str | None:
    """The label of the first wrong answer `got` equals (by `close`), if any.

    Each value is a wrong result, or a function of no arguments that computes it (so that only the
    ones needed are computed); None leaves an entry out for this case."""
    for label, value in wrong.items():
        if value is None:
            continue
        if callable(value):
            try:
                value = value()
            except Exception:  # a wrong version that cannot run on this case
                continue
        if close(got, value):
            return label
    return None


def expect_same(got, want, wrong: Mapping[str, object], otherwise: str) -> None:
    """Pass when `got` equals `want`; else raise the label of the first wrong answer it equals, or
    `otherwise` (what the result should be) when it equals none of them."""
    if close(got, want):
        return
    raise mistake(first_match(got, wrong) or otherwise)


def expect_unchanged(
    before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], message: str
) -> None:
    """Raise `message` when a tensor the learner's function received was changed in place."""
    if any(not torch.equal(a, b) for a, b in zip(before, after)):
        raise mistake(message)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# the checks, one file per part of the course (each defines __all__)
from .dino import *  # noqa: E402,F401,F403  notebooks 05-08
from .dinov2 import *  # noqa: E402,F401,F403  notebook 10
from .vit import *  # noqa: E402,F401,F403  notebooks 01-04
