"""``--backend``: the same option in every CLI that runs the network for predictions (predict, classify, pipeline).

The environment variable ``nnunet_mtl_backend`` (auto|torch|openvino) sets its default: the command line is
the only place that reads it; the library takes the backend as an argument."""
import argparse
import os

from nnunet_mtl.inference.openvino_backend import BACKENDS

BACKEND_ENV = "nnunet_mtl_backend"


def backend_default() -> str:
    """``nnunet_mtl_backend`` when set (checked), else auto."""
    value = os.environ.get(BACKEND_ENV, "auto")
    if value not in BACKENDS:
        raise SystemExit(f"error: {BACKEND_ENV}={value!r} is not a backend (choose from {', '.join(BACKENDS)})")
    return value


def add_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=backend_default(), choices=list(BACKENDS),
                   help=f"what runs the network: auto (default; {BACKEND_ENV} in the environment changes it) = "
                        f"OpenVINO on the CPU when installed (2-3x faster per forward on a small CPU, logits within "
                        f"~1e-5 of torch), torch otherwise; torch = nnU-Net's own")
