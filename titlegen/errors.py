"""User errors: one base class, and the entry point's rule for them (`error: <message>`, exit status 2, no traceback).

A `TitleGenError` is raised for what a user can fix (a data file, an option, a model name, a checkpoint); its
message names the file:line or option, the value, and the fix. Anything else is a bug or an environment failure and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "TITLEGEN_DEBUG"


class TitleGenError(Exception):
    """A problem the user can fix; `main.py` prints `error: <message>` and exits with `exit_status`."""

    exit_status = 2


class DataError(TitleGenError, ValueError):
    """A data file that cannot be used; the message lists every problem found, each with file:line."""


class OptionError(TitleGenError, ValueError):
    """An option value that cannot work (out of range, or not fitting the model); names the option and the fix."""


class ModelError(TitleGenError):
    """A model name or path that cannot be loaded (no such file, not on the hub or in its cache)."""


class CheckpointError(TitleGenError):
    """A checkpoint that is missing, unsafe, unreadable, or of another experiment; names the path and the fix."""


def run_main(main: Callable[[list[str]], Any], argv: list[str]) -> int:
    """Run `main(argv)` as a command: a `TitleGenError` becomes one `error:` line on stderr and its exit status.

    `--debug` anywhere in `argv` (or `TITLEGEN_DEBUG=1`) lets the error's traceback through as well. Exceptions that
    are not user errors always keep their traceback.
    """
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        main(argv)
    except TitleGenError as err:
        if debug:
            traceback.print_exc()
        message = str(err)
        print(message if message.startswith("error:") else f"error: {message}", file=sys.stderr, flush=True)
        return err.exit_status
    return 0
