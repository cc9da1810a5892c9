"""Thin CLI over ``split_tools.splits``: make folds from a dataset.json and write splits_final.json.

Run as ``python -m split_tools`` (split_tools/__main__.py calls ``main`` here)."""
import argparse
import os
import sys

from nnunet_mtl.commands.failures import run_command
from split_tools.splits import DEFAULT_SEED, MODES, make_splits, write_splits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m split_tools", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset_json", required=True, help="dataset.json (raw or preprocessed) or its folder")
    p.add_argument("--out", default=None, help="splits_final.json path or folder (default: next to dataset.json)")
    p.add_argument("--mode", choices=MODES, default="stratified")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--target", default=None, help="classification target to stratify on (default: the first)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--test_fraction", type=float, default=0.0, help="cases kept out of every fold")
    p.add_argument("--overwrite", action="store_true", help="replace a different existing splits file")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    out = a.out or (a.dataset_json if os.path.isdir(a.dataset_json) else os.path.dirname(os.path.abspath(a.dataset_json)))
    return run_command("python -m split_tools", lambda: _run(a, out))


def _run(a, out: str) -> int:
    splits = make_splits(a.dataset_json, a.mode, a.folds, a.target, a.seed, a.test_fraction)
    path = write_splits(splits, out, overwrite=a.overwrite)
    print(f"wrote {len(splits)} fold(s) to {path}" + (f" ({len(splits.test)} test cases held out)" if splits.test else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
