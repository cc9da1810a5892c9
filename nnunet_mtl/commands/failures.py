"""How every command ends when it cannot go on: one line on stderr naming the path or value, exit status 2, or
130 after Ctrl-C; finished results stay (each step writes atomically, case by case)."""
from __future__ import annotations

import sys
from typing import Callable

USER_ERRORS = (ValueError, RuntimeError, OSError)  # bad input, a busy or unwritable path, a backend that cannot run


def message(e: BaseException) -> str:
    """One line: an OSError as 'PATH: reason' (its own text names no path), anything else its text."""
    if isinstance(e, OSError) and e.filename is not None:
        target = f" -> {e.filename2}" if e.filename2 is not None else ""
        return f"{e.filename}{target}: {e.strerror or type(e).__name__}"
    return " ".join(str(e).split()) or type(e).__name__


def run_command(prog: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; a user-facing failure is one line and 2, Ctrl-C one line and 130."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; what was finished is kept (run the command again to go on)", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"{prog}: error: {message(e)}", file=sys.stderr)
        return 2
