"""``--coverage`` and ``--interval_tolerance``: the same options in every CLI that writes predictions (predict,
classify, pipeline): the coverage of the conformal sets and intervals, and when an interval is too wide."""
import argparse
from typing import Dict, Sequence, Tuple

from nnunet_mtl.calibration.conformal_store import DEFAULT_COVERAGE


def add_review_arguments(p) -> None:
    """On a parser or an argument group."""
    p.add_argument("--coverage", type=float, default=DEFAULT_COVERAGE,
                   help=f"conformal coverage of the prediction sets (T_set) and intervals (T_low, T_high) "
                        f"(default {DEFAULT_COVERAGE}: on average 9 in 10 cases like the validation cases hold "
                        f"the true class / value); needs the folds' conformal.json")
    p.add_argument("--interval_tolerance", nargs="+", default=[], metavar="TARGET=WIDTH", type=tolerance_item,
                   help="regression target and the widest interval not flagged in needs_review, e.g. "
                        "hippocampus_ml=1.0 (default: only infinite intervals are flagged)")


def tolerance_item(item: str) -> Tuple[str, float]:
    """``"T=1.0"`` -> ``("T", 1.0)``; argparse reports a malformed item as a one-line usage error naming it."""
    name, sep, value = item.partition("=")
    try:
        width = float(value) if sep and name else None
    except ValueError:
        width = None
    if width is None or not width > 0:
        raise argparse.ArgumentTypeError(f"{item!r}: expected TARGET=WIDTH with WIDTH > 0")
    return name, width


def interval_tolerances(items: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    return dict(items or ())
