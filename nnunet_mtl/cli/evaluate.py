"""Evaluate nnunet_mtl predictions on whole cases: DSC (+HD95/surface Dice), classification and
regression metrics with bootstrap CIs, per-case table and plots. Thin CLI over
``nnunet_mtl.evaluation``; an unusable input (cases that differ between the sources, duplicate
rows, probabilities that do not sum to 1, a label that is not the argmax, ...) ends with one line
on stderr naming the file and the case, and exit code 2.

Example::

    python evaluation.py --validation_data GT --prediction_folder PRED \\
        --prediction_csv PRED/predictions.csv --output_folder OUT --labels_csv labels.csv

(``nnunet_mtl_evaluate`` is the same command once the package is installed.)
"""
from __future__ import annotations

import argparse
import json
import sys

from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.evaluation.evaluate import evaluate
from nnunet_mtl.evaluation.ground_truth import load_labels
from nnunet_mtl.evaluation.segmentation import parse_regions
from nnunet_mtl.evaluation.summary import format_summary
from nnunet_mtl.io_utils import read_json
from nnunet_mtl.targets import TargetSpecError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--validation_data", help="GT masks: flat folder or CLASS/CASE.nii.gz subfolders")
    p.add_argument("--prediction_folder", help="predicted masks CASE.<ending> directly in it (hidden "
                                                 "entries such as .converted_inputs and subfolders skipped)")
    p.add_argument("--prediction_csv", help="predictions table written by the predictor")
    p.add_argument("--output_folder", required=True)
    gt = p.add_mutually_exclusive_group()
    gt.add_argument("--labels_csv", help="case_id + one column per target")
    gt.add_argument("--dataset_json", help="dataset.json with the 'mtl' block (targets, cases, regions, labels)")
    p.add_argument("--spec_json", help="target spec JSON (class order; positive class = last)")
    p.add_argument("--regions", help="e.g. 'whole=1,2;lesion=2' ('' for none); default: dataset.json, "
                                     "else whole/lesion for the subfolder layout")
    p.add_argument("--target", action="append", help="evaluate only this target (repeatable)")
    p.add_argument("--n_bootstrap", type=int, default=1000, help="bootstrap resamples (0: no CIs); classification "
                                                                  "resamples are stratified by true class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold_tuning", choices=("youden", "f1"),
                   help="tune binary thresholds on this set; written to OUT/thresholds.json")
    p.add_argument("--apply_thresholds", help="thresholds.json from an earlier --threshold_tuning run")
    p.add_argument("--surface_metrics", action="store_true", help="also HD95 and surface Dice")
    p.add_argument("--surface_tolerance", type=float, default=1.0, help="surface Dice tolerance (spacing units)")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--no_plots", action="store_true")
    return p


def evaluate_args(args: argparse.Namespace) -> dict:
    dataset_json = read_json(args.dataset_json) if args.dataset_json else None
    labels = load_labels(args.labels_csv, dataset_json, args.spec_json, args.prediction_csv, args.validation_data)
    regions = parse_regions(args.regions) if args.regions is not None else None
    label_names = {}
    if dataset_json is not None:
        description = DatasetSpec.from_dataset_json(dataset_json, source=args.dataset_json)
        label_names = description.label_names
        regions = regions if regions is not None else (dict(description.regions) or None)
    return evaluate(args.validation_data, args.prediction_folder, args.prediction_csv, args.output_folder,
                    labels=labels, regions=regions, targets=args.target, n_bootstrap=args.n_bootstrap,
                    seed=args.seed, threshold_tuning=args.threshold_tuning, apply_thresholds=args.apply_thresholds,
                    surface_metrics=args.surface_metrics, surface_tolerance=args.surface_tolerance,
                    num_processes=args.num_processes, label_names=label_names, seg_labels=sorted(label_names),
                    make_plots=not args.no_plots, labels_source=args.labels_csv or args.dataset_json)


def run(argv=None) -> dict:
    """Parse, evaluate, print the summary; returns metrics.json's content (SystemExit(2) on unusable input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = evaluate_args(args)
    except (EvaluationError, TargetSpecError, OSError, json.JSONDecodeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_summary(result))
    print(f"written to {args.output_folder}")
    return result


def main(argv=None) -> int:
    """Console entry point: an exit status (a console script passes the return value to sys.exit)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
