"""Whole-case evaluation: find the cases, score them per family, write the review folder.

Each case is one mask file and/or one row of the predictions CSV; nothing is computed on
patches. Inputs:

* ``gt_dir``: masks ``CASE.<ending>`` in a flat folder (nnU-Net ``labelsTr`` style) or the
  pancreas challenge layout ``gt_dir/<class>/CASE.nii.gz`` (``discovery``).
* ``pred_dir``: predicted masks with the same case ids (``.nii.gz``, 2D ``.nii.gz``, ``.png``, ...),
  directly in it; hidden entries (the predictor's ``.converted_inputs``) and subfolders are skipped.
* ``prediction_csv``: the predictor's table (see ``nnunet_mtl.prediction_table``).
* ``labels``: a ``CaseTable`` with the true image-level values (``ground_truth.load_labels``).

Output folder (``report``): ``metrics.json`` (with a ``provenance`` block: the predictions' model, the
ground-truth source, every file read, the settings; ``evaluation.provenance``), ``per_case.csv``,
``classification_report.csv``, PNG plots (``report.write_plots``: confusion, ROC, reliability, DSC and, when the
table has the review columns, ``coverage_<target>.png`` and ``seg_quality_vs_dice.png``) and, when tuned,
``thresholds.json``. The metric conventions
(empty masks, positive class, AUC, bootstrap) are those of ``nnunet_mtl.evaluation.metrics`` and are repeated in
``metrics.json``.
With ``gt_dir`` the case set is the set of GT masks and every prediction source must match it
exactly; without it, the predictions CSV defines the cases (labelled cases it lacks get a note).
Predictions that cannot be right (``prediction_checks``: probabilities that are not a
distribution, a label that is not the argmax, duplicate rows) are refused before anything is
scored or written, and so are predictions from more than one model.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_mtl import prediction_table
from nnunet_mtl.case_checks import SEG_QUALITY, SEG_QUALITY_FLAG
from nnunet_mtl.conversion.pancreas_layout import PANCREAS_REGIONS
from nnunet_mtl.inference.record import CSV_NAME, table_case_ids
from nnunet_mtl.calibration.evaluation import calibration_block
from nnunet_mtl.evaluation import classification, conformal, regression, segmentation
from nnunet_mtl.evaluation.discovery import check_same_cases, find_masks, find_predicted_masks
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.evaluation.pairing import evaluated_spec, gather_target
from nnunet_mtl.evaluation.prediction_checks import PROB_SUM_TOLERANCE, check_predictions
from nnunet_mtl.evaluation.provenance import check_one_model, evaluation_provenance, prediction_folders
from nnunet_mtl.evaluation.seg_quality import evaluate_seg_quality
from nnunet_mtl.evaluation.report import json_safe, write_report
from nnunet_mtl.targets import CaseTable, TargetSpecError

RULES = {
    "dice_empty": "GT and prediction both empty -> DSC 1.0 (counted in the mean); only one empty -> 0.0",
    "surface_empty": "HD95 and surface Dice are NaN (null) when GT or prediction is empty and are left out "
                     "of mean/median/std",
    "binary_positive_class": "the last class of the target's class list",
    "macro_average": "over classes occurring in GT or predictions; balanced accuracy over classes in GT",
    "roc_auc": "binary: AUC of the positive-class probability; multi-class: one-vs-rest macro; "
               "null with a note when a class is absent from GT",
    "ci": "95% percentile bootstrap; each CI's n_valid counts the resamples where the score is defined "
          "(the others are dropped, and a note says so); a target's ci_note flags zero-width CIs with the "
          "number of resamples in which the model predicts one class",
    "ci_classification": classification.CI_METHOD + ": every resample keeps each class's count, so none "
                         "misses a class",
    "ci_regression": regression.CI_METHOD,
    "predictions_checked": "classification rows need finite, non-negative probabilities summing to 1 "
                           f"(within {PROB_SUM_TOLERANCE:g}) and the most probable class as label; one row per "
                           "case; a regression value wherever the ground truth has one",
    "null": "null in this file means undefined (NaN)",
    "unit": "whole cases (one mask file / one CSV row each), never patches",
}


def evaluate(gt_dir: Optional[str] = None, pred_dir: Optional[str] = None, prediction_csv: Optional[str] = None,
             output_folder: Optional[str] = None, labels: Optional[CaseTable] = None,
             regions: Optional[Mapping[str, Sequence[int]]] = None, targets: Optional[Sequence[str]] = None,
             n_bootstrap: int = 1000, seed: int = 0, threshold_tuning: Optional[str] = None,
             apply_thresholds: Optional[str] = None, surface_metrics: bool = False, surface_tolerance: float = 1.0,
             num_processes: int = 1, label_names: Optional[Mapping[int, str]] = None,
             seg_labels: Sequence[int] = (), make_plots: bool = True, labels_source: Optional[str] = None) -> dict:
    """Score everything the inputs allow and write the review folder.

    Args:
        gt_dir: ground-truth masks (flat or class subfolders); defines the case set when given.
        pred_dir: predicted masks, same case ids as ``gt_dir``.
        prediction_csv: the predictor's per-case table; needs ``labels``.
        output_folder: the review folder (None: compute only).
        labels: true image-level values (``ground_truth.load_labels``).
        regions: name -> labels scored as one region; None means the pancreas default
            (whole={1,2}, lesion={2}) for the challenge subfolder layout and none otherwise; ``{}`` for none.
        targets: evaluate only these targets.
        n_bootstrap, seed: bootstrap resamples for the 95% CIs (0: no CIs) and their seed.
        threshold_tuning: 'youden' | 'f1': tune binary thresholds on this set (written to thresholds.json).
        apply_thresholds: a thresholds.json whose thresholds replace the argmax decision.
        surface_metrics, surface_tolerance: also HD95 and surface Dice (tolerance in spacing units).
        num_processes: processes for the segmentation scores.
        label_names, seg_labels: label value -> name, and labels scored even when absent everywhere.
        make_plots: write the PNG plots.
        labels_source: the file the labels were read from (recorded in the provenance block).

    Returns:
        metrics.json's content (strict JSON: NaN -> None).

    Raises:
        EvaluationError: inputs that cannot be evaluated together; the message names the case.
    """
    if pred_dir is None and prediction_csv is None:
        raise EvaluationError("nothing to evaluate: give a prediction folder and/or a predictions CSV")
    if pred_dir is not None and gt_dir is None:
        raise EvaluationError("predicted masks need a ground-truth folder")
    gt_paths, groups = find_masks(gt_dir) if gt_dir else ({}, {})
    if regions is None:
        regions = PANCREAS_REGIONS if groups else {}
    regions = {str(k): tuple(int(v) for v in labs) for k, labs in regions.items()}
    result = {"inputs": {"gt_dir": gt_dir, "pred_dir": pred_dir, "prediction_csv": prediction_csv},
              "settings": {"n_bootstrap": n_bootstrap, "seed": seed, "threshold_tuning": threshold_tuning,
                           "apply_thresholds": apply_thresholds, "surface_metrics": surface_metrics,
                           "surface_tolerance": surface_tolerance, "regions": {k: list(v) for k, v in regions.items()},
                           "targets": list(targets) if targets else None, "seg_labels": [int(v) for v in seg_labels]},
              "rules": dict(RULES), "notes": []}
    per_case: Dict[str, dict] = {c: {"case_id": c} for c in gt_paths}
    seg_columns: List[str] = []
    folders = prediction_folders(pred_dir, prediction_csv)
    pred_paths = find_predicted_masks(pred_dir) if pred_dir is not None else {}
    csv_cases = table_case_ids(folders["csv"]) if prediction_csv and os.path.basename(prediction_csv) == CSV_NAME \
        else []
    check_one_model(folders, set(gt_paths) | set(pred_paths) | set(csv_cases), csv_cases)

    if pred_dir is not None:
        check_same_cases(gt_paths, pred_paths, f"the ground truth ({gt_dir})", f"the predictions ({pred_dir})")
        rows, found = segmentation.segmentation_rows(gt_paths, pred_paths, seg_labels, regions, surface_metrics,
                                                     surface_tolerance, num_processes)
        seg_columns = segmentation.segmentation_columns(found, regions, surface_metrics)
        for r in rows:
            per_case[r["case_id"]].update(r)
        result["segmentation"] = segmentation.segmentation_summary(rows, found, regions, dict(label_names or {}),
                                                                   surface_metrics)
        quality = evaluate_seg_quality(prediction_csv or os.path.join(pred_dir, CSV_NAME), per_case, found)
        if quality:  # the table's seg_quality column against the real Dice
            result["seg_quality"] = quality
            seg_columns += [quality["dice"], SEG_QUALITY] + ([SEG_QUALITY_FLAG] if "n_flagged" in quality else [])

    cls_data = {}
    if prediction_csv is not None:
        cls_data = _score_targets(result, per_case, gt_dir, gt_paths, prediction_csv, labels, targets, n_bootstrap,
                                  seed, threshold_tuning, apply_thresholds)
    result["n_cases"] = len(per_case)
    result["provenance"] = evaluation_provenance(folders, gt_dir, gt_paths, pred_paths, prediction_csv, labels,
                                                 labels_source, result["settings"])
    if output_folder:
        write_report(output_folder, result, per_case, seg_columns, cls_data, threshold_tuning, make_plots, seed)
    return json_safe(result)


def _score_targets(result: dict, per_case: Dict[str, dict], gt_dir: Optional[str], gt_paths: Mapping[str, str],
                   prediction_csv: str, labels: Optional[CaseTable], targets: Optional[Sequence[str]],
                   n_bootstrap: int, seed: int, threshold_tuning: Optional[str],
                   apply_thresholds: Optional[str]) -> Dict[str, tuple]:
    """Fill ``result``'s classification/regression blocks and ``per_case``; returns the plot data."""
    if labels is None:
        raise EvaluationError("no ground-truth labels for the predictions CSV: give --labels_csv or "
                              "--dataset_json (or use the class-subfolder layout)")
    spec = evaluated_spec(labels, prediction_csv, targets)
    try:
        preds = prediction_table.read(prediction_csv, spec)
    except TargetSpecError as e:
        raise EvaluationError(str(e)) from None
    if gt_dir:
        check_same_cases(gt_paths, preds, f"the ground truth ({gt_dir})", f"the predictions ({prediction_csv})")
    check_predictions(preds, spec, prediction_csv)
    cases = sorted(preds)
    unpredicted = sorted(set(labels.values) - set(preds))
    if unpredicted and not gt_dir:
        result["notes"].append(f"{len(unpredicted)} labelled case(s) have no row in {prediction_csv} and are not "
                               f"scored (first: {unpredicted[0]!r})")
    for c in cases:
        per_case.setdefault(c, {"case_id": c})
    thresholds = classification.load_thresholds(apply_thresholds) if apply_thresholds else {}
    result["classification"], result["regression"] = {}, {}
    tuned, cls_data = {}, {}
    for i, t in enumerate(spec):
        used, yt, yp, pr = gather_target(t, cases, labels, preds, prediction_csv)
        if not used:
            result["notes"].append(f"{t.name}: no case has a ground-truth value; skipped")
            continue
        if t.is_classification:
            block, yp, tuned_entry = classification.score_classification(
                t, yt, yp, pr, n_bootstrap, seed + i, thresholds.get(t.name), apply_thresholds, threshold_tuning)
            if block["roc_auc_note"]:
                result["notes"].append(f"{t.name}: {block['roc_auc_note']}")
            result["notes"].extend(classification.partial_ci_notes(t.name, block, n_bootstrap))
            if threshold_tuning and len(t.classes) == 2:
                tuned[t.name] = tuned_entry
            block["calibration"] = calibration_block(t, yt, pr, None, n_bootstrap=n_bootstrap, seed=seed + i)["raw"]
            _add_conformal(result, block, t, used, yt, yp, preds, n_bootstrap, seed + i)
            result["classification"][t.name] = block
            cls_data[t.name] = (t, yt, yp, pr)
            for c, a, b in zip(used, yt, yp):
                per_case[c].update(classification.per_case_values(t, a, b))
        else:
            result["regression"][t.name] = regression.regression_block(yt.astype(float), yp.astype(float),
                                                                       n_bootstrap, seed + i)
            _add_conformal(result, result["regression"][t.name], t, used, yt, yp, preds, n_bootstrap, seed + i)
            for c, a, b in zip(used, yt, yp):
                per_case[c].update(regression.per_case_values(t.name, a, b))
    if threshold_tuning and not tuned:
        result["notes"].append("threshold tuning: no binary classification target with both classes in GT")
    if tuned:
        result["thresholds"] = tuned
    return cls_data


def _add_conformal(result: dict, block: dict, t, used, yt, yp, preds, n_bootstrap: int, seed: int) -> None:
    """``block["conformal"]`` when the table has the target's conformal columns (``evaluation.conformal``)."""
    conf = conformal.conformal_block(t, used, yt, yp, preds, n_bootstrap, seed)
    if conf is not None:
        block["conformal"] = conf
        result["notes"].extend(conformal.notes(t.name, conf))
