"""``--backend``: the same option in every CLI that runs the network for predictions (predict, classify)."""
import argparse

from nnunet_mtl.inference.openvino_backend import BACKENDS


def add_backend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="what runs the network: auto (default) = OpenVINO on the CPU when installed (2-3x faster per "
                        "forward on a small CPU, logits within ~1e-5 of torch), torch otherwise; torch = nnU-Net's own")
