"""Console-script entry points: run a command's ``main`` and leave the process once its work is done.

With OpenVINO loaded, one ``nnunet_mtl_predict`` run in about ten (2-core CPU, 2026-12-03) finished its work,
wrote and flushed every output and then never exited: the main thread spun at 100 % CPU in a native exit
handler inside SimpleITK's library (gdb: ``__run_exit_handlers``), after Python had already finished. So when
OpenVINO was loaded the process runs Python's own exit functions, flushes, and leaves with ``os._exit``,
skipping the native libraries' static destructors (nothing of ours depends on them: every file is written
atomically and closed before ``main`` returns). ``main(argv)`` itself stays an ordinary function for tests.
"""
from __future__ import annotations
import atexit
import logging
import os
import sys
from typing import Callable, Optional


def _code(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)  # SystemExit("message"), as sys.exit would print it
    return 1


def run(main: Callable[[], Optional[int]]) -> None:
    try:
        code = _code(main())
    except SystemExit as e:
        code = _code(e.code)
    if "openvino" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
