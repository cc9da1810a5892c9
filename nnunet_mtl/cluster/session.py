"""Ray, the optional engine beyond one machine: one place that says it is missing and that joins (or starts)
the cluster, for the inference actors (``inference.ray_engine``) and the fold tasks (``training.fold_runs``)."""
from __future__ import annotations

import contextlib
import re
from typing import Iterator, Optional

INSTALL_HINT = "pip install nnunet_mtl[cluster]"


def require_ray() -> None:
    """A one-line error when Ray Data is missing (it is an optional extra)."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError(f"engine 'ray' needs Ray Data, which is not installed ({INSTALL_HINT})") from None


@contextlib.contextmanager
def connected(address: Optional[str] = None) -> Iterator[object]:
    """The ``ray`` module, connected: to the cluster this process already joined, else to ``address`` (or
    ``ray.init``'s default: RAY_ADDRESS, else a new local cluster), which is left again at the end."""
    require_ray()
    import ray
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): (.+)$")


def failure_line(e: BaseException) -> str:
    """What failed on a worker, in one line: the worker's own exception (not Ray's wrapper with its traceback),
    else the first sentence of Ray's text (a lost worker or node)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray"):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"
    text = str(e)
    for line in text.splitlines():  # Ray Data and actor constructors carry the worker's exception in the text
        raised = _RAISED.match(line.strip())
        if raised and not raised.group(1).startswith("ray."):
            return f"{raised.group(1).rsplit('.', 1)[-1]}: {raised.group(2).strip()}"
    first = " ".join(text.split()).split(". ")[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
