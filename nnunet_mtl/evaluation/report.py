"""The review folder: ``metrics.json``, ``per_case.csv``, ``classification_report.csv``,
``thresholds.json`` (when tuned) and PNG plots, each written atomically."""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.case_checks import NO, SEG_QUALITY, SEG_QUALITY_FLAG, YES
from nnunet_mtl.evaluation import classification, conformal, regression
from nnunet_mtl.io_utils import atomic_write_csv, atomic_write_json

REPORT_COLUMNS = ["target", "class", "precision", "recall", "f1", "support"]


def json_safe(obj):
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(out: str, result: dict, per_case: Mapping[str, dict], seg_columns: Sequence[str],
                 cls_data: Mapping[str, tuple], threshold_tuning: Optional[str], make_plots: bool, seed: int) -> None:
    """Write the whole folder; ``cls_data``: target -> (Target, y_true, y_pred, probs) for the plots."""
    os.makedirs(out, exist_ok=True)
    target_cols = [c for name in result.get("classification", {}) for c in classification.per_case_columns(name)]
    target_cols += [c for name in result.get("regression", {}) for c in regression.per_case_columns(name)]
    atomic_write_csv(os.path.join(out, "per_case.csv"), [per_case[c] for c in sorted(per_case)],
                     ["case_id"] + list(seg_columns) + target_cols)
    report = [row for name, block in result.get("classification", {}).items()
              for row in classification.report_rows(name, block)]
    atomic_write_csv(os.path.join(out, "classification_report.csv"), report, REPORT_COLUMNS)
    if threshold_tuning and result.get("thresholds"):
        atomic_write_json(os.path.join(out, "thresholds.json"),
                          {"method": threshold_tuning, "targets": result["thresholds"],
                           "evaluation_key": result.get("provenance", {}).get("key")})  # tuned on what
    if make_plots:
        write_plots(out, result, per_case, cls_data, seed)
    atomic_write_json(os.path.join(out, "metrics.json"), json_safe(result))


def write_plots(out: str, result: dict, per_case: Mapping[str, dict], cls_data: Mapping[str, tuple],
                seed: int) -> None:
    """confusion_<target>.png, roc_<target>.png, reliability_<target>.png, dsc_distribution.png and, when the
    predictions table has the review columns, coverage_<target>.png and seg_quality_vs_dice.png."""
    from nnunet_mtl.evaluation import plots  # matplotlib only when plotting
    from nnunet_mtl.calibration.reliability import reliability_diagram
    for name, (t, yt, yp, pr) in cls_data.items():
        block = result["classification"][name]
        plots.plot_confusion(np.asarray(block["confusion_matrix"]), t.classes,
                             os.path.join(out, f"confusion_{name}.png"), title=f"{name} (n={block['n']})")
        plots.plot_roc(yt, pr, t.classes, os.path.join(out, f"roc_{name}.png"), title=name, auc=block["roc_auc"])
        reliability_diagram({"predicted": (pr, yt)}, os.path.join(out, f"reliability_{name}.png"), title=name)
    seg = result.get("segmentation")
    if seg:
        keys = list(seg["labels"]) + list(seg["regions"])
        names = [f"{seg['labels'][k]['name']}" if k in seg["labels"] else k for k in keys]
        values = {n: [per_case[c][f"dsc_{k}"] for c in sorted(per_case)] for n, k in zip(names, keys)}
        plots.plot_distribution(values, os.path.join(out, "dsc_distribution.png"), ylabel="DSC", seed=seed)
    for family in ("classification", "regression"):
        for name, block in (result.get(family) or {}).items():
            if block.get("conformal"):
                plots.plot_coverage(block["conformal"], os.path.join(out, f"coverage_{name}.png"), title=name,
                                    class_key=conformal.class_coverage_key)
    quality = result.get("seg_quality")
    if quality:
        cases = [c for c in sorted(per_case) if per_case[c].get(SEG_QUALITY) is not None
                 and per_case[c].get(quality["dice"]) is not None]
        flag = {YES: True, NO: False}
        plots.plot_seg_quality([per_case[c][quality["dice"]] for c in cases], [per_case[c][SEG_QUALITY] for c in cases],
                               [flag.get(per_case[c].get(SEG_QUALITY_FLAG)) for c in cases],
                               os.path.join(out, "seg_quality_vs_dice.png"), quality.get("spearman"),
                               quality.get("flag_threshold_range"))
