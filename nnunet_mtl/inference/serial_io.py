"""Image files are read and written one at a time per process, whichever thread asks.

The threaded engine and the trainer's final validation read, export and score cases in threads of one process.
SimpleITK (ITK's NIfTI and DICOM readers) is not safe for concurrent reads: it crashes now and then with a
segfault or glibc heap corruption (SimpleITK issue #74, #805; seen here once in a final validation:
"corrupted size vs. prev_size"). The predictor's plans manager (``nnUNetPredictorMTL.plans_manager``) therefore
hands out its reader/writer class with ``read_images``, ``read_seg`` and ``write_seg`` under one process-wide
lock, so nnU-Net's own functions (``preprocessor.run_case``, ``export_prediction_from_logits``,
``compute_metrics``) take the lock without being copied. Resampling, the network and the metrics' arithmetic
still run in parallel; file access is milliseconds to a second per case.
"""
from __future__ import annotations

import threading
from typing import Dict, Optional, Type

from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

IMAGE_IO_LOCK = threading.RLock()
LOCKED_METHODS = ("read_images", "read_seg", "write_seg")
_CLASSES: Dict[type, type] = {}


class SerialIO:
    """Marks a reader/writer class whose file access holds ``IMAGE_IO_LOCK``."""


def serial_reader_writer(cls: Type[BaseReaderWriter]) -> Type[BaseReaderWriter]:
    """``cls`` with its reads and writes under ``IMAGE_IO_LOCK`` (one subclass per class, made once)."""
    if issubclass(cls, SerialIO):
        return cls
    if cls not in _CLASSES:
        def locked(name):
            def method(self, *args, **kwargs):
                with IMAGE_IO_LOCK:
                    return getattr(cls, name)(self, *args, **kwargs)
            method.__name__ = name
            return method
        _CLASSES[cls] = type(cls.__name__, (SerialIO, cls), {n: locked(n) for n in LOCKED_METHODS}
                             | {"__module__": __name__, "__qualname__": f"serial.{cls.__name__}"})
    return _CLASSES[cls]


class SerialIOPlansManager(PlansManager):
    """nnU-Net's plans manager whose ``image_reader_writer_class`` reads and writes under the lock."""

    @property
    def image_reader_writer_class(self) -> Type[BaseReaderWriter]:
        return serial_reader_writer(PlansManager.image_reader_writer_class.fget(self))


def serialized(plans_manager: Optional[PlansManager]) -> Optional[PlansManager]:
    """The same plans, read and written under the lock (None and an already serialized manager as they are)."""
    if plans_manager is None or isinstance(plans_manager, SerialIOPlansManager):
        return plans_manager
    return SerialIOPlansManager(plans_manager.plans)
