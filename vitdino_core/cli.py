"""One line for a user's mistake, a traceback only for a bug.

Every command (`python -m vitdino_core.train`, `.evaluate`, `.data`) runs its `main` through
`run_cli`. A mistake the user can fix (a bad config value, a missing folder, a file that is not
a checkpoint) raises a `UserError` (or an OSError about a path) and is printed as one line,
`error: <what was wrong and what to do>`, with exit code 2. Anything else is a bug and keeps its
traceback. `--debug` (or `VITDINO_DEBUG=1`) shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in what the user asked for; its message says what was wrong and what to do."""


# OSErrors about a path the user gave (missing, a folder where a file was expected, no permission)
PATH_ERRORS = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
)


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("VITDINO_DEBUG", "") not in ("", "0")


def one_line(e: BaseException) -> str:
    """The error's message on one line; OSErrors say what happened to which path."""
    if (
        isinstance(e, OSError)
        and not isinstance(e, UserError)
        and e.filename is not None
        and e.strerror
    ):
        msg = f"{e.strerror}: {e.filename}"
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` (without --debug in argv); user errors -> one line on stderr and
    exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, *PATH_ERRORS) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
