"""Segmentation scores on whole cases: DSC (and optionally HD95 / surface Dice) per label and region.

Every label seen in any case's GT or prediction is scored for every case (absent from both ->
DSC 1.0); regions are unions of labels (``whole=1,2``)."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mtl.evaluation import metrics as M
from nnunet_mtl.evaluation.errors import EvaluationError


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


def load_mask(path: str) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Integer mask array and spacing in array (z, y, x) order."""
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        raise EvaluationError(f"{path}: cannot read mask ({str(e).strip().splitlines()[-1]})") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        raise EvaluationError(f"{path}: a mask must have one channel, found {img.GetNumberOfComponentsPerPixel()}")
    return sitk.GetArrayFromImage(img).astype(np.int64), tuple(img.GetSpacing())[::-1]


def score_kinds(surface: bool) -> Tuple[str, ...]:
    return ("dsc", "hd95", "nsd") if surface else ("dsc",)


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


def segmentation_columns(labels: Sequence[int], regions: Mapping[str, Tuple[int, ...]], surface: bool) -> List[str]:
    """per_case.csv columns of the segmentation scores, in file order."""
    keys = [str(lab) for lab in labels] + list(regions)
    return [f"{k}_{key}" for k in score_kinds(surface) for key in keys]


def segmentation_summary(rows: Sequence[dict], labels: Sequence[int], regions: Mapping[str, Tuple[int, ...]],
                         label_names: Mapping[int, str], surface: bool) -> dict:
    """metrics.json's ``segmentation`` block: per label and region, mean/median/std/... of each score."""
    def block(key):
        return {k: M.summarize([r[f"{k}_{key}"] for r in rows]) for k in score_kinds(surface)}
    return {"labels": {str(lab): {"name": label_names.get(lab, f"label {lab}"), **block(lab)} for lab in labels},
            "regions": {name: {"labels": list(labs), **block(name)} for name, labs in regions.items()},
            "n_cases": len(rows)}
