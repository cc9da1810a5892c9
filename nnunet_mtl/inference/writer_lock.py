"""One writer per output folder (per part): a second run into a folder another run is writing refuses in one
line naming the folder and that run's process.

The lock is an ``fcntl.flock`` on ``OUT/.writer.lock``: the kernel drops it when its process dies however it
dies, so a killed run never leaves a lock behind, and the PID written into the file names the holder in the
refusal. A whole-folder run removes the file when it ends (a run refused for bad input leaves the folder as it
found it); a lock taken on a file that was removed meanwhile is taken again on the new one. ``-num_parts``
processes share the folder: each holds the folder lock shared and its own part's lock
(``OUT/.writer.partIofN.lock``) exclusive, so parts run side by side, while a whole-folder run (one part) and a
second run of the same part are refused.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from typing import Iterator

FOLDER_LOCK = ".writer.lock"


class FolderBusyError(RuntimeError):
    """Another run is writing into the folder; the message names it and that run's PID."""


@contextmanager
def exclusive_writer(folder: str, num_parts: int = 1, part_id: int = 0) -> Iterator[None]:
    """Hold ``folder`` for this run (``num_parts`` > 1: for this part) until the block ends."""
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        with _flock(os.path.join(folder, FOLDER_LOCK), shared=num_parts > 1, folder=folder):
            if num_parts == 1:
                yield
                return
            part = os.path.join(folder, f".writer.part{part_id}of{num_parts}.lock")
            with _flock(part, shared=False, folder=folder, what=f"part {part_id} of {num_parts}"):
                yield
    finally:
        if created:
            try:
                os.rmdir(folder)  # only when this run made it and left nothing in it
            except OSError:
                pass


@contextmanager
def _flock(path: str, shared: bool, folder: str, what: str = "") -> Iterator[None]:
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fh)
            fh.close()
            raise FolderBusyError(f"{folder}: another run (PID {holder}) is writing {what or 'into this folder'}; "
                                  f"wait for it to finish or choose another output folder") from None
        if _same_file(fh, path):
            break
        fh.close()  # the holder before us removed it: lock the file there now
    try:
        if not shared or os.path.getsize(path) == 0:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        yield
    finally:
        if not shared:
            os.remove(path)  # still held: whoever opened it meanwhile sees it is gone and opens the new one
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def _holder(fh, wait_s: float = 1.0) -> str:
    """The PID the holder wrote; it writes it just after taking the lock, so a run refused in that instant
    reads again for up to ``wait_s`` before saying "unknown"."""
    deadline = time.monotonic() + wait_s
    while True:
        fh.seek(0)
        pid = fh.read().strip()
        if pid or time.monotonic() > deadline:
            return pid or "unknown"
        time.sleep(0.02)


def _same_file(fh, path: str) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
