"""``--aggregation`` / ``--foreground_floor``: the same two options in every CLI that predicts heads."""
import argparse

from nnunet_mtl.inference.case_aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR


def add_aggregation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregation", default=DEFAULT_AGGREGATION, choices=list(AGGREGATIONS),
                   help=f"how tile head outputs combine into the case prediction (default {DEFAULT_AGGREGATION}; "
                        f"floored: weight = floor + (1 - floor) * tile foreground)")
    p.add_argument("--foreground_floor", type=float, default=DEFAULT_FOREGROUND_FLOOR,
                   help=f"the floor of --aggregation floored, in [0, 1] (default {DEFAULT_FOREGROUND_FLOOR})")
