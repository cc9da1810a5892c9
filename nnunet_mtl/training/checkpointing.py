"""When and how the MTL trainers write ``checkpoint_latest.pth``.

nnU-Net writes it every 50 epochs (``save_every``) with a plain ``torch.save``: a run killed at
epoch 49 restarts from 0, and a kill during the write leaves a truncated file. Here every
checkpoint is written to a temporary name and renamed (atomic on POSIX), and ``checkpoint_latest``
is also written whenever ``checkpoint_minutes`` have passed since the last one (0: every epoch),
through nnU-Net's own periodic-save path, so a killed run loses at most those minutes.
"""
from __future__ import annotations

import os
import time
from typing import Callable


def save_atomically(save: Callable[[str], None], filename: str) -> None:
    """``save(path)`` into ``filename + '.part'``, then rename over ``filename`` (nothing when ``save``
    wrote nothing, e.g. on DDP ranks other than 0)."""
    partial = filename + ".part"
    save(partial)
    if os.path.isfile(partial):
        os.replace(partial, filename)


class LatestCheckpointClock:
    """Says when the next ``checkpoint_latest`` is due: ``minutes`` after the last one (or the start)."""

    def __init__(self, minutes: float):
        self.minutes = float(minutes)
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.minutes * 60.0

    def saved(self) -> None:
        self.last = time.monotonic()
