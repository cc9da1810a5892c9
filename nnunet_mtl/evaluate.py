"""Whole-case evaluation: load ground truth and predictions, score them, write a review folder.

Each case is one mask file and/or one row of the predictions CSV; nothing is computed on
patches. Inputs:

* ``gt_dir``: masks ``CASE.<ending>`` in a flat folder (nnU-Net ``labelsTr`` style) or the
  pancreas challenge layout ``gt_dir/<class>/CASE.nii.gz`` with images ``CASE_0000.nii.gz``
  beside them (``CASE_XXXX`` next to ``CASE`` is an image and is skipped). In that layout the
  folder name is the class of the case when no labels table is given.
* ``pred_dir``: predicted masks with the same case ids (``.nii.gz``, 2D ``.nii.gz``, ``.png``, ...).
* ``prediction_csv``: the predictor's table (see ``nnunet_mtl.prediction_table``).
* ``labels``: a ``CaseTable`` with the true image-level values (``load_labels`` builds one).

Output folder: ``metrics.json``, ``per_case.csv``, ``classification_report.csv``, PNG plots
and, when tuned, ``thresholds.json``. The metric conventions (empty masks, positive class,
AUC, bootstrap) are those of ``nnunet_mtl.metrics`` and are repeated in ``metrics.json``.
With ``gt_dir`` the case set is the set of GT masks and every prediction source must match
it exactly; without it, the predictions CSV defines the cases. Label rows for other cases
are ignored (a labels CSV often covers the whole dataset).
"""
from __future__ import annotations

import csv
import logging
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mtl import metrics as M
from nnunet_mtl import prediction_table
from nnunet_mtl.io_utils import atomic_write_csv, atomic_write_json, read_json
from nnunet_mtl.conversion.pancreas_layout import PANCREAS_REGIONS
from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.targets import (CLASSIFICATION, MISSING_TOKENS, REGRESSION, CaseTable, Target, TargetSpec, TargetSpecError,
                                load_spec_file, read_labels_csv)

logger = logging.getLogger(__name__)

MASK_ENDINGS = (".nii.gz", ".nii", ".png", ".mha", ".nrrd", ".tif", ".tiff", ".bmp")
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
RULES = {
    "dice_empty": "GT and prediction both empty -> DSC 1.0 (counted in the mean); only one empty -> 0.0",
    "surface_empty": "HD95 and surface Dice are NaN (null) when GT or prediction is empty and are left out "
                     "of mean/median/std",
    "binary_positive_class": "the last class of the target's class list",
    "macro_average": "over classes occurring in GT or predictions; balanced accuracy over classes in GT",
    "roc_auc": "binary: AUC of the positive-class probability; multi-class: one-vs-rest macro; "
               "null with a note when a class is absent from GT",
    "ci": "95% percentile bootstrap, cases resampled with replacement; undefined resamples dropped (n_valid)",
    "null": "null in this file means undefined (NaN)",
    "unit": "whole cases (one mask file / one CSV row each), never patches",
}


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated together; the message names the case (and what is wrong)."""


# ------------------------------------------------------------------------------- discovery
def case_id_of(filename: str) -> Optional[str]:
    """Case id of a mask-like file name (known ending, not hidden), else None."""
    for ending in MASK_ENDINGS:
        if filename.lower().endswith(ending) and not filename.startswith("."):
            return filename[: -len(ending)]
    return None


def _masks_in(folder: str) -> Dict[str, str]:
    """case -> path for the masks directly in ``folder``; ``NAME_XXXX`` files are images when ``NAME``
    itself is there (nnU-Net channel naming), so case ids that merely end in 4 digits still count."""
    found = {}
    for name in sorted(os.listdir(folder)):
        cid = case_id_of(name)
        if cid is not None and os.path.isfile(os.path.join(folder, name)):
            found[cid] = os.path.join(folder, name)
    return {c: p for c, p in found.items() if not (CHANNEL_SUFFIX.search(c) and c[:-5] in found)}


def find_masks(folder: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(case -> mask path, case -> subfolder name) over ``folder`` and its direct subfolders."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"{folder}: folder not found")
    paths, groups = {}, {}
    for cid, path in _masks_in(folder).items():
        _add_case(paths, cid, path)
    for entry in sorted(os.listdir(folder)):
        if os.path.isdir(os.path.join(folder, entry)):
            for cid, path in _masks_in(os.path.join(folder, entry)).items():
                _add_case(paths, cid, path)
                groups[cid] = entry
    if not paths:
        raise EvaluationError(f"{folder}: no mask files ({', '.join(MASK_ENDINGS)}) found")
    return paths, groups


def _add_case(paths: Dict[str, str], cid: str, path: str) -> None:
    if cid in paths:
        raise EvaluationError(f"case {cid!r} has two mask files: {paths[cid]} and {path}")
    paths[cid] = path


def _check_same_cases(reference: Sequence[str], other: Sequence[str], ref_name: str, other_name: str) -> None:
    missing = sorted(set(reference) - set(other))
    if missing:
        raise EvaluationError(f"case {missing[0]!r} is in {ref_name} but not in {other_name}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(other) - set(reference))
    if extra:
        raise EvaluationError(f"case {extra[0]!r} is in {other_name} but not in {ref_name}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


# ------------------------------------------------------------------------------ GT labels
def parse_regions(text: str) -> Dict[str, Tuple[int, ...]]:
    """'whole=1,2;lesion=2' -> {'whole': (1, 2), 'lesion': (2,)}; '' -> {}."""
    regions = {}
    for part in filter(None, (p.strip() for p in (text or "").split(";"))):
        name, sep, labels = part.partition("=")
        name = name.strip()
        try:
            values = tuple(int(v) for v in labels.split(",") if v.strip())
        except ValueError:
            values = ()
        if not sep or not name or name.isdigit() or not values:
            raise EvaluationError(f"region {part!r}: expected NAME=LABEL[,LABEL...] with a non-numeric name")
        regions[name] = values
    return regions


def prediction_header_spec(csv_path: str) -> TargetSpec:
    """The spec a predictions CSV implies: ``T`` with ``T_prob_<class>`` columns is a classification
    (classes in column order, i.e. the model's order), a lone ``T`` is a regression."""
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f), [])
    if prediction_table.CASE_COLUMN not in header:
        raise EvaluationError(f"{csv_path}: no '{prediction_table.CASE_COLUMN}' column")
    names = [c for c in header if c != prediction_table.CASE_COLUMN]
    prob_cols = {c for c in names for t in names if c.startswith(f"{t}_prob_")}
    targets = []
    for t in (c for c in names if c not in prob_cols):
        classes = tuple(c[len(t) + 6:] for c in names if c.startswith(f"{t}_prob_"))
        targets.append(Target(t, CLASSIFICATION, classes=classes) if classes else Target(t, REGRESSION))
    try:
        return TargetSpec(tuple(targets))
    except TargetSpecError as e:
        raise EvaluationError(f"{csv_path}: {e}") from None


def _spec_for_labels_csv(labels_csv: str, header: TargetSpec) -> Optional[TargetSpec]:
    """The predicted targets that have a labels column, with the model's kinds and class order
    (None -> let ``read_labels_csv`` infer). A target may have missing labels when a cell is empty."""
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None  # read_labels_csv reports it
    columns = set(rows[0]) if rows else set()
    common = [t for t in header if t.name in columns]
    if not common:
        return None
    missing = {t.name: any(str(r.get(t.name) or "").strip().lower() in MISSING_TOKENS for r in rows) for t in common}
    return TargetSpec(tuple(Target(t.name, t.kind, classes=t.classes, allow_missing=missing[t.name]) for t in common))


def folder_labels(groups: Mapping[str, str], header: Optional[TargetSpec]) -> CaseTable:
    """Class of each case from its subfolder name (pancreas challenge layout)."""
    cls_targets = header.classification_targets if header is not None else []
    if len(cls_targets) == 1:
        target = cls_targets[0]
    elif not cls_targets:
        target = Target("subtype", CLASSIFICATION, classes=tuple(sorted(set(groups.values()))))
    else:
        raise EvaluationError("the predictions have several classification targets; subfolder names can "
                              "label only one: give --labels_csv or --dataset_json")
    try:
        return CaseTable.from_mapping(TargetSpec((target,)), {c: {target.name: g} for c, g in groups.items()},
                                      source="ground-truth subfolders")
    except TargetSpecError as e:
        raise EvaluationError(str(e)) from None


def load_labels(labels_csv: Optional[str] = None, dataset_json: Optional[Mapping] = None,
                spec_json: Optional[str] = None, prediction_csv: Optional[str] = None,
                gt_dir: Optional[str] = None) -> Optional[CaseTable]:
    """The GT table from a labels CSV, a dataset.json ``mtl`` block or subtype folders (in that order).

    Without an explicit spec, class order and kinds come from the predictions CSV header so the
    positive class and the probability columns match the model."""
    try:
        spec = load_spec_file(spec_json) if spec_json else None
        header = prediction_header_spec(prediction_csv) if prediction_csv else None
        if labels_csv:
            if spec is None and header is not None:
                spec = _spec_for_labels_csv(labels_csv, header)
            return read_labels_csv(labels_csv, spec)
        if dataset_json is not None:
            table = DatasetSpec.from_dataset_json(dataset_json).table
            if spec is not None:
                table = CaseTable.from_mapping(spec, table.to_json(), source="dataset.json")
            return table
    except TargetSpecError as e:
        raise EvaluationError(str(e)) from None
    if gt_dir and prediction_csv:
        _, groups = find_masks(gt_dir)
        if groups:
            return folder_labels(groups, spec or header)
    return None


# ---------------------------------------------------------------------------- segmentation
def load_mask(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Integer mask array and spacing in array (z, y, x) order."""
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        raise EvaluationError(f"{path}: cannot read mask ({str(e).strip().splitlines()[-1]})") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise EvaluationError(f"{path}: a mask must have one channel, found {img.GetNumberOfComponentsPerPixel()}")
    return sitk.GetArrayFromImage(img).astype(np.int64), tuple(img.GetSpacing())[::-1]


def _case_segmentation(args) -> dict:
    """Scores of one case; module-level so worker processes can run it."""
    case, gt_path, pred_path, labels, regions, surface, tolerance = args
    gt, spacing = load_mask(gt_path)
    pred, _ = load_mask(pred_path)
    if gt.shape != pred.shape:
        if gt.squeeze().shape != pred.squeeze().shape:
            raise EvaluationError(f"case {case!r}: prediction shape {pred.shape} != ground-truth shape {gt.shape}")
        spacing = tuple(s for s, n in zip(spacing, gt.shape) if n != 1)
        gt, pred = gt.squeeze(), pred.squeeze()
    present = set(np.unique(gt).tolist()) | set(np.unique(pred).tolist())
    keys = {str(lab): (lab,) for lab in sorted((present | set(labels)) - {0})}
    keys.update(regions)
    out = {"case_id": case, "labels_present": sorted(present - {0})}
    for key, labs in keys.items():
        g, p = np.isin(gt, labs), np.isin(pred, labs)
        out[f"dsc_{key}"] = M.dice(p, g)
        if surface:
            out[f"hd95_{key}"], out[f"nsd_{key}"] = M.surface_metrics(p, g, spacing, tolerance)
    return out


def segmentation_rows(gt_paths: Mapping[str, str], pred_paths: Mapping[str, str], labels: Sequence[int],
                      regions: Mapping[str, Tuple[int, ...]], surface: bool = False, tolerance: float = 1.0,
                      num_processes: int = 1) -> Tuple[List[dict], List[int]]:
    """Per-case rows for every label seen anywhere (absent from a case's GT and prediction -> DSC 1.0)."""
    jobs = [(c, gt_paths[c], pred_paths[c], tuple(labels), dict(regions), surface, tolerance) for c in sorted(gt_paths)]
    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=num_processes) as pool:
            rows = list(pool.map(_case_segmentation, jobs))
    else:
        rows = [_case_segmentation(j) for j in jobs]
    all_labels = sorted(set(labels) | {lab for r in rows for lab in r.pop("labels_present")})
    for r in rows:
        for lab in all_labels:
            r.setdefault(f"dsc_{lab}", 1.0)
            if surface:
                r.setdefault(f"hd95_{lab}", M.NAN)
                r.setdefault(f"nsd_{lab}", M.NAN)
    return rows, all_labels


def segmentation_summary(rows: Sequence[dict], labels: Sequence[int], regions: Mapping[str, Tuple[int, ...]],
                         label_names: Mapping[int, str], surface: bool) -> dict:
    kinds = ("dsc", "hd95", "nsd") if surface else ("dsc",)

    def block(key):
        return {k: M.summarize([r[f"{k}_{key}"] for r in rows]) for k in kinds}
    return {"labels": {str(lab): {"name": label_names.get(lab, f"label {lab}"), **block(lab)} for lab in labels},
            "regions": {name: {"labels": list(labs), **block(name)} for name, labs in regions.items()},
            "n_cases": len(rows)}


# --------------------------------------------------------------------------- image targets
def _ci_fn(n_classes: int, with_auc: bool):
    def fn(yt, yp, pr):
        out = M.scores_from_confusion(M.confusion_matrix(yt, yp, n_classes))
        if with_auc:
            out["roc_auc"] = M.roc_auc(yt, pr, n_classes)[0]
        return out
    return fn


def classification_block(target: Target, y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray,
                         n_bootstrap: int, seed: int) -> dict:
    out = M.classification_metrics(y_true, y_pred, probs, target.classes)
    if n_bootstrap > 0:
        with_auc = not out["roc_auc_note"]
        out["ci95"] = M.bootstrap_ci(_ci_fn(len(target.classes), with_auc), [y_true, y_pred, probs],
                                     n_bootstrap, seed)
    return out


def regression_block(y: np.ndarray, yhat: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    out = M.regression_metrics(y, yhat)
    if n_bootstrap > 0 and len(y):
        out["ci95"] = {"mae": M.bootstrap_ci(lambda a, b: float(np.abs(a - b).mean()), [y, yhat], n_bootstrap, seed)}
    return out


def load_thresholds(path: str) -> Dict[str, dict]:
    try:
        data = read_json(path)
        return {str(k): dict(v) for k, v in data["targets"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise EvaluationError(f"{path}: not a thresholds file ({e})") from None


def _threshold_predictions(target: Target, entry: Mapping, probs: np.ndarray, source: str) -> np.ndarray:
    if len(target.classes) != 2:
        raise EvaluationError(f"{source}: threshold for {target.name!r}, which is not a binary target")
    if entry.get("positive_class", target.classes[-1]) != target.classes[-1]:
        raise EvaluationError(f"{source}: positive class {entry['positive_class']!r} of {target.name!r} "
                              f"is not {target.classes[-1]!r}")
    return (probs[:, 1] >= float(entry["threshold"])).astype(np.int64)


def _gather_target(target: Target, cases: Sequence[str], labels: CaseTable, preds: Mapping[str, dict]):
    """(cases, y_true, y_pred, probs) for the cases with a GT value; raises on a missing required value."""
    used, yt, yp, pr = [], [], [], []
    for c in cases:
        if c not in labels.values:
            raise EvaluationError(f"case {c!r}: no ground-truth label row")
        v = labels.values[c].get(target.name)
        if v is None:
            if target.allow_missing:
                continue
            raise EvaluationError(f"case {c!r}: no ground-truth value for target {target.name!r}")
        used.append(c)
        if target.is_classification:
            yt.append(target.classes.index(v))
            yp.append(target.classes.index(preds[c][target.name]))
            pr.append(preds[c]["probs"][target.name])
        else:
            if not math.isfinite(preds[c][target.name]):
                raise EvaluationError(f"case {c!r}: no predicted value for target {target.name!r}")
            yt.append(v)
            yp.append(preds[c][target.name])
    probs = np.asarray(pr, dtype=np.float64).reshape(len(used), -1) if target.is_classification else None
    return used, np.asarray(yt), np.asarray(yp), probs


def _evaluated_spec(labels: CaseTable, prediction_csv: str, restrict: Optional[Sequence[str]]) -> TargetSpec:
    header = prediction_header_spec(prediction_csv)
    names = [n for n in labels.spec.names if n in header.names]
    if restrict:
        unknown = [t for t in restrict if t not in names]
        if unknown:
            raise EvaluationError(f"target {unknown[0]!r} is not in both the ground truth ({labels.spec.names}) "
                                  f"and the predictions ({header.names})")
        names = [n for n in names if n in restrict]
    if not names:
        raise EvaluationError(f"no target in common between the ground truth ({labels.spec.names}) "
                              f"and the predictions ({header.names})")
    return TargetSpec(tuple(labels.spec[n] for n in names))


# ----------------------------------------------------------------------------------- main
def evaluate(gt_dir: Optional[str] = None, pred_dir: Optional[str] = None, prediction_csv: Optional[str] = None,
             output_folder: Optional[str] = None, labels: Optional[CaseTable] = None,
             regions: Optional[Mapping[str, Sequence[int]]] = None, targets: Optional[Sequence[str]] = None,
             n_bootstrap: int = 1000, seed: int = 0, threshold_tuning: Optional[str] = None,
             apply_thresholds: Optional[str] = None, surface_metrics: bool = False, surface_tolerance: float = 1.0,
             num_processes: int = 1, label_names: Optional[Mapping[int, str]] = None,
             seg_labels: Sequence[int] = (), make_plots: bool = True) -> dict:
    """Score everything the inputs allow and write the review folder; returns metrics.json's content.

    ``regions=None`` means the pancreas default (whole={1,2}, lesion={2}) for the challenge
    subfolder layout and no regions otherwise; pass ``{}`` for none."""
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
                           "surface_tolerance": surface_tolerance, "regions": {k: list(v) for k, v in regions.items()}},
              "rules": dict(RULES), "notes": []}
    per_case: Dict[str, dict] = {c: {"case_id": c} for c in gt_paths}
    seg_columns: List[str] = []

    if pred_dir is not None:
        pred_paths, _ = find_masks(pred_dir)
        _check_same_cases(gt_paths, pred_paths, f"the ground truth ({gt_dir})", f"the predictions ({pred_dir})")
        rows, found = segmentation_rows(gt_paths, pred_paths, seg_labels, regions, surface_metrics,
                                        surface_tolerance, num_processes)
        keys = [str(lab) for lab in found] + list(regions)
        kinds = ("dsc", "hd95", "nsd") if surface_metrics else ("dsc",)
        seg_columns = [f"{k}_{key}" for k in kinds for key in keys]
        for r in rows:
            per_case[r["case_id"]].update(r)
        result["segmentation"] = segmentation_summary(rows, found, regions, dict(label_names or {}), surface_metrics)

    tuned, cls_data = {}, {}
    if prediction_csv is not None:
        if labels is None:
            raise EvaluationError("no ground-truth labels for the predictions CSV: give --labels_csv or "
                                  "--dataset_json (or use the class-subfolder layout)")
        spec = _evaluated_spec(labels, prediction_csv, targets)
        try:
            preds = prediction_table.read(prediction_csv, spec)
        except TargetSpecError as e:
            raise EvaluationError(str(e)) from None
        if gt_dir:
            _check_same_cases(gt_paths, preds, f"the ground truth ({gt_dir})", f"the predictions ({prediction_csv})")
        cases = sorted(preds)
        for c in cases:
            per_case.setdefault(c, {"case_id": c})
        thresholds = load_thresholds(apply_thresholds) if apply_thresholds else {}
        result["classification"], result["regression"] = {}, {}
        for i, t in enumerate(spec):
            used, yt, yp, pr = _gather_target(t, cases, labels, preds)
            if not used:
                result["notes"].append(f"{t.name}: no case has a ground-truth value; skipped")
                continue
            if t.is_classification:
                decision = "argmax"
                if t.name in thresholds:
                    yp = _threshold_predictions(t, thresholds[t.name], pr, apply_thresholds)
                    decision = f"p({t.classes[-1]}) >= {float(thresholds[t.name]['threshold'])} from {apply_thresholds}"
                block = classification_block(t, yt, yp, pr, n_bootstrap, seed + i)
                block["decision"] = decision
                if block["roc_auc_note"]:
                    result["notes"].append(f"{t.name}: {block['roc_auc_note']}")
                if threshold_tuning and len(t.classes) == 2:
                    tuned[t.name] = _tune(t, yt, pr, threshold_tuning, block)
                result["classification"][t.name] = block
                cls_data[t.name] = (t, yt, yp, pr)
                for c, a, b in zip(used, yt, yp):
                    per_case[c].update({f"{t.name}_true": t.classes[a], f"{t.name}_pred": t.classes[b],
                                        f"{t.name}_correct": int(a == b)})
            else:
                result["regression"][t.name] = regression_block(yt.astype(float), yp.astype(float), n_bootstrap,
                                                                seed + i)
                for c, a, b in zip(used, yt, yp):
                    per_case[c].update({f"{t.name}_true": float(a), f"{t.name}_pred": float(b),
                                        f"{t.name}_abs_error": abs(float(b) - float(a))})
        if threshold_tuning and not tuned:
            result["notes"].append("threshold tuning: no binary classification target with both classes in GT")
    result["n_cases"] = len(per_case)
    if tuned:
        result["thresholds"] = tuned
    if output_folder:
        write_outputs(output_folder, result, per_case, seg_columns, cls_data, threshold_tuning, make_plots, seed)
    return _json_safe(result)


def _tune(target: Target, yt, probs, method: str, block: dict) -> dict:
    """Tune on this set; report the scores at that threshold (optimistic: same cases)."""
    try:
        thr, score = M.tune_threshold(yt == 1, probs[:, 1], method)
    except ValueError as e:
        block["threshold_tuning_note"] = str(e)
        return {}
    yp = (probs[:, 1] >= thr).astype(np.int64)
    block["at_tuned_threshold"] = {"threshold": thr, "note": "tuned on this same set: optimistic",
                                   **M.scores_from_confusion(M.confusion_matrix(yt, yp, 2))}
    return {"threshold": thr, "method": method, "score": score, "positive_class": target.classes[-1]}


# --------------------------------------------------------------------------------- outputs
def write_outputs(out: str, result: dict, per_case: Mapping[str, dict], seg_columns: Sequence[str],
                  cls_data: Mapping[str, tuple], threshold_tuning: Optional[str], make_plots: bool, seed: int) -> None:
    os.makedirs(out, exist_ok=True)
    target_cols = []
    for name in result.get("classification", {}):
        target_cols += [f"{name}_true", f"{name}_pred", f"{name}_correct"]
    for name in result.get("regression", {}):
        target_cols += [f"{name}_true", f"{name}_pred", f"{name}_abs_error"]
    atomic_write_csv(os.path.join(out, "per_case.csv"), [per_case[c] for c in sorted(per_case)],
                     ["case_id"] + list(seg_columns) + target_cols)
    report = []
    for name, block in result.get("classification", {}).items():
        for cls, s in block["per_class"].items():
            report.append({"target": name, "class": cls, **s})
        s = M.per_class_scores(np.asarray(block["confusion_matrix"]))
        occurring = (s["support"] > 0) | (s["predicted"] > 0)
        report.append({"target": name, "class": "macro avg", "precision": _mean(s["precision"][occurring]),
                       "recall": _mean(s["recall"][occurring]), "f1": block["macro_f1"], "support": block["n"]})
    atomic_write_csv(os.path.join(out, "classification_report.csv"), report,
                     ["target", "class", "precision", "recall", "f1", "support"])
    if threshold_tuning and result.get("thresholds"):
        atomic_write_json(os.path.join(out, "thresholds.json"),
                          {"method": threshold_tuning, "targets": result["thresholds"]})
    if make_plots:
        _write_plots(out, result, per_case, cls_data, seed)
    atomic_write_json(os.path.join(out, "metrics.json"), _json_safe(result))


def _write_plots(out: str, result: dict, per_case: Mapping[str, dict], cls_data: Mapping[str, tuple],
                 seed: int) -> None:
    from nnunet_mtl import plots  # matplotlib only when plotting
    for name, (t, yt, yp, pr) in cls_data.items():
        block = result["classification"][name]
        plots.plot_confusion(np.asarray(block["confusion_matrix"]), t.classes,
                             os.path.join(out, f"confusion_{name}.png"), title=f"{name} (n={block['n']})")
        plots.plot_roc(yt, pr, t.classes, os.path.join(out, f"roc_{name}.png"), title=name, auc=block["roc_auc"])
    seg = result.get("segmentation")
    if seg:
        keys = list(seg["labels"]) + list(seg["regions"])
        names = [f"{seg['labels'][k]['name']}" if k in seg["labels"] else k for k in keys]
        values = {n: [per_case[c][f"dsc_{k}"] for c in sorted(per_case)] for n, k in zip(names, keys)}
        plots.plot_distribution(values, os.path.join(out, "dsc_distribution.png"), ylabel="DSC", seed=seed)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else M.NAN


def _json_safe(obj):
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_summary(result: Mapping) -> str:
    """A few lines for the terminal: headline numbers with their CIs."""
    lines = [f"cases: {result.get('n_cases')}"]
    seg = result.get("segmentation") or {}
    for group in ("labels", "regions"):
        for key, block in seg.get(group, {}).items():
            d = block["dsc"]
            lines.append(f"DSC {block.get('name', key)}: mean {_fmt(d['mean'])} median {_fmt(d['median'])} "
                         f"std {_fmt(d['std'])}")
    for name, block in (result.get("classification") or {}).items():
        parts = []
        for k in ("macro_f1", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity"):
            if k in block:
                ci = (block.get("ci95") or {}).get(k)
                parts.append(f"{k} {_fmt(block[k])}" + (f" [{_fmt(ci['low'])}, {_fmt(ci['high'])}]" if ci else ""))
        lines.append(f"{name}: " + ", ".join(parts))
    for name, block in (result.get("regression") or {}).items():
        lines.append(f"{name}: MAE {_fmt(block['mae'])} RMSE {_fmt(block['rmse'])} r {_fmt(block['pearson_r'])}")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"
